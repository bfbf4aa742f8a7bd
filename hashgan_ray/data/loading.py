"""Rows to model inputs: the one decoder that training, encoding and serving use.

`decode_batch` is plain numpy so it runs inside Ray Data's `map_batches`
(hashgan_ray.data.ray_data) and in plain PyTorch loops (`iter_batches`) alike.
Images stay uint8 (N, 3, S, S) until the model normalises them: four times less
to move through Ray's object store than float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hashgan_ray.data.format import DatasetMeta, iter_pairs, read_meta
from hashgan_ray.data.images import decode_rgb


@dataclass(frozen=True)
class BatchSpec:
    """What decoding needs to know about a dataset."""
    image_size: int
    vocab_size: int
    num_labels: int
    image_column: str = "image"

    @classmethod
    def from_meta(cls, meta: DatasetMeta, image_size: int | None = None) -> "BatchSpec":
        return cls(image_size or meta.image_size, meta.vocab_size, meta.num_labels,
                   meta.image_column)

    @property
    def columns(self) -> list[str]:
        return ["id", self.image_column, "text", "labels"]

    @property
    def row_bytes(self) -> int:
        """Bytes of one decoded row: uint8 image, float32 word counts and labels."""
        return 3 * self.image_size ** 2 + 4 * (self.vocab_size + self.num_labels)


def bag_of_indices(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """(n, width) float32 counts: row i counts each index in rows[i].
    Serves bags of words (a repeated word id is a count) and multi-hot labels."""
    out = np.zeros((len(rows), width), dtype=np.float32)
    lengths = [len(r) for r in rows]
    if sum(lengths):
        cols = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        np.add.at(out, (np.repeat(np.arange(len(rows)), lengths), cols), 1.0)
    return out


def _image_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return Path(value).read_bytes()        # image_path column


def decode_batch(batch: dict, spec: BatchSpec) -> dict[str, np.ndarray]:
    """{id, image|image_path, text, labels} rows -> arrays:
    id (n,) int64, image (n, 3, S, S) uint8, text (n, V) float32, labels (n, L) float32."""
    size = spec.image_size
    images = np.stack([decode_rgb(_image_bytes(v), size) for v in batch[spec.image_column]])
    return {
        "id": np.asarray(batch["id"], dtype=np.int64),
        "image": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),   # NHWC -> NCHW
        "text": bag_of_indices(batch["text"], spec.vocab_size),
        "labels": bag_of_indices(batch["labels"], spec.num_labels),
    }


def iter_batches(data_dir, split: str | None, batch_size: int,
                 spec: BatchSpec | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Decoded batches of `split` in storage order, without Ray."""
    spec = spec or BatchSpec.from_meta(read_meta(data_dir))
    for rb in iter_pairs(data_dir, split, columns=spec.columns, batch_size=batch_size):
        yield decode_batch(rb.to_pydict(), spec)
