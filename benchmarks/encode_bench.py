"""Database encoding throughput: the Ray Data job of `index build` against a plain
PyTorch loop, same model, same data.

    .venv/bin/python benchmarks/encode_bench.py [--pairs 4000] [--cpus 2] [--bits 64]

Prints pairs/s of
  * a plain loop in this process: iter_batches (decode) + the encoder
    (hashgan_ray.model.encode.encode_arrays), torch with `--cpus` threads;
  * the Ray Data job (hashgan_ray.index.build.encode_job: read -> decode ->
    map_batches over an actor pool, one single-threaded actor per CPU) on a local
    Ray with `--cpus` CPUs, end to end (actor start-up included) and from its
    first batch on (the steady state that a 193,734-pair database sees);
and the ratios Ray/plain (goal >= 0.9 on CPU). The model is untrained (speed
does not depend on the weights) with the demo's text layers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hashgan_ray.data.format import read_meta  # noqa: E402
from hashgan_ray.data.loading import iter_batches  # noqa: E402
from hashgan_ray.data.synth import generate  # noqa: E402
from hashgan_ray.model.checkpoint import load_model, write_model_files  # noqa: E402
from hashgan_ray.model.encode import encode_arrays  # noqa: E402
from hashgan_ray.model.hashgan import HashGAN  # noqa: E402


def make_model(out: Path, data: Path, bits: int) -> Path:
    meta = read_meta(data)
    torch.manual_seed(0)
    model = HashGAN(bits=bits, vocab_size=meta.vocab_size, text_hidden=1024, text_features=512)
    out.mkdir(parents=True)
    write_model_files(out, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config={})
    return out


def plain_loop(model_dir: Path, data: Path, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model, _ = load_model(model_dir)
    n, started = 0, time.perf_counter()
    for batch in iter_batches(data, "database", batch_size):
        encode_arrays(model, batch["image"], batch["text"])
        n += len(batch["id"])
    return n / (time.perf_counter() - started)


def ray_job(model_dir: Path, data: Path, batch_size: int, cpus: int) -> tuple[float, float]:
    import ray

    from hashgan_ray.index.build import encode_job

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        started = time.perf_counter()
        first = None
        n = n_after_first = 0
        ds = encode_job(model_dir, data, "database", batch_size=batch_size)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if first is None:
                first = time.perf_counter()
            else:
                n_after_first += len(batch["id"])
            n += len(batch["id"])
        end = time.perf_counter()
    finally:
        ray.shutdown()
    return n / (end - started), n_after_first / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = Path(tmp) / "data", Path(tmp) / "model"
        generate(data, pairs=args.pairs, seed=0)
        make_model(model_dir, data, args.bits)
        n = read_meta(data).split_size("database")
        print(f"{n} database pairs, 64x64 images, {args.bits} bits, {args.cpus} CPUs "
              f"(load average {os.getloadavg()[0]:.1f} before)")
        plain = plain_loop(model_dir, data, args.batch_size, args.cpus)
        print(f"plain PyTorch loop ({args.cpus} threads): {plain:8.1f} pairs/s")
        total, steady = ray_job(model_dir, data, args.batch_size, args.cpus)
        print(f"Ray Data job, end to end:            {total:8.1f} pairs/s  "
              f"ratio {total / plain:.2f}")
        print(f"Ray Data job, from its first batch:  {steady:8.1f} pairs/s  "
              f"ratio {steady / plain:.2f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
