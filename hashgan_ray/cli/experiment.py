"""`hashgan-ray experiment paper` (the paper's tables as a grid of training
runs) and `hashgan-ray tune` (Ray Tune search)."""
from __future__ import annotations

import argparse
import math
import os

from hashgan_ray.cli.ray_options import connect_ray
from hashgan_ray.cli.train import add_train_arguments, train_config


def cmd_tune(args) -> None:
    from hashgan_ray.tuning.search import cpus_needed, default_space_path, read_space, search

    cfg = train_config(args)
    space = read_space(args.space or default_space_path())       # bad files fail before Ray starts
    connect_ray(args.address, args.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))))
    done = search(cfg, space, samples=args.samples, max_concurrent=args.max_concurrent)
    best, paths = done["best"], done["paths"]
    values = ", ".join(f"{k} {best[k]:.4g}" if isinstance(best[k], float) else f"{k} {best[k]}"
                       for k in space)
    print(f"best of {len(done['rows'])} trials: {best['trial']} ({values}): MAP i->t "
          f"{best['map_i2t']:.4f} t->i {best['map_t2i']:.4f} after {best['epochs']} epochs\n"
          f"trials: {paths['csv']}\nplot: {paths['plot']}\nbest config: {paths['config']} "
          f"(hashgan-ray train --config {paths['config']} [--out RUN_DIR] [--epochs N])")


def cmd_experiment_paper(args) -> None:
    from hashgan_ray.experiment.grid import run_paper

    for name, instead in (("seed", "--seeds"), ("backbone", "--backbones"), ("method", "--settings"),
                          ("attention", "--settings"), ("labeled_fraction", "--labeled-fractions")):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} is set by the grid: use {instead}")
    if not args.out:
        raise ValueError("--out is required")
    base = train_config(args, required_options=())
    connect_ray(args.address, args.num_cpus or os.cpu_count())
    done = run_paper(args.data_dirs, args.out, base, bits=args.bit_lengths, seeds=args.seeds,
                     backbones=args.backbones, fractions=args.labeled_fractions,
                     settings=args.settings, at_once=args.cells_at_once, report=args.report)
    print(f"{len(done['results'])} cells finished, {len(done['failed'])} failed; "
          f"report: {done['report']}")
    if done["failed"]:
        raise SystemExit(1)


def _add_paper_arguments(parser) -> None:
    """The grid's options; they replace --data and --bits of the training options."""
    from hashgan_ray.config import BACKBONES

    parser.add_argument("--data", dest="data_dirs", nargs="+", action="extend", required=True,
                        metavar="DIR", help="dataset directories (repeatable)")
    parser.add_argument("--bits", dest="bit_lengths", nargs="+", type=int, default=[16, 32, 64],
                        help="code lengths (default 16 32 64)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell, 0..K-1 (default 3)")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=["small"],
                        help="image networks; the first runs every table, the others HashGAN "
                             "(both) for Table 3 (default small)")
    parser.add_argument("--labeled-fractions", nargs="+", type=float, default=[1.0, 0.1],
                        help="labelled shares of the train split; below 1 at the smallest bits, "
                             "for HashGAN (both), DCMH and the semi-supervised methods (default 1 0.1)")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="a subset of hashgan-both hashgan-image hashgan-text hashgan-none and "
                             "the other registered methods (default all)")
    parser.add_argument("--cells-at-once", type=int, default=None,
                        help="training runs side by side (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--report", default=None, help="report file (default OUT/report.md)")
    for set_by_the_grid in ("--seed", "--backbone", "--method", "--attention", "--labeled-fraction"):
        parser.add_argument(set_by_the_grid, default=None, help=argparse.SUPPRESS)


def add_experiment_commands(commands) -> None:
    tune_cmd = commands.add_parser("tune", help="search margin, lr and α with Ray Tune (ASHA)")
    add_train_arguments(tune_cmd, local_cpus="this machine's, at least what one trial needs")
    tune_cmd.add_argument("--samples", type=int, required=True, help="trials to run")
    tune_cmd.add_argument("--workers-per-trial", dest="workers", type=int, default=None,
                          help="Ray Train workers per trial (the same as --workers)")
    tune_cmd.add_argument("--space", default=None,
                          help="search-space YAML (default: the package's tuning/space.yaml, "
                               "tune/space.yaml in a checkout)")
    tune_cmd.add_argument("--max-concurrent", type=int, default=None,
                          help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    tune_cmd.set_defaults(func=cmd_tune)

    experiment = commands.add_parser("experiment", help="the paper's experiments on Ray")
    experiments = experiment.add_subparsers(dest="experiment_command", required=True)
    paper = experiments.add_parser("paper", conflict_handler="resolve",
                                   help="Tables 1-4 and Figures 5-6: a grid of training runs, then report.md")
    add_train_arguments(paper, local_cpus="all of this machine's")   # every training option applies to every cell
    _add_paper_arguments(paper)
    paper.set_defaults(func=cmd_experiment_paper)
