"""Training methods: HashGAN (the paper) and the methods it is compared with.

Every method trains the same servable encoder, `HashGAN` (feature networks and
hashing layers; an attention module only for `hashgan`), so evaluation, the
index and the Serve application load any method's model unchanged. What only
training needs (optimisers, discriminators, fusion or generator networks, the
discrete codes of the training set) belongs to the method's trainer and is
saved in the checkpoint's train_state.pt.

A trainer is plain PyTorch (no Ray). Each takes the model and named
arguments (lr, betas, the lr schedule, margin, steps ...), never the config:
`build_trainer` below is the one place that reads a TrainConfig for a trainer.
Besides the method's own settings a trainer takes those of these it needs:

* `wrap(module)` returns what to run the module's forward through: its DDP
  wrapper under Ray Train, the module itself in a plain loop (the default,
  steps.single_process). Every rank must run the same sequence of wrapped
  forwards (see steps.py).
* `all_reduce(tensor)` sums a tensor over the workers in place (a no-op for
  one worker); for updates that need the whole training set (DCMH, DFAH).
* `train_ids` are the sorted dataset ids of the training split (DCMH, DFAH).
* `gather(tensor)` concatenates a tensor over the workers, with gradient back
  to each worker's own rows (None for one worker): HashGAN and SCH-GAN mine
  their triplets in the global batch with it.

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

from hashgan_ray.config import METHODS, ORACLE
from hashgan_ray.data.format import read_meta
from hashgan_ray.data.oracle import Oracle
from hashgan_ray.train.methods.dcmh import DCMHTrainer
from hashgan_ray.train.methods.dfah import DFAHTrainer
from hashgan_ray.train.methods.hashgan import HashGANTrainer
from hashgan_ray.train.methods.schgan import SCHGANTrainer
from hashgan_ray.train.methods.supervised import SupervisedTrainer
from hashgan_ray.train.steps import LrSchedule, no_all_reduce, single_process

# method name -> trainer class; the names are config.METHODS
TRAINERS = {
    "hashgan": HashGANTrainer,
    "dcmh": DCMHTrainer,
    "dfah": DFAHTrainer,
    "schgan": SCHGANTrainer,
    # not a hashing method: the label-supervised yardstick of benchmarks/quality.py
    "supervised": SupervisedTrainer,
}


def trainer_class(method: str):
    try:
        return TRAINERS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}") from None


def build_trainer(cfg, model, *, meta=None, wrap=single_process, all_reduce=no_all_reduce,
                  train_ids=None, gather=None):
    """The trainer of `cfg.method` (a TrainConfig) for `model`, each of the
    method's arguments taken from its config field: the one place that maps
    the config to trainers. `meta`: the dataset's (data.format.read_meta),
    where the caller has read it already; wrap, all_reduce, train_ids, gather:
    the module docstring."""
    cls = trainer_class(cfg.method)
    schedule = LrSchedule(cfg.lr_schedule, cfg.epochs, cfg.lr_decay_every, cfg.lr_decay)
    # β2 = 0.999, Adam's default: the paper gives β1 only (section 4.1)
    common = dict(lr=cfg.lr, betas=(cfg.beta1, 0.999), schedule=schedule, wrap=wrap)
    if cfg.method in ("hashgan", "schgan"):
        # HashGAN's objective and schedule; SCH-GAN's labelled term is that objective
        adversarial = dict(margin=cfg.margin, mining=cfg.mining, quantization=cfg.quantization,
                           balance=cfg.balance, d_steps=cfg.d_steps, g_steps=cfg.g_steps,
                           gather=gather, label_head=cfg.label_head)
        if cfg.label_head > 0:              # the label head has a logit per label
            adversarial["num_labels"] = (meta or read_meta(cfg.data)).num_labels
        if cfg.method == "schgan":
            return cls(model, **common, **adversarial)
        oracle = Oracle(cfg.data, meta) if cfg.attention == ORACLE else None
        return cls(model, **common, **adversarial, oracle=oracle)
    if cfg.method == "dcmh":
        return cls(model, **common, train_ids=train_ids, seed=cfg.seed, eta=cfg.dcmh_balance,
                   prior=cfg.dcmh_prior, gamma=cfg.dcmh_quantization,
                   pair_weights=cfg.dcmh_pair_weights, all_reduce=all_reduce)
    if cfg.method == "dfah":
        return cls(model, **common, train_ids=train_ids, all_reduce=all_reduce)
    return cls(model, **common, num_labels=(meta or read_meta(cfg.data)).num_labels)  # supervised


def build_model(cfg, meta):
    """The servable encoder that `cfg` trains, for the dataset described by `meta`."""
    from hashgan_ray.model.hashgan import HashGAN

    return HashGAN(bits=cfg.bits, vocab_size=meta.vocab_size, backbone=cfg.backbone,
                   image_size=cfg.image_size or meta.image_size, text_hidden=cfg.text_hidden,
                   text_features=cfg.text_features, image_attention=cfg.image_attention,
                   text_attention=cfg.text_attention, ste=cfg.ste, alpha_scale=cfg.alpha_scale,
                   small_head=cfg.small_head)


assert tuple(TRAINERS) == METHODS, "config.METHODS and the registry name the same methods"
