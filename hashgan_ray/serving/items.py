"""What a search result is: its labels, words and image (and its name and emoji
where the dataset has them), read from the datasets an index was built from.
Plain pyarrow + Pillow: no Ray, no web framework.

In memory only the map id -> row, 12 bytes per item (sorted ids int64 + the row
int32); the rest stays in the datasets' Parquet files and is read one row group
at a time when asked for (text and labels of recent row groups are cached).
The items are the rows of the splits listed in the index's manifest
(`datasets`) whose ids the index holds (`only_ids`): pairs added with `index
add` are items once the service loads that version, and removed ones are not. A dataset that is no longer where the index
recorded it is skipped with a warning: search still works, its items are 404.
"""
from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from hashgan_ray.data.format import OPTIONAL_COLUMNS, DataError, pair_files, read_meta
from hashgan_ray.data.splits import rows_of_split

log = logging.getLogger(__name__)
THUMBNAIL_QUALITY = 85          # JPEG quality of thumbnails (Pillow's scale)
CACHED_GROUPS = 256             # row groups whose text and labels stay decoded


class ItemNotFound(LookupError):
    """No item with this id, or its image cannot be read; the message says which."""


@dataclass
class Item:
    id: int
    labels: list[str]
    words: list[str]
    name: str | None = None       # None where the dataset has no such column
    emoji: str | None = None


@dataclass
class _File:
    parquet: pq.ParquetFile
    group_starts: np.ndarray      # (groups + 1,) first row of each row group, then the count
    dataset: int                  # index into ItemStore.metas
    optional: list[str]           # the OPTIONAL_COLUMNS it has


class ItemStore:
    """Items of an index, by dataset id (manifest["datasets"] entries: path, split),
    only those in `only_ids` when given (the ids the index holds)."""

    def __init__(self, datasets: list[dict], only_ids: np.ndarray | None = None):
        started = time.perf_counter()
        self.metas, self.files, self.paths = [], [], []
        ids, rows, file_starts, total = [], [], [0], 0
        for entry in datasets:
            path = Path(entry["path"])
            try:
                meta, files = read_meta(path), pair_files(path)
            except DataError as e:
                log.warning("items of %s are not shown: %s", path, e)
                continue
            self.metas.append(meta)
            self.paths.append(path)
            wanted = rows_of_split(entry["split"]) if entry.get("split", "all") != "all" else None
            for f in files:
                # the split column as a dictionary: no string per row while loading
                parquet = pq.ParquetFile(f, read_dictionary=["split"])
                sizes = [parquet.metadata.row_group(g).num_rows
                         for g in range(parquet.metadata.num_row_groups)]
                table = parquet.read(columns=["id", "split"])
                keep = (np.ones(len(table), bool) if wanted is None else
                        pc.is_in(table.column("split"), pa.array(wanted)).to_numpy(False))
                ids.append(table.column("id").to_numpy()[keep])
                rows.append(total + np.flatnonzero(keep))
                optional = [c for c in OPTIONAL_COLUMNS if c in parquet.schema_arrow.names]
                self.files.append(_File(parquet, np.cumsum([0] + sizes), len(self.metas) - 1,
                                        optional))
                total += len(table)
                file_starts.append(total)
                del table
        ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        if only_ids is not None:                                    # removed from the index
            held = np.isin(ids, only_ids)
            ids, rows = ids[held], rows[held]
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]                                       # (n,) int64, sorted
        del ids
        self.rows = rows[order].astype(np.int32 if total < 2**31 else np.int64)
        del rows, order
        self.file_starts = np.asarray(file_starts, np.int64)        # (files + 1,)
        pa.default_memory_pool().release_unused()                   # the columns read above
        self._groups: OrderedDict = OrderedDict()                   # (file, group) -> columns
        self.load_s = time.perf_counter() - started
        log.info("items: %d from %d dataset(s) in %.2f s", len(self.ids), len(self.metas),
                 self.load_s)

    def __len__(self) -> int:
        return len(self.ids)

    def _locate(self, item_id: int) -> tuple[int, int, int]:
        """(file, row group, row in group) of an item."""
        i = int(np.searchsorted(self.ids, item_id))
        if i == len(self.ids) or self.ids[i] != item_id:
            raise ItemNotFound(f"no item with id {item_id} in this index")
        row = int(self.rows[i])
        f = int(np.searchsorted(self.file_starts, row, "right")) - 1
        row -= int(self.file_starts[f])
        starts = self.files[f].group_starts
        g = int(np.searchsorted(starts, row, "right")) - 1
        return f, g, row - int(starts[g])

    def _fields(self, f: int, g: int) -> pa.Table:
        """A row group's text, labels and optional columns, as Arrow (a few bytes per
        value, unlike lists)."""
        key = (f, g)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        group = self.files[f].parquet.read_row_group(
            g, columns=["text", "labels", *self.files[f].optional])
        self._groups[key] = group
        if len(self._groups) > CACHED_GROUPS:
            self._groups.popitem(last=False)
        return group

    def get(self, item_id: int) -> Item:
        f, g, r = self._locate(item_id)
        meta = self.metas[self.files[f].dataset]
        group = self._fields(f, g)
        words = dict.fromkeys(group.column("text")[r].as_py())         # a repeat counts once
        return Item(item_id, [meta.label_names[i] for i in group.column("labels")[r].as_py()],
                    [meta.vocabulary[i] for i in words],
                    **{c: group.column(c)[r].as_py() for c in self.files[f].optional})

    def word_ids(self, item_id: int) -> list[int]:
        """The item's bag of words as vocabulary ids (a query's `words`)."""
        f, g, r = self._locate(item_id)
        return self._fields(f, g).column("text")[r].as_py()

    def image_bytes(self, item_id: int) -> bytes:
        """The item's encoded image: stored in the dataset, or the file it links to."""
        f, g, r = self._locate(item_id)
        column = self.metas[self.files[f].dataset].image_column
        value = self.files[f].parquet.read_row_group(g, columns=[column]).column(0)[r].as_py()
        if column == "image":
            return value
        try:
            return Path(value).read_bytes()
        except OSError as e:
            raise ItemNotFound(f"the image file of item {item_id} cannot be read "
                               f"({e.strerror or type(e).__name__})") from None


def thumbnail(data: bytes, size: int) -> bytes:
    """JPEG bytes whose longer side is at most `size` (never enlarged)."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))                  # cheap JPEG downscale first
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.BILINEAR)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
        return out.getvalue()
