"""`hashgan-ray train` and `hashgan-ray eval`, and the training options that
tune and the experiment share."""
from __future__ import annotations

import argparse
import json
import os

from hashgan_ray.cli.ray_options import add_ray_options, connect_ray
from hashgan_ray.files import write_text

# --help text of the training options (the rest is in hashgan_ray/config.py)
TRAIN_HELP = {
    "data": "dataset directory", "out": "run directory (checkpoints, model/ export)",
    "bits": "code length, a multiple of 8", "backbone": "small | resnet18 | vgg19",
    "attention": "both | image | text | none (the paper's Table 4 ablation) | oracle (the "
                 "synthetic data's true masks in place of G)",
    "alpha_scale": "attention threshold α as a multiple of 1/(H·W) and 1/d",
    "ste": "gradient of the attention threshold: identity (the paper's) | saturating "
           "(only where P is within a factor 2 of α)",
    "margin": "triplet margin ε", "workers": "Ray Train workers (data parallel)",
    "pretrained": "start vgg19/resnet18 from ImageNet weights (local file, never downloaded)",
    "backbone_weights": "file of those weights (default: torchvision's cache)",
    "val_database": "database sample for the per-epoch validation MAP (0: all)",
    "max_failures": "worker failures to recover from (restart from the last checkpoint)",
    "placement_strategy": "where Ray puts the workers: PACK | SPREAD (across nodes) | "
                          "STRICT_PACK | STRICT_SPREAD",
    "cache_train": "decode the train split once into Ray's object store (else every epoch)",
    "method": "hashgan (the paper) or a compared method: see README, \"Methods\"",
    "labeled_fraction": "share of the train split used with its labels (semi-supervised runs)",
}


def add_train_arguments(parser, local_cpus: str = "enough for the workers") -> None:
    """One --option per TrainConfig field; unset options keep the value from
    --config FILE or the default. Then the Ray options."""
    from dataclasses import MISSING, fields

    from hashgan_ray.config import TrainConfig

    parser.add_argument("--config", help="JSON file of TrainConfig values (e.g. Tune's best)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = TRAIN_HELP.get(f.name, "") + f" (default {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=float if kind is float else kind, default=None,
                                help=help_text)
    add_ray_options(parser, local_cpus)


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
            raise ValueError(f"--{required} is required")
    return TrainConfig.from_dict(values)


def cmd_train(args) -> None:
    cfg = train_config(args)
    # Ray Data reads and decodes beside the training workers: leave it a CPU.
    num_cpus = args.num_cpus or max(os.cpu_count() or 1, int(cfg.workers * cfg.cpus_per_worker) + 1)
    connect_ray(args.address, num_cpus)
    from hashgan_ray.train.loop import fit

    result = fit(cfg)
    m = result.metrics or {}
    print(f"trained {cfg.epochs} epochs: MAP i->t {m.get('map_i2t', float('nan')):.4f} "
          f"t->i {m.get('map_t2i', float('nan')):.4f}; model exported to "
          f"{os.path.join(os.path.abspath(cfg.out), 'model')}")


def cmd_eval(args) -> None:
    import torch

    from hashgan_ray.config import ORACLE
    from hashgan_ray.data.oracle import Oracle
    from hashgan_ray.evaluation.evaluate import encode_split, plot_attention_masks, pr_curves, retrieval_map
    from hashgan_ray.evaluation.metrics import plot_pr_curves
    from hashgan_ray.model.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config = load_model(args.checkpoint, device)
    # A model trained with the true masks is evaluated with them (data/oracle.py).
    oracle = Oracle(args.data) if config.get("train", {}).get("attention") == ORACLE else None
    query = encode_split(model, args.data, "query", device=device, oracle=oracle)
    database = encode_split(model, args.data, "database", device=device, oracle=oracle)
    result = {**retrieval_map(query, database, top_k=args.top_k), "bits": model.bits,
              "n_query": len(query.ids), "n_database": len(database.ids), "top_k": args.top_k}
    os.makedirs(args.figures, exist_ok=True)
    plot_pr_curves(pr_curves(query, database), os.path.join(args.figures, "pr_curves.png"),
                   title=f"precision-recall, {model.bits} bits")
    if model.attention.image is not None:
        plot_attention_masks(model, args.data, os.path.join(args.figures, "attention_masks.png"))
    print(f"MAP i->t {result['map_i2t']:.4f}  t->i {result['map_t2i']:.4f}  "
          f"({result['n_query']} queries, {result['n_database']} database, {model.bits} bits"
          + (f", top {args.top_k}" if args.top_k else "") + f"); figures in {args.figures}")
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


def add_train_commands(commands) -> None:
    train = commands.add_parser("train", help="train HashGAN with Ray Train")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="MAP, PR curves and attention masks of a model")
    evaluate.add_argument("--checkpoint", required=True, help="model or checkpoint directory")
    evaluate.add_argument("--data", required=True, help="dataset directory")
    evaluate.add_argument("--json", help="also write the numbers to this JSON file")
    evaluate.add_argument("--top-k", type=int, default=None, help="MAP over the top k (e.g. 500)")
    evaluate.add_argument("--figures", default="eval-figures",
                          help="directory for pr_curves.png and attention_masks.png")
    evaluate.set_defaults(func=cmd_eval)
