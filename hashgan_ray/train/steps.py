"""What the training methods share, in plain PyTorch (no Ray): bf16 autocast,
Adam per player, the per-epoch lr schedule and the saved state of optimizers
and schedulers, which attention the model has, the D/G alternation and the
global-batch gather for triplet mining. Each method's own steps are in
train/methods/<method>.py."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.losses import label_loss


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Parameters of `modules` get no gradient inside the block (inputs still do)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def autocast(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (deterministic for a seed)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def gathered(codes: dict, labels: torch.Tensor, gather) -> tuple[dict, torch.Tensor]:
    """The codes and labels of every worker's batch (`gather(t)`: the ranks'
    tensors concatenated, with gradient back to each rank's own rows), so the
    triplets are mined in the global batch, as the paper's one-GPU batch of 64
    and train/local.py do; under DDP each worker would otherwise mine only its
    own share (2 x 32 in the demo: -0.064 ± 0.021 MAP against 1 x 64, quality
    sweep round 2). With DDP's gradient averaging the update is then exactly
    the one-process update of the whole batch (tests/train/test_gather.py)."""
    if gather is None:
        return codes, labels
    return {k: gather(v) for k, v in codes.items()}, gather(labels)


def single_process(module):
    """`wrap` outside Ray Train: run the module itself."""
    return module


def no_all_reduce(tensor):
    """`all_reduce` for one worker."""
    return tensor


def attention_switches(model: HashGAN) -> tuple[bool, bool]:
    """(image, text): whether the model has an image / a text attention module.
    What trainers and steps go by: the model is what they train, and a
    checkpoint's model says so itself (the config's switches only decide what
    build_model builds)."""
    return model.attention.image is not None, model.attention.text is not None


def has_attention(model: HashGAN) -> bool:
    return any(attention_switches(model))


def build_optimizers(model: HashGAN, lr: float, betas: tuple[float, float]):
    """Adam for E+D and, when the model has attention, Adam for G (section 4.1)."""
    opt_ed = torch.optim.Adam(model.net.parameters(), lr=lr, betas=betas)
    opt_g = (torch.optim.Adam(model.attention.parameters(), lr=lr, betas=betas)
             if has_attention(model) else None)
    return opt_ed, opt_g


class LabelHead:
    """The label term of HashGAN's objective (config `label_head` > 0; SCH-GAN's
    labelled term too): one linear layer q -> L reads the image and the text
    codes, trained with softmax cross-entropy against the pair's labels
    (losses.label_loss), the supervised reference's loss. Not in the paper,
    whose only supervision is the triplets; on emoji (99 labels, one per pair)
    the triplets of a batch of 64 see few positives per query, and the head
    gives every pair a gradient towards its label (docs/quality.md, round 3).

    The layer trains with E/D: a parameter group of `optimizer` (so the lr
    schedule applies), wrapped by `wrap` (DDP under Ray Train) like the net.
    It is part of the trainer's state, not of the served model."""

    def __init__(self, bits: int, num_labels: int, weight: float,
                 optimizer: torch.optim.Optimizer, wrap, device):
        self.weight = weight
        # nn.Linear's own start, drawn from a generator of its own: adding the head
        # leaves the rest of a run's random stream as it was (SCH-GAN with every
        # label stays HashGAN without attention, weight for weight).
        self.layer = nn.utils.skip_init(nn.Linear, bits, num_labels)
        bound, draws = 1 / math.sqrt(bits), torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.layer.parameters():
                p.uniform_(-bound, bound, generator=draws)
        self.layer.to(device)
        optimizer.add_param_group({"params": list(self.layer.parameters())})
        self.wrapped = wrap(self.layer)

    def loss(self, img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE of the image codes plus CE of the text codes (one forward of the
        wrapped layer: DDP takes one forward per backward)."""
        logits = self.wrapped(torch.cat([img, txt]).float())
        return (label_loss(logits[:len(img)], labels) + label_loss(logits[len(img):], labels))

    @staticmethod
    def state_of(head: LabelHead | None) -> dict:
        """The trainer state's entry of `head` (none without one)."""
        return {} if head is None else {"label_head": head.layer.state_dict()}

    @staticmethod
    def restore(head: LabelHead | None, state: dict) -> None:
        """Load `head` from a trainer state written by a run with the same head."""
        if head is None:
            if "label_head" in state:       # else Adam's "different number of groups"
                raise ValueError("this checkpoint was trained with the label head: resume "
                                 "it with the --label-head it was trained with")
            return
        if "label_head" not in state:
            raise ValueError("this checkpoint was trained without the label head: resume it "
                             "with --label-head 0")
        head.layer.load_state_dict(state["label_head"])


def build_label_head(weight: float, model: HashGAN, num_labels: int | None,
                     optimizer: torch.optim.Optimizer, wrap) -> LabelHead | None:
    """The LabelHead of a run whose `label_head` weight is `weight`, None at 0."""
    if weight <= 0:
        return None
    if not num_labels:
        raise ValueError("the label head needs the number of labels (label_head > 0)")
    return LabelHead(model.bits, num_labels, weight, optimizer, wrap,
                     next(model.parameters()).device)


@dataclass(frozen=True)
class LrSchedule:
    """The per-epoch lr schedule: the paper's step decay (lr x `decay` every
    `decay_every` epochs; the paper: / 10 every 20), or cosine from lr to 0
    over `epochs`."""
    kind: str = "step"              # step | cosine (config.LR_SCHEDULES)
    epochs: int = 1
    decay_every: int = 20
    decay: float = 0.1

    def schedulers(self, optimizers) -> list:
        """One per optimizer (None skipped), stepped once per epoch."""
        optimizers = [o for o in optimizers if o is not None]
        if self.kind == "cosine":
            return [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(self.epochs, 1))
                    for o in optimizers]
        return [torch.optim.lr_scheduler.StepLR(o, self.decay_every, self.decay)
                for o in optimizers]


class Optimizers:
    """A trainer's optimizers by name (None: this model has no such player) and
    their lr schedulers: stepped once per epoch, saved and restored together.
    The names are the keys of the state in train_state.pt."""

    def __init__(self, schedule: LrSchedule, **named: torch.optim.Optimizer | None):
        self.named = named
        self.schedulers = schedule.schedulers(named.values())

    def __getitem__(self, name: str) -> torch.optim.Optimizer | None:
        return self.named[name]

    def end_epoch(self) -> None:
        for s in self.schedulers:
            s.step()

    def state_dict(self) -> dict:
        return {**{name: o.state_dict() if o is not None else None
                   for name, o in self.named.items()},
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        for name, o in self.named.items():
            if o is not None:
                o.load_state_dict(state[name])
        for s, s_state in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(s_state)


def g_steps_after(step: int, d_steps: int, g_steps: int) -> int:
    """The adversarial schedule of HashGAN and SCH-GAN: how many G steps follow
    the E/D (discriminator) step on batch `step` (g_steps after every
    d_steps-th batch, on that batch; else 0)."""
    return g_steps if (step + 1) % d_steps == 0 else 0
