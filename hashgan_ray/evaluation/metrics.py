"""Retrieval metrics for packed binary hash codes ranked by Hamming distance.

Inputs, shared by every function here:

    codes   uint8 (n, bits/8)   rows of ``np.packbits`` over {0,1} bits
    labels  (n, L) multi-hot    any bool/int/float dtype, nonzero = has the label

A database item is *relevant* to a query when they share at least one label.

Ranking contract (the FAISS exact index must reproduce it): for each query the
database is sorted by ascending Hamming distance, and ties are broken by
database order - of two items at the same distance, the one that comes first in
``db_codes`` ranks first. This is exactly what a stable sort of the distances
gives.

How the ranking is made fast: each database item gets one unsigned integer key

    key = distance << (index_bits + 1) | index << 1 | relevant

The index makes every key unique, so a plain (unstable, SIMD) sort of the keys
yields exactly the (distance, index) order above, and the relevance bit rides
along in the lowest bit without affecting it. A top-k cut needs only a
partition plus a sort of the k smallest keys.

Queries are processed in small blocks whose keys are built tile by tile over
the database (temporaries stay in cache), with scratch buffers reused across
blocks: memory is O(block x database) per thread, never O(queries x database).
Contiguous query ranges run on a thread pool; numpy releases the GIL in these
loops and in sorting, so every core is used.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

from hashgan_ray.files import save_figure

log = logging.getLogger(__name__)

# Queries whose keys are built together, tile by tile over the database: the
# database tile is reused from cache by every query of the block.
_QUERY_BLOCK = 8
# Bytes of XOR scratch per tile (query block x database tile); fits in L2.
_TILE_BYTES = 1 << 19
# Ranking keys up to this many bits are uint32 (sorted faster), else uint64.
_KEY32_BITS = 32

T = TypeVar("T")


# --------------------------------------------------------------------------- #
# Validation and packing
# --------------------------------------------------------------------------- #

def _check_codes(name: str, codes) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (packed bits), got {codes.dtype}")
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, bits/8), got shape {codes.shape}")
    if codes.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} has 0 bytes per code")
    return codes


def _check_code_pair(query_codes, db_codes) -> tuple[np.ndarray, np.ndarray]:
    q = _check_codes("query_codes", query_codes)
    d = _check_codes("db_codes", db_codes)
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query_codes has {q.shape[1]} bytes per code but db_codes has {d.shape[1]}")
    if q.shape[1] * 8 > np.iinfo(np.uint16).max:
        raise ValueError(f"codes of {q.shape[1] * 8} bits are too long (max 65535)")
    return q, d


def _check_labels(name: str, labels) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(labels).__name__}")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be bool, integer or float, got {labels.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, labels), got shape {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if labels.shape[1] == 0:
        raise ValueError(f"{name} has 0 label columns")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError(f"{name} contains NaN")
    return labels


def _check_label_pair(query_labels, db_labels) -> tuple[np.ndarray, np.ndarray]:
    ql = _check_labels("query_labels", query_labels)
    dl = _check_labels("db_labels", db_labels)
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query_labels has {ql.shape[1]} label columns but db_labels has {dl.shape[1]}")
    return ql, dl


def _check_rows(labels_name: str, labels: np.ndarray, codes_name: str, codes: np.ndarray):
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(
            f"{labels_name} has {labels.shape[0]} rows but {codes_name} has {codes.shape[0]}")


def _check_k(name: str, k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def _pack_words(byte_rows: np.ndarray) -> np.ndarray:
    """(n, nbytes) uint8 -> (n, w) words of the narrowest fitting unsigned type.

    Zero bytes pad the rows to whole words: they change neither the popcount
    of an XOR nor the result of an AND, so distances and relevance are as is.
    """
    nbytes = byte_rows.shape[1]
    word = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64)
                if np.dtype(t).itemsize >= min(nbytes, 8))
    size = np.dtype(word).itemsize
    padded = np.zeros((byte_rows.shape[0], -(-nbytes // size) * size), dtype=np.uint8)
    padded[:, :nbytes] = byte_rows
    return padded.view(word)                                          # (n, w)


def _label_words(labels: np.ndarray) -> np.ndarray:
    """(n, L) multi-hot -> (n, w) bitsets, one bit per label."""
    return _pack_words(np.packbits(labels != 0, axis=1))


# --------------------------------------------------------------------------- #
# Kernels: a block of queries against the whole database
# --------------------------------------------------------------------------- #

class _Database:
    """Database codes and labels in the word layout the kernels use."""

    def __init__(self, db_codes: np.ndarray, db_labels: np.ndarray | None = None):
        self.n = db_codes.shape[0]
        self.bits = db_codes.shape[1] * 8
        self.words = _pack_words(db_codes)                            # (n, w)
        self.label_words = None if db_labels is None else _label_words(db_labels)
        # uint8 holds every distance up to 255 bits and halves memory traffic.
        self.dist_dtype = np.uint8 if self.bits <= 255 else np.uint16
        self.index_bits = max(1, (self.n - 1).bit_length())
        key_bits = self.bits.bit_length() + self.index_bits + 1
        self.key_dtype = np.uint32 if key_bits <= _KEY32_BITS else np.uint64
        # index << 1: the query-independent part of every ranking key (n,)
        self.base = np.arange(self.n, dtype=self.key_dtype) << self.key_dtype(1)
        # Database items per tile: sized so that one tile's temporaries for a
        # whole query block stay in the L2 cache.
        self.tile = max(1024, _TILE_BYTES // (_QUERY_BLOCK * self.words.itemsize
                                              * self.words.shape[1]))


class _Scratch:
    """Per-thread buffers, reused across all the query blocks of one task."""

    def __init__(self, db: _Database):
        b, t = _QUERY_BLOCK, min(db.tile, db.n)
        self.xor = np.empty((b, t, db.words.shape[1]), db.words.dtype)   # (B, T, w)
        self.dist = np.empty((b, t), db.dist_dtype)                      # (B, T)
        if db.label_words is not None:
            self.land = np.empty((b, t, db.label_words.shape[1]),
                                 db.label_words.dtype)                   # (B, T, lw)
        self.rel = np.empty((b, t), bool)                                # (B, T)
        self.keys = np.empty((b, db.n), db.key_dtype)                    # (B, n)
        self.flag = np.empty(db.n, np.uint8)                             # (n,)


def _distance_tile(db: _Database, q_words: np.ndarray, c0: int, c1: int,
                   s: _Scratch) -> np.ndarray:
    """Hamming distances of queries (B, w) to database items c0:c1 -> (B, c1-c0)."""
    nb, m = len(q_words), c1 - c0
    xor, dist = s.xor[:nb, :m], s.dist[:nb, :m]
    np.bitwise_xor(db.words[None, c0:c1], q_words[:, None], out=xor)
    if xor.shape[2] == 1:
        np.bitwise_count(xor[..., 0], out=dist)
    else:
        np.sum(np.bitwise_count(xor), axis=2, dtype=dist.dtype, out=dist)
    return dist


def _relevance_tile(db: _Database, q_label_words: np.ndarray, c0: int, c1: int,
                    s: _Scratch) -> np.ndarray:
    """Whether queries (B, lw) share a label with items c0:c1 -> bool (B, c1-c0)."""
    nb, m = len(q_label_words), c1 - c0
    land, rel = s.land[:nb, :m], s.rel[:nb, :m]
    np.bitwise_and(db.label_words[None, c0:c1], q_label_words[:, None], out=land)
    if land.shape[2] == 1:
        np.not_equal(land[..., 0], 0, out=rel)
    else:
        np.any(land, axis=2, out=rel)
    return rel


def _fill_keys(db: _Database, q_words, q_label_words, s: _Scratch,
               with_index: bool = True) -> np.ndarray:
    """One key per (query, database item) of a query block -> (B, n).

    with_index: distance << (index_bits + 1) | index << 1 | relevant, the
    ranking key (module docstring). Without: distance << 1 | relevant.
    """
    keys = s.keys[:len(q_words)]
    shift = db.index_bits + 1 if with_index else 1
    for c0 in range(0, db.n, db.tile):
        c1 = min(c0 + db.tile, db.n)
        k = keys[:, c0:c1]
        np.left_shift(_distance_tile(db, q_words, c0, c1, s), shift,
                      out=k, dtype=k.dtype)
        if with_index:
            np.bitwise_or(k, db.base[c0:c1], out=k)
        np.bitwise_or(k, _relevance_tile(db, q_label_words, c0, c1, s), out=k)
    return keys


def _top_keys(key_row: np.ndarray, cut: int, ordered: bool = True) -> np.ndarray:
    """The `cut` smallest ranking keys of one query, in place -> (cut,).

    Sorted (rank order) when `ordered`; otherwise only the right set: which
    items make the cut depends on the full tie rule, their order does not.
    """
    if cut < key_row.size:
        key_row.partition(cut - 1)    # the cut smallest keys first, unordered
    head = key_row[:cut]
    if ordered:
        head.sort()
    return head


def _relevant_flags(keys: np.ndarray, s: _Scratch) -> np.ndarray:
    """Bit 0 of each key as bool -> (len(keys),)."""
    flag = s.flag[:keys.size]
    # Writing the AND straight into bytes skips a full-width temporary, and
    # nonzero() / count_nonzero() are fastest on bool.
    np.bitwise_and(keys, 1, out=flag, casting="unsafe")
    return flag.view(bool)


# --------------------------------------------------------------------------- #
# Query-range driver
# --------------------------------------------------------------------------- #

def _num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                        # not available on macOS
        return max(1, os.cpu_count() or 1)


def _run_ranges(n_queries: int, range_fn: Callable[[int, int], T]) -> list[T]:
    """[range_fn(start, stop) for contiguous query ranges], on a thread pool.

    A few ranges per worker balance the load; each range allocates its
    scratch once and walks its queries in blocks of _QUERY_BLOCK.
    """
    workers = _num_workers()
    n_tasks = min(n_queries, 4 * workers) if workers > 1 else 1
    bounds = np.linspace(0, n_queries, n_tasks + 1).round().astype(int)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if len(ranges) == 1:
        return [range_fn(*ranges[0])]
    with ThreadPoolExecutor(max_workers=min(workers, len(ranges))) as pool:
        return list(pool.map(lambda r: range_fn(*r), ranges))


def _blocks(start: int, stop: int):
    """(a, b) query blocks of at most _QUERY_BLOCK covering start:stop."""
    return ((a, min(a + _QUERY_BLOCK, stop)) for a in range(start, stop, _QUERY_BLOCK))


def _prepare(query_codes, db_codes, query_labels, db_labels):
    """Validate the four inputs -> (query words, query label words, _Database)."""
    q, d = _check_code_pair(query_codes, db_codes)
    ql, dl = _check_label_pair(query_labels, db_labels)
    _check_rows("query_labels", ql, "query_codes", q)
    _check_rows("db_labels", dl, "db_codes", d)
    return _pack_words(q), _label_words(ql), _Database(d, dl)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #

def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distance of every query code to every database code.

    XOR + popcount on the packed bytes viewed as machine words (uint64 when a
    code has 8 bytes or more, zero-padded to whole words).

    Returns (nq, ndb) uint8 when bits <= 255, else uint16.
    Raises ValueError on non-uint8, non-2-D, empty or mismatched inputs.
    """
    q, d = _check_code_pair(query_codes, db_codes)
    q_words, db = _pack_words(q), _Database(d)
    out = np.empty((len(q_words), db.n), dtype=db.dist_dtype)

    def fill(start: int, stop: int) -> None:
        s = _Scratch(db)
        for a, b in _blocks(start, stop):
            for c0 in range(0, db.n, db.tile):
                c1 = min(c0 + db.tile, db.n)
                out[a:b, c0:c1] = _distance_tile(db, q_words[a:b], c0, c1, s)

    _run_ranges(len(q_words), fill)
    return out


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(nq, ndb) bool: whether query i and database item j share a label.

    Materialises the full matrix; meant for small inputs and tests (the
    metrics compute relevance one query row at a time).
    """
    ql, dl = _check_label_pair(query_labels, db_labels)
    qw, dw = _label_words(ql), _label_words(dl)
    return (qw[:, None, :] & dw[None, :, :]).any(axis=2)


def mean_average_precision(query_codes: np.ndarray, db_codes: np.ndarray,
                           query_labels: np.ndarray, db_labels: np.ndarray,
                           top_k: int | None = None) -> float:
    """Mean over queries of the average precision of the Hamming ranking.

    Ranking: ascending Hamming distance, ties broken by database order (the
    item that comes first in db_codes ranks first), i.e. a stable sort. This
    tie rule is a project contract.

    top_k: None ranks the whole database; k >= 1 cuts the ranking after k
    items (k > ndb means the whole database).

    AP of one query = (1/R) * sum over the relevant items at ranks r (1-based)
    within the cut of (number of relevant items at ranks <= r) / r, where R is
    the number of relevant items *within the cut* (the usual DCMH / HashGAN
    "MAP@k" definition). A query with no relevant item within the cut has
    AP = 0 and still counts in the mean.
    """
    cut_k = None if top_k is None else _check_k("top_k", top_k)
    q_words, q_label_words, db = _prepare(query_codes, db_codes, query_labels, db_labels)
    cut = db.n if cut_k is None else min(cut_k, db.n)
    hits_so_far = np.arange(1, cut + 1, dtype=np.float64)   # 1..cut, read-only

    def average_precisions(start: int, stop: int) -> np.ndarray:
        s = _Scratch(db)
        ap = np.zeros(stop - start)
        for a, b in _blocks(start, stop):
            keys = _fill_keys(db, q_words[a:b], q_label_words[a:b], s)     # (B, n)
            for i, key_row in enumerate(keys, start=a):
                head = _top_keys(key_row, cut)
                ap[i - start] = _average_precision(
                    np.flatnonzero(_relevant_flags(head, s)), hits_so_far)
        return ap

    aps = np.concatenate(_run_ranges(len(q_words), average_precisions))
    log.debug("MAP of %d queries x %d items, %d bits, cut %d: %.4f",
              len(aps), db.n, db.bits, cut, aps.mean())
    return float(aps.mean())


def _average_precision(rank: np.ndarray, hits_so_far: np.ndarray) -> float:
    """AP of one query from the 0-based ranks (ascending) of its relevant items
    within the cut; hits_so_far = 1, 2, ... (at least as long as rank)."""
    if not rank.size:
        return 0.0
    # the j-th relevant item (1-based) has j hits at rank rank + 1
    return float(np.divide(hits_so_far[:rank.size], rank + 1).sum() / rank.size)


def mean_average_precision_of_ranking(ranking: np.ndarray, query_labels: np.ndarray,
                                      db_labels: np.ndarray) -> float:
    """mean_average_precision of a ranking made elsewhere: ranking (nq, cut) int
    database rows, best first, in the ranking contract's order (an exact FAISS
    search, e.g. on a GPU: hashgan_ray.index.gpu); the same value as
    mean_average_precision(..., top_k=cut) for that ranking."""
    ql, dl = _check_label_pair(query_labels, db_labels)
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != ql.shape[0] or not ranking.size:
        raise ValueError(f"ranking must be (n_queries={ql.shape[0]}, cut >= 1), got {ranking.shape}")
    if ranking.min() < 0 or ranking.max() >= dl.shape[0]:
        raise ValueError(f"ranking holds rows outside 0..{dl.shape[0] - 1}")
    q_label_words, db_label_words = _label_words(ql), _label_words(dl)
    hits_so_far = np.arange(1, ranking.shape[1] + 1, dtype=np.float64)
    aps = [_average_precision(np.flatnonzero((db_label_words[rows] & words).any(axis=1)),
                              hits_so_far)
           for rows, words in zip(ranking, q_label_words)]
    return float(np.mean(aps))


def precision_at_k(query_codes: np.ndarray, db_codes: np.ndarray,
                   query_labels: np.ndarray, db_labels: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant items among the top k) / k.

    Same ranking and tie rule as mean_average_precision. k > ndb is treated
    as k = ndb (the whole database is retrieved).
    """
    k = _check_k("k", k)
    q_words, q_label_words, db = _prepare(query_codes, db_codes, query_labels, db_labels)
    cut = min(k, db.n)

    def precisions(start: int, stop: int) -> np.ndarray:
        s = _Scratch(db)
        hits = np.zeros(stop - start)
        for a, b in _blocks(start, stop):
            keys = _fill_keys(db, q_words[a:b], q_label_words[a:b], s)     # (B, n)
            for i, key_row in enumerate(keys, start=a):
                head = _top_keys(key_row, cut, ordered=False)
                hits[i - start] = np.count_nonzero(_relevant_flags(head, s))
        return hits / cut

    return float(np.concatenate(_run_ranges(len(q_words), precisions)).mean())


