"""The one training configuration: built by the CLI (or read from a JSON file),
handed unchanged to every Ray worker, stored in every checkpoint.

Defaults are the best configuration measured on the synthetic benchmark in the
demo's budget (docs: "Code quality", benchmarks/quality_sweep.py); each field's
comment gives the paper's value (section 4.1) where it differs, one flag away.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

BACKBONES = ("small", "resnet18", "vgg19")
ATTENTION = ("both", "image", "text", "none")
ORACLE = "oracle"        # attention setting: the synthetic data's true masks fixed in place of G
PLACEMENT = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")   # Ray placement group strategies
LR_SCHEDULES = ("step", "cosine")
# The choices of the fields below, defined here so that this module imports
# nothing (every command builds its parser from it); the code that implements
# each imports its tuple from here.
METHODS = ("hashgan", "dcmh", "dfah", "schgan", "supervised")   # train/methods/ registry
MINING = ("all", "active", "hardest")        # train/losses.py, triplet_ranking_loss
STE = ("identity", "saturating")             # model/attention.py, straight-through estimators
SMALL_HEADS = ("maxpool", "grid")            # model/backbones.py, the small trunk's head


# Fields added with a default that trains differently from before they existed,
# and the value they had in effect in a run saved before them: a finished run's
# config without the field is read with this value, not today's default
# (experiment/grid.py: a finished cell of the old setting is refused, not reused).
VALUES_BEFORE_ADDED = {"label_head": 0.0, "dcmh_balance": 1.0, "dcmh_prior": False}
# Fields that only these methods read: a change of one does not make a finished
# run of another method stale (experiment/grid.py).
METHOD_FIELDS = {**dict.fromkeys(("dcmh_balance", "dcmh_prior", "dcmh_quantization",
                                   "dcmh_pair_weights"), ("dcmh",)),
                 # HashGAN's objective and schedule, which SCH-GAN's labelled term shares
                 **dict.fromkeys(("margin", "mining", "quantization", "balance", "d_steps",
                                  "g_steps", "label_head"), ("hashgan", "schgan"))}


@dataclass
class TrainConfig:
    # data and run
    data: str = ""                   # dataset directory (hashgan_ray.data.format)
    out: str = ""                    # run directory: Ray Train storage + model/ export
    epochs: int = 15                 # paper: 100 (at lr 2e-4)
    seed: int = 0
    method: str = "hashgan"          # hashgan (the paper) or a compared method (train/methods/__init__.py)
    labeled_fraction: float = 1.0    # share of the train split whose labels training may use
    # model
    bits: int = 32
    backbone: str = "small"          # paper: vgg19; small/resnet18 are CPU-friendly choices
    pretrained: bool = False         # ImageNet weights for vgg19/resnet18 (paper: pretrained VGG19)
    backbone_weights: str | None = None   # their local file; None: torchvision's cache
    image_size: int | None = None    # None: the dataset's meta.json image_size
    attention: str = "none"          # Table 4 ablation: both | image | text | none (hashgan only);
                                     # oracle: true masks, no G (synthetic data, data/oracle.py).
                                     # Paper: both. Off by default: it lowers MAP here (docs)
    alpha_scale: float = 1.0         # α = alpha_scale/(H·W) (images), alpha_scale/d (text)
    ste: str = "saturating"          # threshold gradient: identity (paper) | saturating (attention.py)
    small_head: str = "maxpool"      # the small backbone's head: maxpool | grid (VGG-shaped)
    text_hidden: int = 4096          # BoW -> 4096 -> 1024; paper: 8192 -> 1000 (section 3.2)
    text_features: int = 1024
    # objective and optimisation
    margin: float = 1.0              # ε; not given in the paper
    lr: float = 1e-3                 # Adam α; paper: 2e-4 (for 100 epochs)
    beta1: float = 0.5
    batch_size: int = 64             # per worker
    d_steps: int = 4                 # E/D steps ...
    g_steps: int = 1                 # ... then G steps
    lr_decay_every: int = 20         # epochs; the paper divides the lr by 10 every 20 epochs
    lr_decay: float = 0.1
    lr_schedule: str = "step"        # step: the paper's; cosine: from lr to 0 over `epochs`
    mining: str = "all"              # which triplets count (train/losses.py); all: the paper's
    quantization: float = 0.0        # weight of the quantization term (train/losses.py); paper: none
    balance: float = 1.0             # weight of the bit-balance term (train/losses.py); paper: none (0)
    label_head: float = 3.0          # weight of the label term, a linear label head on the codes
                                     # (train/steps.py LabelHead; 3 measured best of 0.3-10,
                                     # docs/quality.md); paper: none (0)
    dcmh_balance: float = 0.0        # DCMH's η (train/methods/dcmh.py); DCMH: 1, chosen by
                                     # cross-validation on its data; 0 here (docs/methods.md)
    dcmh_prior: bool = True          # DCMH's likelihood with the base rate of similar pairs as
                                     # its prior, σ(θ + logit s); DCMH: none (off)
    dcmh_quantization: float = 1.0   # DCMH's γ, the weight of ‖B - F‖²; DCMH: 1
    dcmh_pair_weights: bool = False  # weight similar and dissimilar pairs equally in DCMH's
                                     # likelihood (HashNet's weighting); DCMH: off
    # data
    augment_shift: int = 0           # move each training image by up to this many px per axis,
                                     # drawn afresh every step (train/augment.py); 0: none (the paper)
    cache_train: bool = True         # decode the train split once into Ray's object store
                                     # (DCMH train splits are <= 10,500 pairs, ~1.6 GB at 224 px);
                                     # False: stream and decode it again every epoch
    # validation
    val_database: int = 2000         # database sample for the per-epoch MAP (0: all)
    # distribution
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    placement_strategy: str = "PACK"  # of the workers' placement group; SPREAD: across nodes

    def __post_init__(self):
        if self.bits <= 0 or self.bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {self.bits}")
        for name, least in (("epochs", 1), ("workers", 1), ("batch_size", 1), ("text_hidden", 1),
                            ("text_features", 1), ("lr_decay_every", 1), ("val_database", 0),
                            ("augment_shift", 0), ("cpus_per_worker", 0), ("gpus_per_worker", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.attention not in (*ATTENTION, ORACLE):
            raise ValueError(f"attention must be one of {(*ATTENTION, ORACLE)}, "
                             f"got {self.attention!r}")
        if self.attention == ORACLE and self.method != "hashgan":
            raise ValueError("attention 'oracle' applies to method 'hashgan' only")
        if self.attention == ORACLE and self.augment_shift:
            raise ValueError("attention 'oracle' reads the true masks of unshifted images: "
                             "it cannot be combined with augment_shift")
        if self.ste not in STE:
            raise ValueError(f"ste must be one of {STE}, got {self.ste!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 < self.labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction must be in (0, 1], got {self.labeled_fraction}")
        if self.d_steps < 1 or self.g_steps < 0:
            raise ValueError("d_steps must be >= 1 and g_steps >= 0")
        for name, value, allowed in (("mining", self.mining, MINING),
                                     ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("small_head", self.small_head, SMALL_HEADS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("quantization", "balance", "label_head", "dcmh_balance",
                     "dcmh_quantization"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.placement_strategy not in PLACEMENT:
            raise ValueError(f"placement_strategy must be one of {PLACEMENT}, "
                             f"got {self.placement_strategy!r}")

    # Only HashGAN has an attention module; the compared methods hash whole features.
    @property
    def image_attention(self) -> bool:
        return self.method == "hashgan" and self.attention in ("both", "image")

    @property
    def text_attention(self) -> bool:
        return self.method == "hashgan" and self.attention in ("both", "text")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        return cls.from_dict(values)


def runs_that_fit(cfg: TrainConfig, cluster: dict, *, cpus_beside_each: float = 0.0,
                  cpus_shared: float = 0.0) -> int:
    """Training runs of `cfg` that the cluster's resources (ray.cluster_resources(),
    e.g. {"CPU": 16.0, "GPU": 2.0}) hold at once; at least 1, as a run that does not
    fit waits for Ray rather than being refused here. A run takes its workers' CPUs
    and GPUs and `cpus_beside_each` more; `cpus_shared` are kept once for all runs.
    The experiment's cells and Tune's trials differ only in those two (their
    callers say why)."""
    limits = []
    cpus = cfg.workers * cfg.cpus_per_worker + cpus_beside_each
    if cpus > 0:
        limits.append((cluster.get("CPU", 0) - cpus_shared) // cpus)
    if cfg.gpus_per_worker > 0:
        limits.append(cluster.get("GPU", 0) // (cfg.workers * cfg.gpus_per_worker))
    return max(1, int(min(limits, default=1)))
