"""The on-disk dataset: `pairs/part-*.parquet` + `meta.json` (see docs/data.md).

One row per image-text pair:

    id      int64          stable, unique
    image   binary         encoded JPEG/PNG bytes      (or `image_path` string)
    text    list<int32>    bag of words: vocabulary indices, a repeated index is a count
    labels  list<int16>    label indices
    split   string         query | train | database   (train pairs are also database)

and, where the source has them, optional string columns (OPTIONAL_COLUMNS): `name`,
what a person calls the pair ("dog face"), and `emoji`, the emoji it shows.

`DatasetWriter` is the only writer and `read_meta` / `read_pairs` / `iter_pairs`
the only readers; converters, the synthetic generator and the Ray stages all go
through them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hashgan_ray.data.splits import SPLITS, assign_splits, rows_of_split
from hashgan_ray.files import move_into_place, temp_dir_for

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
PAIRS_DIR = "pairs"
IMAGE_COLUMNS = ("image", "image_path")
# Optional string columns, for people rather than training: the items API and
# the search page show them (serving/items.py); nothing else reads them.
OPTIONAL_COLUMNS = ("name", "emoji")


class DataError(ValueError):
    """Input data is malformed; the message names the file (and line) at fault."""


def data_error(path, line: int | None, message: str) -> DataError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return DataError(f"{where}: {message}")


def pairs_schema(image_column: str, optional: Sequence[str] = ()) -> pa.Schema:
    if image_column not in IMAGE_COLUMNS:
        raise ValueError(f"image_column must be one of {IMAGE_COLUMNS}, got {image_column!r}")
    unknown = sorted(set(optional) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise ValueError(f"optional columns must be among {OPTIONAL_COLUMNS}, got {unknown}")
    image_type = pa.binary() if image_column == "image" else pa.string()
    return pa.schema([
        ("id", pa.int64()),
        (image_column, image_type),
        ("text", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int16())),
        *[(name, pa.string()) for name in OPTIONAL_COLUMNS if name in optional],
        ("split", pa.string()),
    ])


@dataclass
class DatasetMeta:
    name: str
    source: str                      # synthetic | nuswide | mirflickr | iapr | dcmh-mat
    vocabulary: list[str]            # text vocabulary, index = word id
    label_names: list[str]           # index = label id
    image_size: int                  # side the loader resizes images to
    seed: int                        # seed of the split (and of the generator)
    counts: dict[str, int]           # rows per stored split value, plus "total"
    image_column: str = "image"
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)   # conversion report, split sizes, ...

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def split_size(self, split: str) -> int:
        """Rows in `split` as a retrieval set (`database` includes `train`)."""
        return sum(self.counts.get(s, 0) for s in rows_of_split(split))


def read_meta(data_dir: str | os.PathLike) -> DatasetMeta:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing; {data_dir} is not a hashgan-ray dataset "
                        "(make one with `hashgan-ray data synth` or `hashgan-ray data convert`)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"not valid JSON: {e.msg}") from None
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version!r} is not supported "
                        f"(this version reads {FORMAT_VERSION})")
    known = DatasetMeta.__dataclass_fields__.keys()
    missing = [k for k in known if k not in raw and k not in ("extra", "image_column")]
    if missing:
        raise DataError(f"{path}: missing keys {missing}")
    return DatasetMeta(**{k: v for k, v in raw.items() if k in known})


def pair_files(data_dir: str | os.PathLike) -> list[Path]:
    files = sorted((Path(data_dir) / PAIRS_DIR).glob("part-*.parquet"))
    if not files:
        raise DataError(f"{Path(data_dir) / PAIRS_DIR}: no part-*.parquet files")
    return files


def _split_filter(split: str | None):
    if split is None:
        return None
    return pc.field("split").isin(list(rows_of_split(split)))


def read_pairs(data_dir, split: str | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of `split` (None: every row) in storage order, as one table.
    For large datasets prefer `iter_pairs` or the Ray Data loader."""
    read_meta(data_dir)
    tables = [pq.read_table(f, columns=list(columns) if columns else None,
                            filters=_split_filter(split)) for f in pair_files(data_dir)]
    return pa.concat_tables(tables)


