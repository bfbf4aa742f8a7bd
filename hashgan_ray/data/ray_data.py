"""A dataset split as a Ray Data pipeline of decoded batches (read -> decode)."""
from __future__ import annotations

import ray.data
from ray.data.expressions import col

from hashgan_ray.data.format import pair_files, read_meta
from hashgan_ray.data.loading import BatchSpec, decode_batch
from hashgan_ray.data.splits import rows_of_split


def read_split(data_dir, split: str | None, *, spec: BatchSpec | None = None,
               decode_batch_size: int = 64, task_cpus: float | None = None) -> ray.data.Dataset:
    """Ray Dataset of decoded rows of `split` (None: all rows): columns id, image
    (3, S, S) uint8, text (V,) float32, labels (L,) float32.

    The split filter is an expression, which Ray Data pushes down into the
    Parquet scan, so rows of other splits are skipped before decoding.

    `task_cpus` (None: Ray Data's 1 CPU per task) is what one read task and one
    decode task reserve together: a quarter for the read, which runs one task at
    a time, the rest for a decode task. Reading and decoding are separate tasks
    (Ray 2.60 does not fuse a filtered read with a batched map), and a read task
    that waits for room downstream keeps its CPU; with 1 CPU each, one such read
    on the last free CPU kept every decode task from starting (the index stage
    of benchmarks/scale.py stalled for 15 minutes at NUS-WIDE's size).
    """
    spec = spec or BatchSpec.from_meta(read_meta(data_dir))
    files = [str(f) for f in pair_files(data_dir)]
    read_args = {} if task_cpus is None else {"num_cpus": task_cpus / 4, "concurrency": 1}
    ds = ray.data.read_parquet(files, **read_args).select_columns(spec.columns + ["split"])
    if split is not None:
        ds = ds.filter(expr=col("split").is_in(list(rows_of_split(split))))
    decode_args = {} if task_cpus is None else {"num_cpus": task_cpus * 3 / 4}
    return ds.map_batches(decode_batch, fn_kwargs={"spec": spec}, batch_size=decode_batch_size,
                          batch_format="numpy", **decode_args)
