"""Retrieval quality of `train`'s defaults against what the data allows, in one run.

    .venv/bin/python benchmarks/quality.py [--pairs 3000] [--epochs 15] [--bits 32] \
        [--workers 2] [--batch-size 32] [--seeds 0 1 2] [--methods hashgan supervised] \
        [--set attention=both ...]

On the demo's dataset (synthetic, --pairs pairs, seed 0) and in the demo's budget
(15 epochs, 2 Ray Train workers x 32, 32 bits), every method in --methods is a
real `hashgan_ray.train.loop.fit` run with `train`'s defaults (and the --set
overrides), evaluated on the whole database as `hashgan-ray eval` does. Beside
them, in the same run: the label ceiling (each pair's labels as its code,
metrics.label_codes), the label-supervised reference (method `supervised`,
train/methods/supervised.py: same networks, data, epochs) and random codes. Prints
MAP mean ± standard error over seeds and each method as a fraction of the
ceiling and of the supervised reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.data.synth import generate  # noqa: E402
from hashgan_ray.evaluation import metrics  # noqa: E402
from hashgan_ray.evaluation.evaluate import retrieval_map  # noqa: E402
from hashgan_ray.experiment.report import mean_se  # noqa: E402
from hashgan_ray.model.checkpoint import load_model  # noqa: E402
from hashgan_ray.model.encode import encode_split  # noqa: E402


def fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f} ± {se:.3f}"


def reference_maps(query, database, bits: int, seed: int) -> dict[str, float]:
    """The label ceiling and random codes on the same queries and database."""
    rng = np.random.default_rng(seed)
    rand_q = np.packbits(rng.integers(0, 2, (len(query.ids), bits)), axis=1)
    rand_d = np.packbits(rng.integers(0, 2, (len(database.ids), bits)), axis=1)
    return {
        "ceiling": metrics.mean_average_precision(
            metrics.label_codes(query.labels), metrics.label_codes(database.labels),
            query.labels, database.labels),
        "random": metrics.mean_average_precision(rand_q, rand_d, query.labels, database.labels),
    }


def parse_overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["hashgan", "supervised"])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="TrainConfig overrides for every method, e.g. attention=both")
    parser.add_argument("--json", help="write every run's result here")
    args = parser.parse_args()
    if "supervised" not in args.methods:
        args.methods.append("supervised")
    overrides = parse_overrides(args.set)

    import ray

    from hashgan_ray.train.loop import fit

    ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
             log_to_driver=False)
    runs, refs = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, pairs=args.pairs, seed=0)
        for seed in args.seeds:
            for method in args.methods:
                out = Path(tmp) / f"run-{method}-{seed}"
                t0 = time.perf_counter()
                fit(TrainConfig(**{"data": str(data), "out": str(out), "epochs": args.epochs,
                                   "bits": args.bits, "workers": args.workers,
                                   "batch_size": args.batch_size, "val_database": 200,
                                   "seed": seed, "method": method, **overrides}))
                model, _ = load_model(out / "model")
                query = encode_split(model, data, "query")
                database = encode_split(model, data, "database")
                runs.append({"method": method, "seed": seed, "train_s": time.perf_counter() - t0,
                             **retrieval_map(query, database)})
                print(f"  {method:<10} seed {seed}  I->T {runs[-1]['map_i2t']:.3f}  "
                      f"T->I {runs[-1]['map_t2i']:.3f}  ({runs[-1]['train_s']:.0f} s)", flush=True)
            refs.append(reference_maps(query, database, args.bits, seed))
    ray.shutdown()

    def of(method, key):
        return [r[key] for r in runs if r["method"] == method]

    ceiling = statistics.mean(r["ceiling"] for r in refs)
    sup = {k: statistics.mean(of("supervised", k)) for k in ("map_i2t", "map_t2i")}
    print(f"\nsynthetic {args.pairs} pairs, {args.epochs} epochs, {args.bits} bits, "
          f"{args.workers} workers x {args.batch_size}, seeds {args.seeds}, overrides {overrides}; "
          f"{(time.perf_counter() - started) / 60:.0f} min")
    print("| codes | MAP I->T | MAP T->I | of the ceiling | of the supervised reference |")
    print("|---|---|---|---|---|")
    print(f"| label ceiling (labels as codes) | {ceiling:.3f} | {ceiling:.3f} | 1.00 | – |")
    for method in args.methods:
        i2t, t2i = of(method, "map_i2t"), of(method, "map_t2i")
        print(f"| {method} | {fmt(i2t)} | {fmt(t2i)} | "
              f"{statistics.mean(i2t) / ceiling:.2f} / {statistics.mean(t2i) / ceiling:.2f} | "
              f"{statistics.mean(i2t) / sup['map_i2t']:.2f} / "
              f"{statistics.mean(t2i) / sup['map_t2i']:.2f} |")
    rand = statistics.mean(r["random"] for r in refs)
    print(f"| random {args.bits}-bit codes | {rand:.3f} | {rand:.3f} | {rand / ceiling:.2f} | – |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "references": refs},
                                              indent=1))


if __name__ == "__main__":
    main()