def iter_pairs(data_dir, split: str | None = None, columns: Sequence[str] | None = None,
               batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Stream the rows of `split` in storage order: batches of `batch_size` rows
    (the last may be shorter), whatever the row groups and the filter leave."""
    read_meta(data_dir)
    wanted = pa.array(rows_of_split(split)) if split else None
    cols = list(columns) if columns else None
    read_cols = cols + ["split"] if wanted is not None and cols and "split" not in cols else cols
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for f in pair_files(data_dir):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=read_cols):
            if wanted is not None:
                batch = batch.filter(pc.is_in(batch.column("split"), wanted))
                batch = batch.select(cols) if cols else batch
            pending.append(batch)
            n_pending += batch.num_rows
            while n_pending >= batch_size:
                table = pa.Table.from_batches(pending).combine_chunks()
                yield table.slice(0, batch_size).to_batches()[0]
                rest = table.slice(batch_size)
                pending, n_pending = rest.to_batches(), rest.num_rows
    if n_pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def describe_dataset(data_dir) -> str:
    """A summary for a person (`hashgan-ray data info`): pairs per split,
    vocabulary, labels and the most frequent ones, one example pair."""
    meta = read_meta(data_dir)
    label_freq: Counter = Counter()
    words = n = 0
    example = None
    for batch in iter_pairs(data_dir, columns=["id", "text", "labels", "split"], batch_size=4096):
        rows = batch.to_pydict()
        example = example or {k: v[0] for k, v in rows.items()}
        for labels, text in zip(rows["labels"], rows["text"]):
            label_freq.update(labels)
            words += len(text)
            n += 1
    top = ", ".join(f"{meta.label_names[i]} {c}" for i, c in label_freq.most_common(5))
    ex_words = " ".join(meta.vocabulary[i] for i in example["text"][:12])
    ex_labels = ", ".join(meta.label_names[i] for i in example["labels"])
    c = meta.counts
    return "\n".join([
        f"dataset {meta.name} ({meta.source}) at {data_dir}",
        f"  pairs: {c['total']} = query {c['query']} + train {c['train']} + database {c['database']}"
        f" (retrieval database = train + database = {meta.split_size('database')})",
        f"  text: {meta.vocab_size} words, {words / max(n, 1):.1f} per pair",
        f"  labels: {meta.num_labels}, most frequent: {top}",
        f"  images: column '{meta.image_column}', resized to {meta.image_size}x{meta.image_size}",
        f"  example: id {example['id']} [{example['split']}] labels: {ex_labels}; words: {ex_words}",
    ])


def dataset_fingerprint(data_dir) -> str:
    """sha256 over meta.json and every pairs file (name and bytes): identifies the
    exact dataset an index was built from. Reads the files once, ~1 GB/s."""
    h = hashlib.sha256()
    for path in [Path(data_dir) / META_FILE, *pair_files(data_dir)]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class DatasetWriter:
    """Streams pairs into a new dataset directory, atomically.

    Rows are buffered into Parquet row groups of `rows_per_group` and files of
    `rows_per_file`, so memory stays bounded whatever the dataset size. All of it
    goes to a hidden temporary directory beside `out_dir`; `finish()` assigns the
    splits, writes `meta.json` and renames the directory into place. Until then,
    and if anything fails, `out_dir` is untouched (a previous dataset there
    survives a failed overwrite).

        with DatasetWriter(out, vocabulary, label_names) as w:
            w.add(id=..., text=[...], labels=[...], image=png_bytes)
            meta = w.finish(name=..., source=..., image_size=..., n_query=..., n_train=..., seed=...)
    """

    def __init__(self, out_dir, vocabulary: Sequence[str], label_names: Sequence[str], *,
                 image_column: str = "image", optional_columns: Sequence[str] = (),
                 rows_per_group: int = 256, rows_per_file: int = 10_000,
                 overwrite: bool = False):
        self.out_dir = Path(out_dir).resolve()
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} already exists; pass --overwrite to replace it")
        self.vocabulary = list(vocabulary)
        self.label_names = list(label_names)
        if len(self.label_names) > np.iinfo(np.int16).max:
            raise ValueError(f"{len(self.label_names)} labels do not fit the int16 label column")
        self.image_column = image_column
        self._schema = pairs_schema(image_column, optional_columns)
        self.optional_columns = [n for n in OPTIONAL_COLUMNS if n in optional_columns]
        self._staging_schema = self._schema.remove(self._schema.get_field_index("split"))
        self.rows_per_group = rows_per_group
        self.rows_per_file = rows_per_file
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = temp_dir_for(self.out_dir)
        (self.tmp_dir / "staging").mkdir()
        self._buffer: dict[str, list] = {name: [] for name in self._staging_schema.names}
        self._ids: list[int] = []
        self._seen: set[int] = set()
        self._file_rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._staged: list[Path] = []
        self._done = False

    # -- writing -------------------------------------------------------------
    def add(self, id: int, text: Sequence[int], labels: Sequence[int], *,
            image: bytes | None = None, image_path: str | None = None, **optional: str) -> None:
        """One pair; `optional`: a string for each of the writer's optional columns."""
        value = image if self.image_column == "image" else image_path
        if value is None:
            raise ValueError(f"pair {id}: the {self.image_column!r} value is missing")
        if sorted(optional) != sorted(self.optional_columns):
            raise ValueError(f"pair {id}: expected the optional columns "
                             f"{self.optional_columns}, got {sorted(optional)}")
        if id in self._seen:
            raise ValueError(f"duplicate pair id {id}")
        if any(not 0 <= t < len(self.vocabulary) for t in text):
            raise ValueError(f"pair {id}: word index out of range 0..{len(self.vocabulary) - 1}")
        if any(not 0 <= t < len(self.label_names) for t in labels):
            raise ValueError(f"pair {id}: label index out of range 0..{len(self.label_names) - 1}")
        self._seen.add(id)
        self._ids.append(id)
        self._buffer["id"].append(int(id))
        self._buffer[self.image_column].append(value)
        self._buffer["text"].append([int(t) for t in text])
        self._buffer["labels"].append([int(t) for t in labels])
        for name, text_value in optional.items():
            self._buffer[name].append(str(text_value))
        if len(self._buffer["id"]) >= self.rows_per_group:
            self._flush()

    def __len__(self) -> int:
        return len(self._ids)

    def _flush(self) -> None:
        if not self._buffer["id"]:
            return
        if self._parquet is None or self._file_rows >= self.rows_per_file:
            self._close_file()
            path = self.tmp_dir / "staging" / f"part-{len(self._staged):05d}.parquet"
            self._parquet = pq.ParquetWriter(path, self._staging_schema)
            self._staged.append(path)
            self._file_rows = 0
        table = pa.Table.from_pydict(self._buffer, schema=self._staging_schema)
        self._parquet.write_table(table, row_group_size=len(table))
        self._file_rows += len(table)
        self._buffer = {name: [] for name in self._staging_schema.names}

    def _close_file(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    # -- finishing -----------------------------------------------------------
    def finish(self, *, name: str, source: str, image_size: int, n_query: int,
               n_train: int, seed: int, extra: dict | None = None) -> DatasetMeta:
        """Assign splits, write meta.json, move the dataset into place."""
        self._flush()
        self._close_file()
        if not self._ids:
            raise DataError(f"{self.out_dir}: no pairs were kept; nothing to write")
        split = assign_splits(np.array(self._ids), n_query, n_train, seed)
        pairs_dir = self.tmp_dir / PAIRS_DIR
        pairs_dir.mkdir()
        start = 0
        for staged in self._staged:
            start = self._add_split_column(staged, pairs_dir / staged.name, split, start)
            staged.unlink()
        (self.tmp_dir / "staging").rmdir()

        counts = {s: int((split == s).sum()) for s in SPLITS}
        counts["total"] = len(split)
        meta = DatasetMeta(
            name=name, source=source, vocabulary=self.vocabulary,
            label_names=self.label_names, image_size=int(image_size), seed=int(seed),
            counts=counts, image_column=self.image_column,
            extra={"n_query": n_query, "n_train": n_train,
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   **(extra or {})})
        (self.tmp_dir / META_FILE).write_text(json.dumps(asdict(meta), indent=1))
        self._move_into_place()
        self._done = True
        log.info("wrote %d pairs to %s (%s)", counts["total"], self.out_dir, counts)
        return meta

    def _add_split_column(self, src: Path, dst: Path, split: np.ndarray, start: int) -> int:
        """Copy `src` row group by row group into `dst` with the split column."""
        reader = pq.ParquetFile(src)
        with pq.ParquetWriter(dst, self._schema) as writer:
            for g in range(reader.num_row_groups):
                group = reader.read_row_group(g)
                n = group.num_rows
                group = group.append_column("split", pa.array(split[start:start + n], pa.string()))
                writer.write_table(group.select(self._schema.names), row_group_size=n)
                start += n
        return start

    def _move_into_place(self) -> None:
        move_into_place(self.tmp_dir, self.out_dir)

    def abort(self) -> None:
        self._close_file()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._done:
            self.abort()
        return False
