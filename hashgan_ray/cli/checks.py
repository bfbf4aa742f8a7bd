"""Checks of a command's input that run before Ray starts: a bad dataset
directory or an impossible count fails in a second with one line (exit
status 2, through main), not after a cluster has come up."""
from __future__ import annotations

import argparse


def at_least(minimum: int):
    """argparse type: an integer >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "count"          # argparse names the type in its messages
    return parse


def fraction(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def dataset(data_dir, option: str = "--data"):
    """The DatasetMeta of a dataset directory that exists and holds pairs;
    otherwise a DataError that says which option named what."""
    from hashgan_ray.data.format import DataError, pair_files, read_meta

    try:
        meta = read_meta(data_dir)
        pair_files(data_dir)
    except DataError as e:
        raise DataError(f"{option}: {e}") from None
    return meta


def training_fits(cfg, meta, data_dir) -> None:
    """Every Ray Train worker gets at least one full batch of the train split per
    epoch (the loop drops a last partial batch), and a labelled fraction keeps a pair."""
    import numpy as np

    from hashgan_ray.data.splits import labeled_ids

    n_train = meta.counts["train"]
    if cfg.workers * cfg.batch_size > n_train:
        raise ValueError(f"{data_dir}: its train split has {n_train} pairs, fewer than "
                         f"--workers {cfg.workers} x --batch-size {cfg.batch_size} = "
                         f"{cfg.workers * cfg.batch_size} (one full batch per worker per epoch); "
                         "lower --workers or --batch-size")
    labeled_ids(np.arange(n_train), cfg.labeled_fraction, cfg.seed)   # refuses one that keeps none
