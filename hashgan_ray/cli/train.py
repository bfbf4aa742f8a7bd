"""`hashgan-ray train` and `hashgan-ray eval`, and the training options that
tune and the experiment share."""
from __future__ import annotations

import argparse
import json
import os
import textwrap

from hashgan_ray.cli.checks import at_least, dataset, training_fits
from hashgan_ray.cli.help import WIDTH, add_command, required_group
from hashgan_ray.cli.ray_options import add_ray_options, connect_ray
from hashgan_ray.files import write_text

# --help text of the training options; the defaults are TrainConfig's (hashgan_ray/config.py)
TRAIN_HELP = {
    "data": "dataset directory (hashgan-ray data ...)",
    "out": "run directory: checkpoints (the same command again resumes), model/ export",
    "epochs": "passes over the train split", "seed": "seed of the model and the shuffling",
    "method": "hashgan (the paper) or a compared method (docs/methods.md)",
    "labeled_fraction": "share of the train split used with its labels (semi-supervised runs)",
    "bits": "code length, a multiple of 8",
    "backbone": "image network; small and resnet18 suit a CPU, vgg19 is the paper's",
    "pretrained": "start vgg19/resnet18 from ImageNet weights (local file, never downloaded)",
    "backbone_weights": "file of those weights (default: torchvision's cache)",
    "image_size": "side images are resized to (default: the dataset's)",
    "attention": "both, image, text, none: the paper's Table 4 ablation; oracle: the "
                 "synthetic data's true masks in place of G",
    "alpha_scale": "attention threshold α as a multiple of 1/(H·W) and 1/d",
    "ste": "gradient of the attention threshold: identity (the paper's) or saturating "
           "(only where P is within a factor 2 of α)",
    "small_head": "the small backbone's head: maxpool, or grid (VGG-shaped)",
    "text_hidden": "hidden width of the text network", "text_features": "text feature width",
    "margin": "triplet margin ε", "lr": "Adam learning rate", "beta1": "Adam β1",
    "batch_size": "pairs per worker and step", "d_steps": "encoder/discriminator steps ...",
    "g_steps": "... then generator steps", "lr_decay_every": "epochs between learning-rate decays",
    "lr_decay": "factor of each decay", "lr_schedule": "step: the paper's decay; cosine: from "
                                                      "--lr to 0 over the epochs",
    "mining": "which triplets count: all (the paper's), active, hardest",
    "quantization": "weight of the quantization term", "balance": "weight of the bit-balance term",
    "label_head": "weight of the label term: a linear label head on the codes, softmax "
                  "cross-entropy (HashGAN, SCH-GAN; 0: the paper's triplets alone)",
    "dcmh_balance": "DCMH's bit-balance weight η (DCMH's paper: 1)",
    "dcmh_prior": "DCMH's likelihood with the share of similar pairs as its prior "
                  "(DCMH's paper: off)",
    "dcmh_quantization": "DCMH's quantization weight γ (DCMH's paper: 1)",
    "dcmh_pair_weights": "weight DCMH's similar and dissimilar pairs equally in its likelihood "
                         "(HashNet's weighting; DCMH's paper: off)",
    "augment_shift": "move each training image by up to this many pixels in each axis, "
                     "afresh every step (0: none, the paper's)",
    "cache_train": "decode the train split once into Ray's object store (else every epoch)",
    "val_database": "database sample for the per-epoch validation MAP (0: all)",
    "workers": "Ray Train workers (data parallel)", "gpus_per_worker": "GPUs of each worker",
    "cpus_per_worker": "CPUs of each worker",
    "max_failures": "worker failures to recover from (restart from the last checkpoint)",
    "placement_strategy": "where Ray puts the workers (SPREAD: across nodes)",
}
TRAIN_USAGE = "%(prog)s --data DIR --out DIR [option ...]"


def _choices() -> dict:
    """Options with a fixed set of values: the tuples of hashgan_ray/config.py."""
    from hashgan_ray.config import (ATTENTION, BACKBONES, LR_SCHEDULES, METHODS, MINING, ORACLE,
                                    PLACEMENT, SMALL_HEADS, STE)
    return {"backbone": BACKBONES, "attention": (*ATTENTION, ORACLE), "ste": STE,
            "method": METHODS, "mining": MINING, "lr_schedule": LR_SCHEDULES,
            "small_head": SMALL_HEADS, "placement_strategy": PLACEMENT}


def _shown(default) -> str:
    if isinstance(default, bool):
        return " (default: on)" if default else " (default: off)"
    return "" if default in (None, "") else f" (default: {default})"


def add_train_arguments(parser, local_cpus: str = "enough for the workers",
                        required: bool = True):
    """One --option per TrainConfig field; unset options keep the value from
    --config FILE or the default. Then the Ray options. `required`: --data and
    --out are listed as required (train, tune); a command that sets them its own
    way (experiment paper) replaces them. Returns the group of required options."""
    from dataclasses import MISSING, fields

    from hashgan_ray.config import TrainConfig

    must = required_group(parser)
    options = parser.add_argument_group("training options", textwrap.fill(
        "Every field of hashgan_ray/config.py. --config FILE gives them from a JSON file; "
        "options given here override it.", WIDTH - 2))
    options.add_argument("--config", metavar="FILE",
                         help="JSON file of training options (e.g. Tune's best_config.json)")
    choices = _choices()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        group = must if required and f.name in ("data", "out") else options
        help_text = TRAIN_HELP.get(f.name, "") + (
            "; here or in the --config file" if group is must else _shown(default))
        help_text = help_text.replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif f.name in choices:
            group.add_argument(flag, choices=choices[f.name], default=None, help=help_text)
        else:
            # the annotation where the default (None) does not tell: "int | None"
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            metavar = {"data": "DIR", "out": "DIR", "backbone_weights": "FILE"}.get(
                f.name, {int: "N", float: "X"}.get(kind, "TEXT"))
            group.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)
    add_ray_options(parser, local_cpus)
    return must