def pr_curve(query_codes: np.ndarray, db_codes: np.ndarray,
             query_labels: np.ndarray, db_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Precision and recall of Hamming-radius retrieval, for radius 0..bits.

    At radius r a query retrieves every database item at distance <= r.
    Per query: precision = relevant retrieved / retrieved, recall = relevant
    retrieved / all relevant. Both are averaged over queries, with these edge
    cases:
      * precision[r] averages only the queries that retrieve at least one item
        at radius r; if no query does, precision[r] is NaN (undefined; a plot
        skips the point);
      * recall averages only the queries with at least one relevant item in
        the database; if no query has one, recall is NaN at every radius.

    Returns {"radius": int64 (bits+1,), "precision": float64 (bits+1,),
    "recall": float64 (bits+1,)}.
    """
    q_words, q_label_words, db = _prepare(query_codes, db_codes, query_labels, db_labels)
    nr = db.bits + 1

    def sums(start: int, stop: int) -> np.ndarray:
        s = _Scratch(db)
        # rows: sum of precisions, queries retrieving something,
        #       sum of recalls, queries with a relevant item       (4, nr)
        acc = np.zeros((4, nr))
        for a, b in _blocks(start, stop):
            # 2 * distance + relevant: one histogram holds both counts
            codes = _fill_keys(db, q_words[a:b], q_label_words[a:b], s,
                               with_index=False)                             # (B, n)
            for code_row in codes:
                both = np.bincount(code_row, minlength=2 * nr).reshape(nr, 2)
                retrieved = np.cumsum(both.sum(axis=1))              # (nr,)
                hits = np.cumsum(both[:, 1])                         # (nr,)
                some = retrieved > 0
                acc[0, some] += hits[some] / retrieved[some]
                acc[1] += some
                if hits[-1] > 0:
                    acc[2] += hits / hits[-1]
                    acc[3] += 1
        return acc

    acc = np.sum(_run_ranges(len(q_words), sums), axis=0)           # (4, nr)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(acc[1] > 0, acc[0] / acc[1], np.nan)
        recall = np.where(acc[3] > 0, acc[2] / acc[3], np.nan)
    return {"radius": np.arange(nr, dtype=np.int64), "precision": precision,
            "recall": recall}


def plot_pr_curves(curves: dict[str, dict], path, title: str | None = None) -> None:
    """Write a PNG of precision (y) against recall (x), one line per named curve.

    curves maps a name (e.g. "I->T", "T->I") to a pr_curve() result (at least
    "precision" and "recall"; or lists with None for NaN, as evaluate_model
    gives). The file is written atomically: rendered to a temporary file in the
    same directory, then renamed over `path`.
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict of name -> pr_curve() result")
    for name, curve in curves.items():
        if "precision" not in curve or "recall" not in curve:
            raise ValueError(f"curve {name!r} needs 'precision' and 'recall'")
        if np.shape(curve["precision"]) != np.shape(curve["recall"]):
            raise ValueError(f"curve {name!r}: precision and recall differ in length")

    # Agg through the object API: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        # float: a radius left undefined (NaN, or None in JSON curves) leaves a gap
        ax.plot(np.asarray(curve["recall"], dtype=float),
                np.asarray(curve["precision"], dtype=float), marker=".", label=str(name))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)

    save_figure(fig, path)


def label_codes(labels: np.ndarray) -> np.ndarray:
    """Each pair's multi-hot label vector as its code, packed (L bits, zero-padded
    to whole bytes). Ranked by Hamming distance, these are the label ceiling of
    benchmarks/quality.py: what learned codes of any length would reach if they
    were the labels themselves. Not a strict upper bound (a label vector two bits
    away can share no label), but none of the learned codes here come near it."""
    return np.packbits(np.asarray(labels) > 0, axis=1)
