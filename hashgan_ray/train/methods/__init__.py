"""Training methods: HashGAN (the paper) and the methods it is compared with.

Every method trains the same servable encoder, `HashGAN` (feature networks and
hashing layers; an attention module only for `hashgan`), so evaluation, the
index and the Serve application load any method's model unchanged. What only
training needs (optimisers, discriminators, fusion or generator networks, the
discrete codes of the training set) belongs to the method's trainer and is
saved in the checkpoint's train_state.pt.

A trainer is plain PyTorch (no Ray) and is built as

    Trainer(model, cfg, wrap=..., all_reduce=..., train_ids=..., gather=...)

* `wrap(module)` returns what to run the module's forward through: its DDP
  wrapper under Ray Train, the module itself in a plain loop. Every rank must
  run the same sequence of wrapped forwards (see steps.py).
* `all_reduce(tensor)` sums a tensor over the workers in place (a no-op for
  one worker); for updates that need the whole training set.
* `train_ids` are the sorted dataset ids of the training split.
* `gather(tensor)` concatenates a tensor over the workers, with gradient back
  to each worker's own rows (None for one worker): HashGAN mines its triplets
  in the global batch with it; the other methods take it and ignore it.

and offers

* `step(step: int, batch: dict) -> dict[str, float]`: one optimisation step on a
  batch (id, image, text, labels, and `labeled` when labeled_fraction < 1);
  returns the losses to log.
* `end_epoch() -> None`: after an epoch's last step (lr schedule, per-epoch
  updates).
* `state_dict()` / `load_state_dict(state)`: tensors, numbers, lists and dicts
  only, so the checkpoint loads with `weights_only=True`.
* `uses_unlabeled` (class attribute): False means the trainer sees only the
  labelled rows of the train split (supervised methods); True means it gets all
  of them, each batch marked with `labeled` (semi-supervised methods).
"""
from __future__ import annotations

import importlib

from hashgan_ray.config import METHODS

# method name -> (module, trainer class); the names are config.METHODS
TRAINERS = {
    "hashgan": ("hashgan_ray.train.methods.hashgan", "HashGANTrainer"),
    "dcmh": ("hashgan_ray.train.methods.dcmh", "DCMHTrainer"),
    "dfah": ("hashgan_ray.train.methods.dfah", "DFAHTrainer"),
    "schgan": ("hashgan_ray.train.methods.schgan", "SCHGANTrainer"),
    # not a hashing method: the label-supervised yardstick of benchmarks/quality.py
    "supervised": ("hashgan_ray.train.methods.supervised", "SupervisedTrainer"),
}


def trainer_class(method: str):
    try:
        module, name = TRAINERS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(module), name)


def build_model(cfg, meta):
    """The servable encoder that `cfg` trains, for the dataset described by `meta`."""
    from hashgan_ray.model.hashgan import HashGAN

    return HashGAN(bits=cfg.bits, vocab_size=meta.vocab_size, backbone=cfg.backbone,
                   image_size=cfg.image_size or meta.image_size, text_hidden=cfg.text_hidden,
                   text_features=cfg.text_features, image_attention=cfg.image_attention,
                   text_attention=cfg.text_attention, ste=cfg.ste, alpha_scale=cfg.alpha_scale,
                   small_head=cfg.small_head)


def single_process(module):
    """`wrap` outside Ray Train: run the module itself."""
    return module


def no_all_reduce(tensor):
    """`all_reduce` for one worker."""
    return tensor


assert tuple(TRAINERS) == METHODS, "config.METHODS and the registry name the same methods"
