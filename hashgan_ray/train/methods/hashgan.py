"""HashGAN's trainer and one optimisation step of each player, in plain PyTorch
(no Ray).

The alternation of section 3.3: E/D minimise the full objective with G fixed
(eq. 8), then G maximises the adversarial loss with E/D fixed (eq. 9).

Under DDP, E+D (`net`) and G (`attention`) are wrapped separately, and each
step calls the forward of exactly one wrapper, whose parameters all receive
gradients; the other player is run as a constant:

* E/D step: the masks are computed under no_grad from the unwrapped G, so
  they are constants and G gets no gradient (G "fixed").
* G step: the features come from E under no_grad; the hashing layers D run
  with requires_grad switched off, so gradients flow through them to the
  masks but D gets none. The attended codes (the queries H^T_i, H^I_i of eq. 6)
  are constants too: G is pushed only through the unattended codes, which is
  the adversary the paper describes ("make the hashing module unable to
  preserve the similarities of the unattended features").
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from hashgan_ray.data.oracle import Oracle
from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.losses import (
    hashgan_losses,
    label_similarity,
    triplet_ranking_loss,
)
from hashgan_ray.train.steps import (
    LabelHead,
    LrSchedule,
    Optimizers,
    attention_switches,
    autocast,
    build_label_head,
    build_optimizers,
    frozen,
    g_steps_after,
    gathered,
    single_process,
)

log = logging.getLogger("hashgan_ray.train")


def ed_step(model: HashGAN, net: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
            margin: float, mining: str = "all", quantization: float = 0.0,
            balance: float = 0.0, oracle=None, gather=None, label_head=None) -> dict[str, float]:
    """min over E, D of the full objective (eq. 8). `net` is model.net or its DDP wrapper.
    `oracle` (data/oracle.py): the batch's true masks in place of G's.
    `gather`: the trainer's (see HashGANTrainer), None in one process.
    `label_head`: the trainer's steps.LabelHead, None without the label term."""
    def fixed_masks(maps, feats):
        with torch.no_grad():
            return model.attention(maps, feats)

    masks, word_mask = (fixed_masks, None) if oracle is None else \
        oracle.forward_masks(batch["id"], batch["text"])
    with autocast(batch["image"].device):
        codes = net(batch["image"], batch["text"], masks, word_mask)
    codes, labels = gathered(codes, batch["labels"], gather)
    sim = label_similarity(labels, labels)
    image_attention, text_attention = attention_switches(model)
    losses = hashgan_losses(codes, sim, margin,
                            image_attention=image_attention or oracle is not None,
                            text_attention=text_attention or oracle is not None,
                            mining=mining, quantization=quantization, balance=balance,
                            label_head=label_head, labels=labels)
    optimizer.zero_grad(set_to_none=True)
    losses["full"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def g_step(model: HashGAN, attention: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
           margin: float, mining: str = "all", gather=None) -> dict[str, float]:
    """max over G of the adversarial loss (eq. 9). `attention` is model.attention
    or its DDP wrapper."""
    net = model.net
    image_attention, text_attention = attention_switches(model)
    image, text = batch["image"], batch["text"]
    with autocast(image.device):
        with torch.no_grad():
            maps, feats = net.image_maps(image), net.text_feats(text)
        z_img, z_txt = attention(maps, feats)
        with torch.no_grad():                                   # queries: attended codes
            codes = {"img": net.hash_image(z_img.detach() * maps),
                     "txt": net.hash_text(z_txt.detach() * feats)}
        with frozen(net.image_head, net.image_code, net.text_code):
            if image_attention:
                codes["img_un"] = net.hash_image((1 - z_img) * maps)
            if text_attention:
                codes["txt_un"] = net.hash_text((1 - z_txt) * feats)
            codes, labels = gathered(codes, batch["labels"], gather)
            sim = label_similarity(labels, labels)
            adversarial = maps.new_zeros(())
            if "img_un" in codes:                               # F_{T->Î}
                adversarial = adversarial + triplet_ranking_loss(
                    codes["txt"], codes["img_un"], sim, margin, mining=mining)
            if "txt_un" in codes:                               # F_{I->T̂}
                adversarial = adversarial + triplet_ranking_loss(
                    codes["img"], codes["txt_un"], sim, margin, mining=mining)
            optimizer.zero_grad(set_to_none=True)
            (-adversarial).backward()                           # gradient ascent
    optimizer.step()
    return {"g_adversarial": float(adversarial.detach())}


class HashGANTrainer:
    """HashGAN's schedule (section 3.3): d_steps E/D steps, then g_steps G steps
    on the last of those batches, Adam for each player (G's only when the model
    has attention), the lr following `schedule`.

    margin, mining, quantization, balance: the objective (train/losses.py,
    hashgan_losses). `oracle` (data/oracle.py): the true masks in place of G's,
    for a model built without attention.
    The trainer interface is described in train/methods/__init__.py."""

    uses_unlabeled = False

    def __init__(self, model: HashGAN, *, lr: float, betas: tuple[float, float],
                 schedule: LrSchedule, margin: float, mining: str = "all",
                 quantization: float = 0.0, balance: float = 0.0, d_steps: int = 4,
                 g_steps: int = 1, oracle: Oracle | None = None, wrap=single_process,
                 gather=None, label_head: float = 0.0, num_labels: int | None = None):
        self.model = model
        self.margin, self.mining = margin, mining
        self.quantization, self.balance = quantization, balance
        self.d_steps, self.g_steps = d_steps, g_steps
        self.oracle = oracle                    # no G then
        self.gather = gather                    # triplets over every worker's batch (`gathered`)
        self.opt_ed, self.opt_g = build_optimizers(model, lr, betas)
        # the label term's layer trains with E/D (a group of opt_ed): made before the schedulers
        self.label_head = build_label_head(label_head, model, num_labels, self.opt_ed, wrap)
        self.optimizers = Optimizers(schedule, opt_ed=self.opt_ed, opt_g=self.opt_g)
        # Two wrappers: E+D and G are updated in alternation (module docstring).
        self.net = wrap(model.net)
        self.attention = wrap(model.attention) if self.opt_g is not None else model.attention
        self._epoch_steps = 0
        self._warned_no_g_step = False

    def step(self, step: int, batch: dict) -> dict[str, float]:
        # Every batch gets an E/D step and every d_steps-th batch is then used
        # for the G step(s) too, rather than G steps taking batches from E/D:
        # an epoch is the same number of E/D updates with or without attention,
        # so the Table 4 ablation compares attention, not training length.
        stats = ed_step(self.model, self.net, batch, self.opt_ed, self.margin, mining=self.mining,
                        quantization=self.quantization, balance=self.balance,
                        oracle=self.oracle, gather=self.gather, label_head=self.label_head)
        self._epoch_steps += 1
        if self.opt_g is not None:
            for _ in range(g_steps_after(step, self.d_steps, self.g_steps)):
                stats.update(g_step(self.model, self.attention, batch, self.opt_g, self.margin,
                                    self.mining, gather=self.gather))
        return stats

    def end_epoch(self) -> None:
        # The step count restarts every epoch, so an epoch of fewer than d_steps
        # batches (per worker) never trains G: say so rather than train a model
        # whose attention silently stays where it started.
        if (self.opt_g is not None and self.g_steps > 0
                and 0 < self._epoch_steps < self.d_steps and not self._warned_no_g_step):
            log.warning("attention (G) got no step this epoch: %d batches per worker, fewer than "
                        "d_steps=%d; use a smaller --batch-size or --d-steps, or more data",
                        self._epoch_steps, self.d_steps)
            self._warned_no_g_step = True
        self._epoch_steps = 0
        self.optimizers.end_epoch()

    def state_dict(self) -> dict:
        return {**self.optimizers.state_dict(), **LabelHead.state_of(self.label_head)}

    def load_state_dict(self, state: dict) -> None:
        LabelHead.restore(self.label_head, state)
        self.optimizers.load_state_dict(state)
