"""`hashgan-ray tune` (Ray Tune search over training options) and
`hashgan-ray experiment paper` (the paper's tables as a grid of training runs)."""
from __future__ import annotations

import argparse
import math
import os

from hashgan_ray.cli.checks import at_least, dataset, fraction, training_fits
from hashgan_ray.cli.help import add_command, required_group
from hashgan_ray.cli.ray_options import connect_ray
from hashgan_ray.cli.train import add_train_arguments, train_config


def cmd_tune(args) -> None:
    cfg = train_config(args)
    training_fits(cfg, dataset(cfg.data), cfg.data)
    from hashgan_ray.tuning.search import cpus_needed, default_space_path, read_space, search

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


def _check_grid(args, base) -> None:
    """What run_paper would refuse only once Ray is up: every dataset, every
    code length, the settings."""
    from hashgan_ray.config import TrainConfig

    for data_dir in args.data_dirs:
        training_fits(base, dataset(data_dir), data_dir)
    for bits in args.bit_lengths:
        try:
            TrainConfig.from_dict({**base.to_dict(), "bits": bits})
        except ValueError as e:
            raise ValueError(f"--bits: {e}") from None
    if not args.settings:
        return
    from hashgan_ray.experiment.grid import all_settings      # imports torch and Ray: last

    unknown = [s for s in args.settings if s not in all_settings()]
    if unknown:
        raise ValueError(f"--settings {' '.join(unknown)}: not a setting; "
                         f"expected some of {' '.join(all_settings())}")


def cmd_experiment_paper(args) -> None:
    for name, instead in (("seed", "--seeds"), ("backbone", "--backbones"), ("method", "--settings"),
                          ("attention", "--settings"), ("labeled_fraction", "--labeled-fractions")):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} is set by the grid: use {instead}")
    base = train_config(args, required_options=())
    _check_grid(args, base)
    from hashgan_ray.experiment.grid import run_paper

    connect_ray(args.address, args.num_cpus or os.cpu_count())
    done = run_paper(args.data_dirs, args.out, base, bits=args.bit_lengths, seeds=args.seeds,
                     backbones=args.backbones, fractions=args.labeled_fractions,
                     settings=args.settings, at_once=args.cells_at_once, report=args.report)
    print(f"{len(done['results'])} cells finished, {len(done['failed'])} failed; "
          f"report: {done['report']}")
    if done["failed"]:
        raise SystemExit(1)


def _add_paper_arguments(parser) -> None:
    """The grid's options; they replace --data, --out and --bits of the training options."""
    from hashgan_ray.config import BACKBONES

    must = required_group(parser)
    must.add_argument("--data", dest="data_dirs", nargs="+", action="extend", required=True,
                      metavar="DIR", help="dataset directories (repeatable)")
    must.add_argument("--out", required=True, metavar="DIR",
                      help="grid directory: one run per cell; a rerun does what is missing")
    grid = required_group(parser, "the grid", position=2)
    grid.add_argument("--bits", dest="bit_lengths", nargs="+", type=int, default=[16, 32, 64],
                      metavar="N", help="code lengths")
    grid.add_argument("--seeds", type=at_least(1), default=3, metavar="K",
                      help="seeds per cell, 0..K-1")
    grid.add_argument("--backbones", nargs="+", choices=BACKBONES, default=["small"],
                      help="image networks; the first runs every table, the others HashGAN "
                           "(both) for Table 3")
    grid.add_argument("--labeled-fractions", nargs="+", type=fraction, default=[1.0, 0.1],
                      metavar="F", help="labelled shares of the train split; below 1 at the "
                                        "smallest bits, for HashGAN (both), DCMH and the "
                                        "semi-supervised methods")
    grid.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                      help="a subset of hashgan-both hashgan-image hashgan-text hashgan-none and "
                           "the other registered methods (default: all)")
    grid.add_argument("--cells-at-once", type=at_least(1), default=None, metavar="N",
                      help="training runs side by side (default: as many as the cluster's CPUs hold)")
    grid.add_argument("--report", default=None, metavar="FILE",
                      help="report file (default: OUT/report.md)")
    for set_by_the_grid in ("--seed", "--backbone", "--method", "--attention", "--labeled-fraction"):
        parser.add_argument(set_by_the_grid, default=None, help=argparse.SUPPRESS)


def add_experiment_commands(commands) -> None:
    tune_cmd = add_command(
        commands, "tune", summary="search training options with Ray Tune (ASHA)",
        usage="%(prog)s --data DIR --out DIR --samples N [option ...]",
        description="Searches training options (by default margin, learning rate and the "
                    "attention threshold α; --space names others) with Ray Tune: --samples "
                    "trials, each a training run like `train`, stopped early by ASHA when it "
                    "falls behind. Writes every trial's numbers (trials.csv), a plot, and the "
                    "best trial's options as a config file that `train --config` takes. The "
                    "same command again resumes the search.",
        examples=["hashgan-ray tune --data data/synth --out tune-out --samples 16 --epochs 10",
                  "hashgan-ray train --config tune-out/best_config.json --out runs/best"])
    must = add_train_arguments(tune_cmd, local_cpus="this machine's, at least what one trial needs")
    must.add_argument("--samples", type=at_least(1), required=True, metavar="N", help="trials to run")
    search = required_group(tune_cmd, "the search", position=2)
    search.add_argument("--workers-per-trial", dest="workers", type=at_least(1), default=None,
                        metavar="N", help="Ray Train workers per trial (the same as --workers)")
    search.add_argument("--space", default=None, metavar="FILE",
                        help="search-space YAML (default: the package's tuning/space.yaml, "
                             "tune/space.yaml in a checkout)")
    search.add_argument("--max-concurrent", type=at_least(1), default=None, metavar="N",
                        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    tune_cmd.set_defaults(func=cmd_tune)

    experiment = add_command(
        commands, "experiment", summary="the paper's experiments on Ray",
        description="Runs the paper's experiments as grids of training runs on Ray; "
                    "`experiment paper` is the one there is.",
        examples=["hashgan-ray experiment paper --data data/synth --out grid --bits 32 --seeds 3"])
    experiments = experiment.add_subparsers(dest="experiment_command", required=True,
                                            metavar="COMMAND")
    paper = add_command(
        experiments, "paper", conflict_handler="resolve",
        summary="Tables 1-4 and Figures 5-6: a grid of training runs, then report.md",
        usage="%(prog)s --data DIR [DIR ...] --out DIR [option ...]",
        description="Trains and evaluates every cell of the paper's grid (dataset x code "
                    "length x seed x method or attention setting, plus other backbones and "
                    "labelled fractions), as many cells side by side as the Ray cluster "
                    "holds, then writes report.md with the paper's Tables 1-4 and Figures 5-6 "
                    "as mean ± standard error over the seeds. Finished cells are kept: the "
                    "same command again runs only what is missing.",
        examples=["hashgan-ray experiment paper --data data/synth --out grid --bits 32 --seeds 3 "
                  "--labeled-fractions 1 --epochs 15",
                  "hashgan-ray experiment paper --data data/mirflickr data/nuswide --out grid "
                  "--backbones vgg19 --pretrained --gpus-per-worker 1"])
    add_train_arguments(paper, local_cpus="all of this machine's", required=False)
    _add_paper_arguments(paper)
    paper.set_defaults(func=cmd_experiment_paper)
