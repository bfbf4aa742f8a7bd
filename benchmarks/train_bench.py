"""Training throughput: Ray Train against a plain PyTorch loop, same steps, same data.

    .venv/bin/python benchmarks/train_bench.py [--pairs 2000] [--epochs 6] [--threads 2]

Prints samples/s of
  * a plain loop: the same E/D and G steps in this process, `--threads` torch
    threads, on the train split decoded once before training (what Ray's loop
    does with its object-store cache; the baseline of the goal), and the same
    loop decoding the PNGs (hashgan_ray.data.loading) in every epoch;
  * Ray Train, 1 worker with `--threads` CPUs (Ray gives its worker that many
    torch threads), data streamed by Ray Data;
  * Ray Train, 2 workers (DDP over gloo) with `--threads`/2 CPUs each;
and the ratios Ray/plain (goal >= 0.9) and 2 workers/1 worker. Each figure is
the median of the epochs after the first (which pays for start-up): an epoch
is a few seconds, and one epoch's rate moves by +-20% on a shared machine.
Validation is not timed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from ray.train import UserCallback  # noqa: E402

from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.data.format import read_meta  # noqa: E402
from hashgan_ray.data.loading import iter_batches  # noqa: E402
from hashgan_ray.data.synth import generate  # noqa: E402
from hashgan_ray.train.methods import build_model, build_trainer  # noqa: E402


def decoded_batches(cfg: TrainConfig):
    """Full batches of the train split as tensors (drop_last, as Ray's loop does)."""
    for raw in iter_batches(cfg.data, "train", cfg.batch_size):
        if len(raw["id"]) == cfg.batch_size:
            yield {k: torch.as_tensor(v) for k, v in raw.items()}


def plain_loop(cfg: TrainConfig, threads: int, decode_every_epoch: bool) -> list[float]:
    """samples/s of each epoch of a plain single-process loop that decodes the
    PNGs in every epoch, or once before training (as Ray's loop caches the
    decoded train split in the object store: the same work per epoch)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, read_meta(cfg.data))
    trainer = build_trainer(cfg, model)
    cached = None if decode_every_epoch else list(decoded_batches(cfg))
    rates = []
    for _ in range(cfg.epochs):
        model.train()
        samples, started = 0, time.perf_counter()
        for step, batch in enumerate(decoded_batches(cfg) if cached is None else cached):
            trainer.step(step, batch)
            samples += len(batch["id"])
        trainer.end_epoch()
        rates.append(samples / (time.perf_counter() - started))
    return rates


class EpochRates(UserCallback):
    """Appends each epoch's samples/s to a file: the callback runs in Ray
    Train's controller actor, on this machine, not in this process."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            f.write(f"{metrics[0]['samples_per_s']}\n")


def ray_train(cfg: TrainConfig) -> list[float]:
    from hashgan_ray.train.loop import fit

    path = Path(cfg.out) / "epoch_rates.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    fit(cfg, callbacks=[EpochRates(str(path))])
    return [float(line) for line in path.read_text().split()]


def steady(rates: list[float]) -> float:
    """Median samples/s of the epochs after the first."""
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
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
        plain = steady(plain_loop(TrainConfig(out=f"{tmp}/plain", **base), args.threads,
                                  decode_every_epoch=False))
        print(f"plain loop, decoded once, {args.threads} threads:  {plain:8.1f} samples/s", flush=True)
        plain_decoding = steady(plain_loop(TrainConfig(out=f"{tmp}/plain", **base), args.threads,
                                           decode_every_epoch=True))
        print(f"plain loop, decoding, {args.threads} threads:      {plain_decoding:8.1f} samples/s",
              flush=True)

        ray.init(address="local", num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
        try:
            one = steady(ray_train(TrainConfig(out=f"{tmp}/one", workers=1,
                                               cpus_per_worker=args.threads, **base)))
            print(f"Ray Train, 1 worker x {args.threads} CPUs:         {one:8.1f} samples/s", flush=True)
            two = steady(ray_train(TrainConfig(out=f"{tmp}/two", workers=2,
                                               cpus_per_worker=max(1, args.threads // 2), **base)))
            print(f"Ray Train, 2 workers x {max(1, args.threads // 2)} CPU(s):      {two:8.1f} samples/s")
        finally:
            ray.shutdown()
    print(f"ratio Ray Train (1 worker) / plain loop decoded once: {one / plain:.2f}  (goal >= 0.9)")
    print(f"ratio Ray Train (1 worker) / plain loop decoding:     {one / plain_decoding:.2f}")
    print(f"ratio 2 workers / 1 worker:              {two / one:.2f}  "
          f"(same {args.threads} cores in total)")


if __name__ == "__main__":
    main()
