"""Oracle masks: where the label evidence of each pair truly is.

The synthetic generator knows it, so it writes `oracle.parquet` beside
`pairs/` (a side file: the pairs and meta.json keep the data contract, and a
default dataset's files stay what they were before oracles existed):

    id           int64
    boxes        list<int16>   label patterns as y0, x0, y1, x1 (pixels of the
                               stored image, end exclusive), 4 values per pattern
    label_words  list<int32>   the pair's words that name one of its labels

`attention = "oracle"` trains and evaluates HashGAN with these masks fixed in
place of the attention module G: the upper bound of what attention can give.

* Image: the mask over the backbone's H×W feature maps is 1 at a position
  whose share of the image (rows h·S/H .. (h+1)·S/H, columns likewise)
  overlaps a label pattern, 0 elsewhere. The small backbone's maps are S/8 a
  side, so an 8-pixel pattern at 64 px covers 1 to 4 positions.
* Text: HashGAN's text mask acts on the d learned features, which are not
  words, so no feature is "the label's" by construction. The oracle therefore
  splits the words instead: attended features = E^T(bag of the pair's label
  words), unattended = E^T(bag of its other words). This is the separation
  a perfect text attention would reach (the unattended code sees only noise),
  expressed where the truth is known.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hashgan_ray.data.format import DataError, DatasetMeta, read_meta

ORACLE_FILE = "oracle.parquet"
SCHEMA = pa.schema([("id", pa.int64()), ("boxes", pa.list_(pa.int16())),
                    ("label_words", pa.list_(pa.int32()))])


def write_oracle(directory, ids: Sequence[int], boxes: Sequence[Sequence[int]],
                 label_words: Sequence[Sequence[int]]) -> Path:
    """Write `directory/oracle.parquet` (the directory is the dataset's
    temporary one, moved into place with the rest)."""
    path = Path(directory) / ORACLE_FILE
    table = pa.Table.from_pydict({"id": list(ids), "boxes": list(boxes),
                                  "label_words": list(label_words)}, schema=SCHEMA)
    pq.write_table(table, path)
    return path


class Oracle:
    """A dataset's oracle masks, held in memory (a few integers per pair)."""

    def __init__(self, data_dir, meta: DatasetMeta | None = None):
        """`meta`: the dataset's, where the caller has read it already."""
        path = Path(data_dir) / ORACLE_FILE
        if not path.is_file():
            raise DataError(f"{path}: missing; oracle masks exist only for datasets written by "
                            "`hashgan-ray data synth` (attention 'oracle' needs them)")
        meta = meta or read_meta(data_dir)
        self.image_size, self.vocab_size = meta.image_size, meta.vocab_size
        table = pq.read_table(path)
        ids = table.column("id").to_numpy()
        self._row = {int(i): r for r, i in enumerate(ids)}
        self._boxes = [np.asarray(b, dtype=np.int64).reshape(-1, 4)
                       for b in table.column("boxes").to_pylist()]
        self._words = table.column("label_words").to_pylist()

    def _rows(self, ids) -> list[int]:
        try:
            return [self._row[int(i)] for i in ids]
        except KeyError as e:
            raise DataError(f"{ORACLE_FILE}: no oracle for pair id {e.args[0]}") from None

    def image_masks(self, ids, height: int, width: int) -> np.ndarray:
        """(n, 1, H, W) float32: 1 where a map position's share of the image
        overlaps one of the pair's label patterns."""
        s = self.image_size
        top, left = np.arange(height) * s / height, np.arange(width) * s / width
        bottom, right = top + s / height, left + s / width
        out = np.zeros((len(ids), 1, height, width), dtype=np.float32)
        for n, r in enumerate(self._rows(ids)):
            for y0, x0, y1, x1 in self._boxes[r]:
                rows = (top < y1) & (bottom > y0)
                cols = (left < x1) & (right > x0)
                out[n, 0] = np.maximum(out[n, 0], np.outer(rows, cols))
        return out

    def word_masks(self, ids) -> np.ndarray:
        """(n, V) float32: 1 at the pair's label words (multiply a bag of words by it)."""
        out = np.zeros((len(ids), self.vocab_size), dtype=np.float32)
        for n, r in enumerate(self._rows(ids)):
            out[n, self._words[r]] = 1.0
        return out

    def image_masks_like(self, ids, maps):
        """`image_masks` for a batch: `ids` a tensor of pair ids, `maps` the
        batch's (N, C, H, W) feature maps; a tensor on their device and dtype."""
        import torch

        masks = self.image_masks(ids.tolist(), *maps.shape[-2:])
        return torch.as_tensor(masks, device=maps.device, dtype=maps.dtype)

    def word_masks_like(self, ids, text):
        """`word_masks` for a batch: a tensor on the bag of words' device and dtype."""
        import torch

        return torch.as_tensor(self.word_masks(ids.tolist()), device=text.device, dtype=text.dtype)

    def forward_masks(self, ids, text):
        """(masks, word_mask) for FeatureHashing.forward on a batch of pair ids
        (a tensor) and its bag of words: the true image masks in place of G's
        (the text mask all ones: the word mask does the text's split)."""
        import torch

        def masks(maps, feats):
            return self.image_masks_like(ids, maps), torch.ones_like(feats)
        return masks, self.word_masks_like(ids, text)
