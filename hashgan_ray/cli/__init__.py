"""`hashgan-ray` command line: argument parsing and what a person sees.

Each subcommand parses its options, checks what it can before Ray starts
(checks.py), and calls one library function with explicit arguments; the
library itself logs and never reads settings on its own. One module per
command group: data.py, train.py (train, eval), index.py (index, serve),
experiment.py (tune, experiment); ray_options.py holds the Ray connection
options they share, help.py the look of every --help.
"""
from __future__ import annotations

import importlib.metadata
import sys

from hashgan_ray.cli.data import add_data_commands
from hashgan_ray.cli.experiment import add_experiment_commands
from hashgan_ray.cli.help import HelpFormatter, Parser, format_example
from hashgan_ray.cli.index import add_index_commands, add_serve_command
from hashgan_ray.cli.train import add_train_commands
from hashgan_ray.data.format import DataError
from hashgan_ray.output import setup_output

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
hashgan-ray learns short binary codes for images and their texts (HashGAN,
ECCV 2018), so that a text finds its images and an image its texts by Hamming
distance. It trains on Ray Train, tunes on Ray Tune, encodes with Ray Data into
FAISS indexes and serves search over HTTP with Ray Serve, on one machine or a
Ray cluster. A first run goes data -> train -> index -> serve (examples below);
`hashgan-ray COMMAND --help` explains each command."""

FIRST_RUN = [
    "hashgan-ray data synth --out data/synth --pairs 3000",
    "hashgan-ray train --data data/synth --out runs/synth --epochs 15 --workers 2 --batch-size 32",
    "hashgan-ray eval --checkpoint runs/synth/model --data data/synth",
    "hashgan-ray index build --checkpoint runs/synth/model --data data/synth --out index/synth",
    "hashgan-ray serve --checkpoint runs/synth/model --index index/synth",
]
TOUR = ("a first run, on the synthetic benchmark (then open http://127.0.0.1:8000/):\n"
        + "\n".join(map(format_example, FIRST_RUN)))


def build_parser() -> Parser:
    parser = Parser(prog="hashgan-ray", description=DESCRIPTION, epilog=TOUR,
                    formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also Ray's and the libraries' log lines, with times (default: "
                             "progress, one line per epoch, the summary; Ray's lines stay in "
                             "its log files)")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('hashgan-ray')}")
    commands = parser.add_subparsers(dest="command", required=True, title="commands",
                                     metavar="COMMAND")
    add_data_commands(commands)
    add_train_commands(commands)
    add_index_commands(commands)
    add_serve_command(commands)
    add_experiment_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_output(args.verbose)
    try:
        args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"hashgan-ray: error: {e}", file=sys.stderr)
        return 2
    return 0
