"""Retrieval quality on the synthetic default: bits x direction x attention setting,
against the MAP of random codes on the same queries and database.

    .venv/bin/python benchmarks/quality.py [--pairs 3000] [--epochs 10] [--bits 16 32] \
        [--attention both image text none] [--seeds 0]

Each cell is a real `hashgan_ray.train.loop.fit` run (Ray Train, 1 worker)
followed by the full-database evaluation of `hashgan-ray eval`. Prints a
Markdown table (mean ± spread over seeds when several are given).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from hashgan_ray import metrics  # noqa: E402
from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.data.synth import generate  # noqa: E402
from hashgan_ray.evaluate import encode_split, retrieval_map  # noqa: E402
from hashgan_ray.model.checkpoint import load_model  # noqa: E402


def random_code_map(query, database, bits: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    q = np.packbits(rng.integers(0, 2, (len(query.ids), bits)), axis=1)
    d = np.packbits(rng.integers(0, 2, (len(database.ids), bits)), axis=1)
    return metrics.mean_average_precision(q, d, query.labels, database.labels)


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--attention", nargs="+", default=["both", "image", "text", "none"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, pairs=args.pairs, seed=0)
        from hashgan_ray.train.loop import fit

        for bits in args.bits:
            for attention in args.attention:
                i2t, t2i, rnd = [], [], []
                for seed in args.seeds:
                    out = Path(tmp) / f"run-{bits}-{attention}-{seed}"
                    fit(TrainConfig(data=str(data), out=str(out), epochs=args.epochs, bits=bits,
                                    attention=attention, seed=seed, lr=args.lr, workers=1,
                                    cpus_per_worker=2, text_hidden=1024, text_features=512,
                                    val_database=200))
                    model, _ = load_model(out / "model")
                    query = encode_split(model, data, "query")
                    database = encode_split(model, data, "database")
                    m = retrieval_map(query, database)
                    i2t.append(m["map_i2t"])
                    t2i.append(m["map_t2i"])
                    rnd.append(random_code_map(query, database, bits, seed))
                row = f"| {bits} | {attention} | {fmt(i2t)} | {fmt(t2i)} | {fmt(rnd)} |"
                rows.append(row)
                print(row, flush=True)
    ray.shutdown()
    print(f"\nsynthetic {args.pairs} pairs, {args.epochs} epochs, lr {args.lr}, seeds {args.seeds}")
    print("| bits | attention | MAP I->T | MAP T->I | random codes |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
