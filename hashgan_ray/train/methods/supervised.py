"""A label-supervised reference: what plain supervision gets from the same networks.

Not a method of the paper: the yardstick that benchmarks/quality.py measures
every hashing method against. Each modality's network ends in the model's own
q-bit tanh code layer; one linear label head (q -> L) reads the codes:

    loss = CE(head(H^T), y) + CE(head_frozen(H^I), y) + balance(H^I, H^T)

CE is the softmax cross-entropy against the pair's labels as a distribution
(y / Σy: one label, the usual classifier's loss; k labels, 1/k each), the
first baseline a practitioner trains on labelled data, whatever the number of
labels per pair. Per-label sigmoid BCE, used until issue 25, collapsed where
each pair has one label of many: on Unicode's emoji (99 labels, one each) every
logit settled on "no label" (BCE ~0.19 from epoch 5 on) and MAP ended below
random codes (0.034 / 0.033 against 0.038).

The text network trains the head; the image network is trained against that
head with its weights held constant (no gradient from the image side). One
head shared by both modalities puts their codes in one space, so a text code
and an image code of the same labels land close: trained with a head each, the
two code spaces do not line up and cross-modal MAP stays at chance (measured
when the code-quality issue was filed: same-modality MAP 0.55-0.67, cross-modal
at chance). Codes are sign(H), like every method here, so the model is served,
indexed and evaluated unchanged.

The bit-balance term (losses.balance_loss, weight 1) keeps the codes from
collapsing: without it the text network's 32 tanh outputs saturated to one
constant code within the first epoch (the label head then learns the label
prior from its bias, and MAP stays at chance: text->text 0.188 on the demo's
data after 5 epochs, 0.43 with the term, the same run otherwise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.losses import balance_loss, label_loss
from hashgan_ray.train.methods.dcmh import Branch
from hashgan_ray.train.steps import LrSchedule, Optimizers, autocast, single_process


class SupervisedTrainer:
    """`num_labels`: the dataset's (the head's outputs).
    The trainer interface is described in train/methods/__init__.py."""

    uses_unlabeled = False

    def __init__(self, model: HashGAN, *, num_labels: int, lr: float,
                 betas: tuple[float, float], schedule: LrSchedule,
                 wrap=single_process):
        self.model = model
        device = next(model.parameters()).device
        self.head = nn.Linear(model.bits, num_labels).to(device)
        self.branches = {m: Branch(model.net, m) for m in ("image", "text")}
        self.nets = {m: wrap(b) for m, b in self.branches.items()}
        self.wrapped_head = wrap(self.head)
        params = [*model.net.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=betas)
        self.optimizers = Optimizers(schedule, optimizer=self.optimizer)

    def step(self, step: int, batch: dict) -> dict[str, float]:
        labels = batch["labels"].float()
        with autocast(batch["image"].device):
            h_txt = torch.tanh(self.nets["text"](batch["text"]))              # (B, bits)
            h_img = torch.tanh(self.nets["image"](batch["image"]))
            text_logits = self.wrapped_head(h_txt)                            # (B, L)
            image_logits = F.linear(h_img, self.head.weight.detach(), self.head.bias.detach())
        losses = {"text_ce": label_loss(text_logits, labels),
                  "image_ce": label_loss(image_logits, labels),
                  "balance": balance_loss(h_img, h_txt)}
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def end_epoch(self) -> None:
        self.optimizers.end_epoch()

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), **self.optimizers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizers.load_state_dict(state)
