"""`hashgan-ray` command line: argument parsing and what a person sees.

Each subcommand parses its options and calls one library function with
explicit arguments; the library itself logs and never reads settings on its own.
One module per command group: data.py, train.py (train, eval), index.py (index,
serve), experiment.py (tune, experiment); ray_options.py holds the Ray
connection options they share.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys

from hashgan_ray.cli.data import add_data_commands
from hashgan_ray.cli.experiment import add_experiment_commands
from hashgan_ray.cli.index import add_index_commands, add_serve_command
from hashgan_ray.cli.train import add_train_commands
from hashgan_ray.data.format import DataError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashgan-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('hashgan-ray')}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_data_commands(commands)
    add_train_commands(commands)
    add_index_commands(commands)
    add_serve_command(commands)
    add_experiment_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"hashgan-ray: error: {e}", file=sys.stderr)
        return 2
    return 0
