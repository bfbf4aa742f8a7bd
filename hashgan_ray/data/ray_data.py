"""A dataset split as a Ray Data pipeline of decoded batches (read -> decode)."""
from __future__ import annotations

import ray.data
from ray.data.expressions import col

from hashgan_ray.data.format import pair_files, read_meta
from hashgan_ray.data.loading import BatchSpec, decode_batch
from hashgan_ray.data.splits import rows_of_split


def read_split(data_dir, split: str | None, *, spec: BatchSpec | None = None,
               decode_batch_size: int = 64,
               rows_per_block: int | None = None) -> ray.data.Dataset:
    """Ray Dataset of decoded rows of `split` (None: all rows): columns id, image
    (3, S, S) uint8, text (V,) float32, labels (L,) float32.

    The split filter is an expression, which Ray Data pushes down into the
    Parquet scan, so rows of other splits are skipped before decoding.
    `rows_per_block` re-blocks the rows (a streaming repartition) before
    decoding, so that more workers than there are Parquet files share the work.
    """
    spec = spec or BatchSpec.from_meta(read_meta(data_dir))
    files = [str(f) for f in pair_files(data_dir)]
    ds = ray.data.read_parquet(files).select_columns(spec.columns + ["split"])
    if split is not None:
        ds = ds.filter(expr=col("split").is_in(list(rows_of_split(split))))
    if rows_per_block:
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds.map_batches(decode_batch, fn_kwargs={"spec": spec},
                          batch_size=decode_batch_size, batch_format="numpy")
