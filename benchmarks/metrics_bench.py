"""Time mean_average_precision on a NUS-WIDE-sized random problem.

Run from the repository root:

    .venv/bin/python benchmarks/metrics_bench.py

Options: --queries 2100 --database 193734 --bits 64 --labels 21 --seed 0
--baseline-queries 100. Codes are uniform random bits; every item has 1-3
distinct labels out of --labels (roughly like NUS-WIDE's 21 concepts).

The fast path is timed on the whole protocol (all queries x the whole database,
top_k=None, plus MAP@500 for reference). The baseline is a straightforward
per-query implementation (popcount distances, stable argsort, cumulative
precision); it is slow, so it is timed on --baseline-queries queries and the
per-query time is extrapolated to --queries. Both must give the same MAP on
those queries.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashgan_ray.evaluation.metrics import _num_workers, mean_average_precision  # noqa: E402

GOAL_S = 5.0


def random_labels(rng: np.random.Generator, n: int, n_labels: int) -> np.ndarray:
    """(n, n_labels) uint8 multi-hot, each row with 1-3 distinct labels."""
    per_row = rng.integers(1, 4, size=n)                              # (n,)
    order = np.argsort(rng.random((n, n_labels)), axis=1)[:, :3]      # 3 distinct labels
    labels = np.zeros((n, n_labels), dtype=np.uint8)
    rows = np.arange(n)
    for j in range(3):
        keep = per_row > j
        labels[rows[keep], order[keep, j]] = 1
    return labels


def baseline_map(q_codes, db_codes, q_labels, db_labels) -> float:
    """Per query: popcount distances, stable argsort, cumulative precision."""
    word = np.uint64 if q_codes.shape[1] % 8 == 0 else np.uint8
    q_words, db_words = q_codes.view(word), db_codes.view(word)
    db_labels = db_labels.astype(np.int32)
    aps = []
    for qw, ql in zip(q_words, q_labels):
        dist = np.bitwise_count(db_words ^ qw).sum(axis=1)
        order = np.argsort(dist, kind="stable")
        rel = (db_labels @ ql.astype(np.int32) > 0)[order]
        if not rel.any():
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        ranks = np.arange(1, len(rel) + 1)
        aps.append(float(np.sum(hits[rel] / ranks[rel]) / hits[-1]))
    return float(np.mean(aps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2100)
    ap.add_argument("--database", type=int, default=193734)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--labels", type=int, default=21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-queries", type=int, default=100)
    args = ap.parse_args(argv)
    if args.bits % 8:
        ap.error("--bits must be a multiple of 8")

    rng = np.random.default_rng(args.seed)
    nq, ndb, nbytes = args.queries, args.database, args.bits // 8
    q_codes = rng.integers(0, 256, size=(nq, nbytes), dtype=np.uint8)
    db_codes = rng.integers(0, 256, size=(ndb, nbytes), dtype=np.uint8)
    q_labels = random_labels(rng, nq, args.labels)
    db_labels = random_labels(rng, ndb, args.labels)
    print(f"random problem: {nq} queries, {ndb} database items, {args.bits} bits, "
          f"{args.labels} labels, seed {args.seed}; {_num_workers()} worker thread(s)")

    t0 = time.perf_counter()
    full_map = mean_average_precision(q_codes, db_codes, q_labels, db_labels)
    fast_s = time.perf_counter() - t0
    verdict = "met" if fast_s < GOAL_S else "NOT met"
    print(f"full protocol: {nq} x {ndb} x {args.bits} bits: {fast_s:.2f} s "
          f"(goal < {GOAL_S:g} s: {verdict}), MAP {full_map:.4f}")

    t0 = time.perf_counter()
    map500 = mean_average_precision(q_codes, db_codes, q_labels, db_labels, top_k=500)
    print(f"top-500 MAP, same data: {time.perf_counter() - t0:.2f} s, MAP@500 {map500:.4f}")

    m = min(args.baseline_queries, nq)
    sub = (q_codes[:m], db_codes, q_labels[:m], db_labels)
    t0 = time.perf_counter()
    base_map = baseline_map(*sub)
    base_s = (time.perf_counter() - t0) * nq / m
    fast_sub_map = mean_average_precision(*sub)
    assert abs(base_map - fast_sub_map) < 1e-9, (base_map, fast_sub_map)
    how = "measured" if m == nq else f"measured on {m} queries, extrapolated"
    print(f"baseline (per-query argsort), {how}: {base_s:.1f} s "
          f"(MAP on those {m} queries: {base_map:.6f}, same as fast path)")
    print(f"speed-up: {base_s / fast_s:.1f}x")
    return 0 if fast_s < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
