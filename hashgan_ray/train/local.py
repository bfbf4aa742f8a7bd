"""Training without Ray: the same trainers on a dataset held in memory, in one process.

For studies that run many small cells (benchmarks/quality_sweep.py) and for
machines without Ray (the lent GPU machine: torch and pyarrow, no Ray). The
per-worker loop of train/loop.py is the one that `hashgan-ray train` runs; this
loop differs only in where batches come from (an in-memory permutation instead
of Ray Data's stream) and in having one process.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from hashgan_ray.data.format import DatasetMeta, read_meta
from hashgan_ray.data.loading import BatchSpec, iter_batches
from hashgan_ray.data.splits import labeled_ids, mark_labeled
from hashgan_ray.train.augment import random_shift
from hashgan_ray.train.methods import build_model, build_trainer, trainer_class


def load_split(data_dir, split: str, image_size: int | None = None,
               meta: DatasetMeta | None = None) -> dict[str, np.ndarray]:
    """Every decoded pair of `split`: id (n,), image (n, 3, S, S) uint8, text (n, V),
    labels (n, L). 1,500 pairs at 64 px are 18 MB of images."""
    spec = BatchSpec.from_meta(meta or read_meta(data_dir), image_size)
    parts = list(iter_batches(data_dir, split, 512, spec))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def train_in_memory(cfg, *, device="cpu", train: dict | None = None, on_epoch=None,
                    meta: DatasetMeta | None = None):
    """Train `cfg` (a TrainConfig) on its train split in this process; return the model.

    `train`: the split from `load_split`, to share one decode between many runs.
    `on_epoch(epoch, model, stats)`: called after each epoch (model in train mode).
    `meta`: the dataset's, where the caller has read it.
    """
    device = torch.device(device)
    meta = meta or read_meta(cfg.data)
    train = train if train is not None else load_split(cfg.data, "train", cfg.image_size, meta)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, meta).to(device)
    train_ids = np.sort(train["id"])
    trainer = build_trainer(cfg, model, meta=meta, train_ids=train_ids)
    if cfg.labeled_fraction < 1:
        train = mark_labeled(dict(train), labeled_ids(train_ids, cfg.labeled_fraction, cfg.seed),
                             keep_unlabeled=trainer_class(cfg.method).uses_unlabeled)
    tensors = {k: torch.as_tensor(v, device=device) for k, v in train.items()}
    n = len(tensors["id"])
    order = torch.Generator().manual_seed(cfg.seed)
    shifts = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        model.train()
        started, sums, steps = time.perf_counter(), {}, 0
        perm = torch.randperm(n, generator=order).to(device)
        for step, start in enumerate(range(0, n - cfg.batch_size + 1, cfg.batch_size)):
            rows = perm[start:start + cfg.batch_size]
            batch = {k: v[rows] for k, v in tensors.items()}
            batch["image"] = random_shift(batch["image"], cfg.augment_shift, shifts)
            stats = trainer.step(step, batch)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        trainer.end_epoch()
        stats = {k: v / max(steps, 1) for k, v in sums.items()}
        stats["seconds"] = time.perf_counter() - started
        if on_epoch is not None:
            on_epoch(epoch, model, stats)
    model.eval()
    return model
