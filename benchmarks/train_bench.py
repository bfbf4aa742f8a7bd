"""Training throughput: Ray Train against a plain PyTorch loop, same steps, same data.

    .venv/bin/python benchmarks/train_bench.py [--pairs 2000] [--epochs 3] [--threads 2]

Prints samples/s of
  * a plain loop: decode (hashgan_ray.data.loading) + the same E/D and G steps,
    in this process, `--threads` torch threads;
  * Ray Train, 1 worker with `--threads` CPUs (Ray gives its worker that many
    torch threads), data streamed by Ray Data;
  * Ray Train, 2 workers (DDP over gloo) with `--threads`/2 CPUs each;
and the ratios Ray/plain (goal >= 0.9) and 2 workers/1 worker. Each figure is
the last epoch's (the first pays for start-up); validation is not timed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.data.format import read_meta  # noqa: E402
from hashgan_ray.data.loading import iter_batches  # noqa: E402
from hashgan_ray.data.synth import generate  # noqa: E402
from hashgan_ray.train.methods import build_model, single_process, trainer_class  # noqa: E402


def plain_loop(cfg: TrainConfig, threads: int) -> float:
    """samples/s of the last epoch of a plain single-process loop."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, read_meta(cfg.data))
    trainer = trainer_class(cfg.method)(model, cfg, wrap=single_process)
    rate = 0.0
    for _ in range(cfg.epochs):
        model.train()
        samples, started = 0, time.perf_counter()
        for step, raw in enumerate(iter_batches(cfg.data, "train", cfg.batch_size)):
            if len(raw["id"]) < cfg.batch_size:
                break                                        # drop_last, as Ray's loop does
            batch = {k: torch.as_tensor(v) for k, v in raw.items()}
            trainer.step(step, batch)
            samples += len(batch["id"])
        trainer.end_epoch()
        rate = samples / (time.perf_counter() - started)
    return rate


def ray_train(cfg: TrainConfig) -> float:
    from hashgan_ray.train.loop import fit

    return fit(cfg).metrics["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, pairs=args.pairs, seed=0)
        base = dict(data=str(data), epochs=args.epochs, bits=32, backbone="small",
                    text_hidden=1024, text_features=512, batch_size=args.batch_size,
                    val_database=100)
        plain = plain_loop(TrainConfig(out=f"{tmp}/plain", **base), args.threads)
        print(f"plain PyTorch loop, {args.threads} threads:        {plain:8.1f} samples/s", flush=True)

        ray.init(address="local", num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
        try:
            one = ray_train(TrainConfig(out=f"{tmp}/one", workers=1,
                                        cpus_per_worker=args.threads, **base))
            print(f"Ray Train, 1 worker x {args.threads} CPUs:         {one:8.1f} samples/s", flush=True)
            two = ray_train(TrainConfig(out=f"{tmp}/two", workers=2,
                                        cpus_per_worker=max(1, args.threads // 2), **base))
            print(f"Ray Train, 2 workers x {max(1, args.threads // 2)} CPU(s):      {two:8.1f} samples/s")
        finally:
            ray.shutdown()
    print(f"ratio Ray Train (1 worker) / plain loop: {one / plain:.2f}  (goal >= 0.9)")
    print(f"ratio 2 workers / 1 worker:              {two / one:.2f}  "
          f"(same {args.threads} cores in total)")


if __name__ == "__main__":
    main()
