"""DCMH-protocol splits: a random query set, a training set drawn from the rest,
and the retrieval database = every pair that is not a query.

Each pair is stored once with one `split` value. A `train` pair is also part of
the retrieval database (DCMH samples its training set *from* the database), so
"the database" means the rows whose split is `train` or `database`;
`rows_of_split("database")` says exactly that.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("query", "train", "database")

# (query, train) sizes of the DCMH protocol (Jiang & Li, CVPR 2017), which the
# HashGAN paper follows (section 4.1).
PROTOCOL_SIZES = {
    "nuswide": (2100, 10500),
    "mirflickr": (2000, 10000),
    "iapr": (2000, 10000),
}


def rows_of_split(split: str) -> tuple[str, ...]:
    """The stored `split` values that make up `split` as a retrieval set."""
    if split == "database":
        return ("train", "database")
    if split in ("query", "train"):
        return (split,)
    raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def assign_splits(ids: np.ndarray, n_query: int, n_train: int, seed: int) -> np.ndarray:
    """Split labels aligned with `ids`: `n_query` random queries, `n_train` random
    training pairs from the rest, everything else `database`.

    The draw depends only on the set of ids and the seed, not on the order the
    rows were written in, so the same data and seed always give the same split.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if n_query < 0 or n_train < 0:
        raise ValueError(f"split sizes must be >= 0, got query={n_query} train={n_train}")
    if n_query + n_train > n:
        raise ValueError(
            f"cannot take {n_query} query + {n_train} train pairs from {n} pairs; "
            "lower --query/--train")
    order = np.argsort(ids, kind="stable")           # position of each id in sorted order
    perm = np.random.default_rng(seed).permutation(n)
    chosen = order[perm]                             # row indices in random order
    out = np.full(n, "database", dtype=object)
    out[chosen[:n_query]] = "query"
    out[chosen[n_query:n_query + n_train]] = "train"
    return out


def labeled_ids(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted ids of the labelled part of a training split: round(fraction · n)
    of `train_ids` drawn with `seed` (semi-supervised runs; the rest is treated
    as unlabelled). Like assign_splits, independent of the ids' order."""
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    n = int(round(fraction * len(ids)))
    if fraction < 1 and n < 1:
        raise ValueError(f"labeled fraction {fraction} of {len(ids)} training pairs keeps none")
    return np.sort(ids[np.random.default_rng(seed).permutation(len(ids))[:n]])


def mark_labeled(batch: dict, labeled: np.ndarray, keep_unlabeled: bool) -> dict:
    """A decoded batch with a bool `labeled` column (id in `labeled`); the
    unlabelled rows are dropped unless `keep_unlabeled`."""
    is_labeled = np.isin(batch["id"], labeled)
    if keep_unlabeled:
        return {**batch, "labeled": is_labeled}
    return {k: v[is_labeled] for k, v in batch.items()}
