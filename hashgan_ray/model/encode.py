"""Encoding pairs into packed binary codes with a model (no Ray): the one
encoding step of evaluation, validation during training, the index build and
the benchmarks, below all of them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hashgan_ray.data.format import DatasetMeta, iter_pairs, read_meta
from hashgan_ray.data.loading import BatchSpec, decode_batch
from hashgan_ray.model.hashgan import HashGAN, pack_codes


@dataclass
class Encoded:
    ids: np.ndarray           # (n,) int64 dataset ids
    image_codes: np.ndarray   # (n, bits/8) uint8, packed
    text_codes: np.ndarray    # (n, bits/8) uint8, packed
    labels: np.ndarray        # (n, L) float32 multi-hot



@torch.no_grad()
def encode_arrays(model: HashGAN, image: np.ndarray, text: np.ndarray,
                  device="cpu", *, oracle=None, ids: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images uint8 (n, 3, S, S) and word counts (n, V) -> packed image
    and text codes, each uint8 (n, bits/8), from the attended features only.
    The one encoding step of evaluation, the index build and the benchmarks.
    `oracle` (data/oracle.py, with the pairs' `ids`): attended by the true masks,
    as the oracle setting trains."""
    image, text = torch.as_tensor(image, device=device), torch.as_tensor(text, device=device)
    if oracle is not None:
        codes = model.net(image, text, *oracle.forward_masks(torch.as_tensor(ids), text))
        return pack_codes(codes["img"]), pack_codes(codes["txt"])
    return pack_codes(model.encode_image(image)), pack_codes(model.encode_text(text))


def batch_spec(model: HashGAN, data_dir, meta: DatasetMeta | None) -> BatchSpec:
    """How to decode the pairs for `model` (its image size)."""
    return BatchSpec.from_meta(meta or read_meta(data_dir), model.args["image_size"])


@torch.no_grad()
def encode_split(model: HashGAN, data_dir, split: str, *, device="cpu", batch_size: int = 256,
                 only_ids: np.ndarray | None = None, oracle=None,
                 meta: DatasetMeta | None = None) -> Encoded:
    """Codes of every pair of `split` (or of `only_ids` in it), attended features
    only (by the true masks with an `oracle`, see encode_arrays)."""
    spec = batch_spec(model, data_dir, meta)
    wanted = pa.array(only_ids) if only_ids is not None else None
    model.eval()
    parts: list[tuple] = []
    for rb in iter_pairs(data_dir, split, columns=spec.columns, batch_size=batch_size):
        if wanted is not None:
            rb = rb.filter(pc.is_in(rb.column("id"), wanted))
            if not rb.num_rows:
                continue
        batch = decode_batch(rb.to_pydict(), spec)
        parts.append((batch["id"], *encode_arrays(model, batch["image"], batch["text"], device,
                                                  oracle=oracle, ids=batch["id"]),
                      batch["labels"]))
    if not parts:
        raise ValueError(f"{data_dir}: split {split!r} has no rows to encode")
    return Encoded(*(np.concatenate(cols) for cols in zip(*parts)))