def train_config(args, required_options=("data", "out")):
    from dataclasses import fields

    from hashgan_ray.config import TrainConfig

    values = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)      # None also where a command replaced the option
        if given is not None:
            values[f.name] = given
    for required in required_options:
        if not values.get(required):
            raise ValueError(f"--{required} is required (on the command line or in --config)")
    return TrainConfig.from_dict(values)


def cmd_train(args) -> None:
    cfg = train_config(args)
    meta = dataset(cfg.data)
    training_fits(cfg, meta, cfg.data)                          # before Ray starts
    # Ray Data reads and decodes beside the training workers: leave it a CPU.
    num_cpus = args.num_cpus or max(os.cpu_count() or 1, int(cfg.workers * cfg.cpus_per_worker) + 1)
    connect_ray(args.address, num_cpus)
    from hashgan_ray.output import epoch_line
    from hashgan_ray.train.loop import fit

    result = fit(cfg, meta=meta,
                 on_epoch=lambda metrics: print(epoch_line(metrics, cfg.epochs), flush=True))
    m = result.metrics or {}
    print(f"trained {cfg.epochs} epochs: MAP i->t {m.get('map_i2t', float('nan')):.4f} "
          f"t->i {m.get('map_t2i', float('nan')):.4f}; model exported to "
          f"{os.path.join(os.path.abspath(cfg.out), 'model')}")


def cmd_eval(args) -> None:
    import torch

    from hashgan_ray.config import ORACLE
    from hashgan_ray.data.oracle import Oracle
    from hashgan_ray.evaluation.evaluate import evaluate_model
    from hashgan_ray.evaluation.metrics import plot_pr_curves
    from hashgan_ray.model.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config = load_model(args.checkpoint, device)
    meta = dataset(args.data)
    # A model trained with the true masks is evaluated with them (data/oracle.py).
    oracle = (Oracle(args.data, meta=meta) if config.get("train", {}).get("attention") == ORACLE
              else None)
    os.makedirs(args.figures, exist_ok=True)
    masks = (os.path.join(args.figures, "attention_masks.png")
             if model.attention.image is not None else None)
    result = evaluate_model(model, args.data, meta, oracle=oracle, top_k=args.top_k, pr=True,
                            masks_path=masks)
    plot_pr_curves(result.pop("pr"), os.path.join(args.figures, "pr_curves.png"),
                   title=f"precision-recall, {model.bits} bits")
    result.update(bits=model.bits, top_k=args.top_k)
    print(f"MAP i->t {result['map_i2t']:.4f}  t->i {result['map_t2i']:.4f}  "
          f"({result['n_query']} queries, {result['n_database']} database, {model.bits} bits"
          + (f", top {args.top_k}" if args.top_k else "") + f"); figures in {args.figures}")
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


def add_train_commands(commands) -> None:
    train = add_command(
        commands, "train", summary="train a model with Ray Train", usage=TRAIN_USAGE,
        description="Trains HashGAN (or a compared method) on a dataset directory with Ray "
                    "Train: --workers data-parallel workers on a local Ray, or on the cluster "
                    "of --address / RAY_ADDRESS. Each epoch prints one line (losses, "
                    "validation MAP, samples/s) and saves a checkpoint in the run directory; "
                    "running the same command again resumes from it. The final model is "
                    "exported to RUN_DIR/model/, which eval, index build and serve read.",
        examples=["hashgan-ray train --data data/synth --out runs/synth --epochs 15 --workers 2 "
                  "--batch-size 32",
                  "hashgan-ray train --data data/mirflickr --out runs/mir --backbone vgg19 "
                  "--pretrained --attention both --gpus-per-worker 1",
                  "hashgan-ray train --config tune-out/best_config.json --out runs/best"])
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = add_command(
        commands, "eval", summary="MAP, PR curves and attention masks of a model",
        description="Encodes a dataset's query split and its retrieval database with a "
                    "trained model (no Ray), prints the mean average precision of image->text "
                    "and text->image search, and draws the precision-recall curves and, for a "
                    "model with image attention, its attention masks.",
        examples=["hashgan-ray eval --checkpoint runs/synth/model --data data/synth",
                  "hashgan-ray eval --checkpoint runs/synth/model --data data/synth --top-k 500 "
                  "--json eval.json --figures figures"])
    must = required_group(evaluate)
    must.add_argument("--checkpoint", required=True, metavar="DIR",
                      help="model or checkpoint directory (RUN_DIR/model)")
    must.add_argument("--data", required=True, metavar="DIR", help="dataset directory")
    evaluate.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    evaluate.add_argument("--top-k", type=at_least(1), default=None, metavar="K",
                          help="MAP over the top k (default: over the whole database)")
    evaluate.add_argument("--figures", default="eval-figures", metavar="DIR",
                          help="directory for pr_curves.png and attention_masks.png")
    evaluate.set_defaults(func=cmd_eval)
