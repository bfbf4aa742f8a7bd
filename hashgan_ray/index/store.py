"""The index directory: codes in Parquet, FAISS binary indexes per shard, a manifest.

    INDEX_DIR/manifest.json
    INDEX_DIR/codes/part-00000.parquet, ...        id int64, image_code, text_code
                                                   (fixed_size_binary[bits/8])
    INDEX_DIR/shards/00000/image.index, text.index (faiss.write_index_binary)

The manifest's `version` grows by one with every change written to the directory
(build over it, add, remove): a running service compares it to the version it
serves and loads the new one (hashgan_ray.serving.app).

Rows keep one *database order* (the order of the codes files): shard s holds a
contiguous range of it, and every FAISS index is an `IndexBinaryIDMap` whose
internal row order is that order and whose labels are dataset ids. FAISS's
k-NN heaps break distance ties by internal row, so an exact (`flat`) shard
returns the ranking of `hashgan_ray.evaluation.metrics` (ascending Hamming, ties by
database order), and `merge` keeps it across shards (tests/index).

numpy + pyarrow + FAISS only: no Ray, no torch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hashgan_ray.files import move_into_place, temp_dir_for
from hashgan_ray.index.gpu import exact_index, flat_index

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES_DIR = "codes"
SHARDS_DIR = "shards"
KINDS = ("flat", "hnsw", "ivf", "multihash")
TARGETS = ("image", "text")
# Approximate kinds' settings. Sources: FAISS wiki "Binary indexes" (HNSW M=16..64,
# IVF nlist ~ 4*sqrt(n) with >= 39 training points per list); the search-time
# values were picked for recall@10 >= 0.9 on the synthetic benchmark
# (`index build --kind ...` prints it).
HNSW_M, HNSW_EF_SEARCH = 32, 128
IVF_NPROBE = 16
MULTIHASH_BITS, MULTIHASH_FLIPS = 16, 2


class IndexMismatch(ValueError):
    """An index does not belong to the model (or data) it is used with."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- #
# Codes files
# --------------------------------------------------------------------------- #

def codes_schema(nbytes: int) -> pa.Schema:
    return pa.schema([("id", pa.int64()), ("image_code", pa.binary(nbytes)),
                      ("text_code", pa.binary(nbytes))])


def _fixed_binary(codes: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(n, nbytes) uint8 -> fixed_size_binary[nbytes] without a Python loop."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(codes.shape[1]), len(codes), [None, pa.py_buffer(codes.tobytes())])


def codes_table(ids: np.ndarray, image_codes: np.ndarray, text_codes: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(ids, pa.int64()), _fixed_binary(image_codes), _fixed_binary(text_codes)],
        schema=codes_schema(image_codes.shape[1]))


def _unpack(column: pa.ChunkedArray, nbytes: int) -> np.ndarray:
    """fixed_size_binary column -> (n, nbytes) uint8."""
    if not len(column):
        return np.empty((0, nbytes), np.uint8)
    chunks = [np.frombuffer(c.buffers()[1], np.uint8, len(c) * nbytes, c.offset * nbytes)
              for c in column.chunks if len(c)]
    return np.concatenate(chunks).reshape(-1, nbytes)


@dataclass
class Codes:
    ids: np.ndarray           # (n,) int64 dataset ids, database order
    image: np.ndarray         # (n, bits/8) uint8 packed
    text: np.ndarray          # (n, bits/8) uint8 packed

    def __len__(self) -> int:
        return len(self.ids)

    def of(self, target: str) -> np.ndarray:
        return self.image if target == "image" else self.text

    def slice(self, a: int, b: int) -> "Codes":
        return Codes(self.ids[a:b], self.image[a:b], self.text[a:b])


def read_codes(index_dir) -> Codes:
    """Every code of an index directory, in database order."""
    manifest = read_manifest(index_dir)
    nbytes = manifest["bits"] // 8
    parts = [pq.read_table(Path(index_dir) / f) for f in manifest["codes"]]
    table = pa.concat_tables(parts) if parts else codes_schema(nbytes).empty_table()
    return Codes(table.column("id").to_numpy(), _unpack(table.column("image_code"), nbytes),
                 _unpack(table.column("text_code"), nbytes))


def read_ids(index_dir) -> np.ndarray:
    """The dataset ids an index holds, in database order (only the id column read)."""
    manifest = read_manifest(index_dir)
    parts = [pq.read_table(Path(index_dir) / f, columns=["id"]).column("id").to_numpy()
             for f in manifest["codes"]]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class CodesWriter:
    """Appends batches of codes as `codes/part-NNNNN.parquet` files of at most
    `rows_per_file` rows, and keeps them in memory for the FAISS build."""

    def __init__(self, index_dir: Path, first_part: int = 0, rows_per_file: int = 1_000_000):
        self.dir = index_dir / CODES_DIR
        self.dir.mkdir(exist_ok=True)
        self.part, self.rows_per_file = first_part, rows_per_file
        self.files: list[str] = []
        self.batches: list[pa.Table] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def add(self, ids: np.ndarray, image_codes: np.ndarray, text_codes: np.ndarray) -> None:
        table = codes_table(ids, image_codes, text_codes)
        if self._writer is None or self._rows >= self.rows_per_file:
            self._close()
            name = f"{CODES_DIR}/part-{self.part:05d}.parquet"
            self._writer = pq.ParquetWriter(self.dir.parent / name, table.schema)
            self.files.append(name)
            self.part, self._rows = self.part + 1, 0
        self._writer.write_table(table)
        self._rows += len(table)
        self.batches.append(table)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, nbytes: int) -> Codes:
        self._close()
        table = pa.concat_tables(self.batches) if self.batches else codes_schema(nbytes).empty_table()
        return Codes(table.column("id").to_numpy(), _unpack(table.column("image_code"), nbytes),
                     _unpack(table.column("text_code"), nbytes))


# --------------------------------------------------------------------------- #
# FAISS
# --------------------------------------------------------------------------- #

def new_index(kind: str, bits: int, n: int) -> tuple[faiss.IndexBinary, dict]:
    """An empty FAISS binary index of `kind` sized for about `n` codes, and its
    search-time parameters (stored in the manifest, applied on load)."""
    if kind == "flat":
        return faiss.IndexBinaryFlat(bits), {}
    if kind == "hnsw":
        return faiss.IndexBinaryHNSW(bits, HNSW_M), {"ef_search": HNSW_EF_SEARCH}
    if kind == "ivf":
        # ~4 sqrt(n) lists, each with >= 39 training points (FAISS warns below)
        nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexBinaryFlat(bits)
        index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
        quantizer.this.disown()      # the IVF index frees it
        index.own_fields = True
        return index, {"nprobe": min(IVF_NPROBE, nlist), "nlist": nlist}
    if kind == "multihash":
        nhash = max(1, bits // MULTIHASH_BITS)
        index = faiss.IndexBinaryMultiHash(bits, nhash, bits // nhash)
        return index, {"nflip": MULTIHASH_FLIPS, "nhash": nhash}
    raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")


def _apply_params(index: faiss.IndexBinary, params: dict) -> None:
    inner = faiss.downcast_IndexBinary(faiss.downcast_IndexBinary(index).index)
    if "ef_search" in params:
        inner.hnsw.efSearch = params["ef_search"]
    if "nprobe" in params:
        inner.nprobe = params["nprobe"]
    if "nflip" in params:
        inner.nflip = params["nflip"]


def build_faiss(kind: str, codes: np.ndarray, ids: np.ndarray) -> tuple[faiss.IndexBinary, dict]:
    """IndexBinaryIDMap over a new `kind` index holding `codes` labelled `ids`."""
    inner, params = new_index(kind, codes.shape[1] * 8, len(codes))
    if not inner.is_trained:
        inner.train(codes)
    index = faiss.IndexBinaryIDMap(inner)
    index.own_fields = True
    inner.this.disown()          # the IDMap frees it
    index.add_with_ids(codes, ids)
    _apply_params(index, params)
    return index, params


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 (nq, k'), ids int64 (nq, k')), k' = min(k, size), best first.
    Approximate kinds may find fewer than k': those slots hold distance
    2^31-1 and id -1."""
    k = min(k, index.ntotal)
    if k == 0:
        return np.empty((len(queries), 0), np.int32), np.empty((len(queries), 0), np.int64)
    return index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-shard (D, I), shards in database order -> the global top k.

    A stable sort on distance over the shards' lists laid end to end keeps,
    within a distance, shard order and then each shard's own order, which is
    the database order of the tie rule."""
    D = np.concatenate([d for d, _ in results], axis=1)                  # (nq, sum k_s)
    I = np.concatenate([i for _, i in results], axis=1)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


# --------------------------------------------------------------------------- #
# Manifest and shards
# --------------------------------------------------------------------------- #

def read_manifest(index_dir) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {index_dir} is not an index directory "
                                "(make one with `hashgan-ray index build`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
    return manifest


def manifest_version(manifest: dict) -> int:
    """The index's version (0 for an index written before versions existed)."""
    return int(manifest.get("version", 0))


def _version_after(index_dir: Path) -> int:
    """One more than the version of the index at `index_dir`, 1 where there is none."""
    try:
        return manifest_version(read_manifest(index_dir)) + 1
    except (FileNotFoundError, ValueError):
        return 1


def check_manifest(manifest: dict, index_dir, *, bits: int | None = None,
                   checkpoint_fingerprint: str | None = None) -> None:
    """Refuse an index built with another code length or another model."""
    if bits is not None and manifest["bits"] != bits:
        raise IndexMismatch(
            f"{index_dir}: the index holds {manifest['bits']}-bit codes but the model makes "
            f"{bits}-bit codes; rebuild it with `hashgan-ray index build` for this model")
    built = manifest["checkpoint"]["fingerprint"]
    if checkpoint_fingerprint is not None and built != checkpoint_fingerprint:
        raise IndexMismatch(
            f"{index_dir}: the index was built with another model (checkpoint fingerprint "
            f"{built[:12]}..., this model {checkpoint_fingerprint[:12]}..., built from "
            f"{manifest['checkpoint']['path']}); its codes are not comparable to this "
            "model's queries: rebuild it for this model")


def shard_file(shard: int, target: str) -> str:
    return f"{SHARDS_DIR}/{shard:05d}/{target}.index"


def shard_bounds(n: int, shards: int) -> list[int]:
    """Row boundaries of `shards` contiguous, near-equal ranges of n rows."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return [round(i * n / shards) for i in range(shards + 1)]


def write_shard(index_dir: Path, shard: int, kind: str, codes: Codes) -> dict:
    """Build and write one shard's image and text indexes -> their parameters."""
    (index_dir / SHARDS_DIR / f"{shard:05d}").mkdir(parents=True, exist_ok=True)
    params = {}
    for target in TARGETS:
        index, params = build_faiss(kind, codes.of(target), codes.ids)
        faiss.write_index_binary(index, str(index_dir / shard_file(shard, target)))
    return params


class Shard:
    """One shard's image and text indexes, loaded for search. An exact (`flat`)
    shard searches on a GPU when `choose_gpu(gpu)` says so (index/gpu.py: None
    is a visible GPU with GPU FAISS; a Serve replica says whether it was given
    one), with the CPU's results."""

    def __init__(self, index_dir, shard: int, manifest: dict, *, gpu: bool | None = None):
        self.params = manifest["params"]
        self.indexes = {}
        for target in TARGETS:
            index = faiss.read_index_binary(str(Path(index_dir) / shard_file(shard, target)))
            _apply_params(index, self.params)
            self.indexes[target] = exact_index(index, gpu) if manifest["kind"] == "flat" else index
        self.size = self.indexes["image"].ntotal

    def search(self, queries: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (nq, bits/8) uint8 -> (D, I) over the `target` codes of this shard."""
        return search(self.indexes[target], queries, k)


def open_shard(index_dir, shard: int, *, bits: int | None = None,
               checkpoint_fingerprint: str | None = None, gpu: bool | None = None) -> Shard:
    manifest = read_manifest(index_dir)
    check_manifest(manifest, index_dir, bits=bits, checkpoint_fingerprint=checkpoint_fingerprint)
    if not 0 <= shard < len(manifest["shards"]):
        raise ValueError(f"{index_dir}: no shard {shard} (it has {len(manifest['shards'])})")
    return Shard(index_dir, shard, manifest, gpu=gpu)


class HashIndex:
    """Every shard of an index in this process: the reference the Serve app is
    tested against, and what the benchmarks and `index add` use."""

    def __init__(self, index_dir, *, bits: int | None = None,
                 checkpoint_fingerprint: str | None = None):
        self.manifest = read_manifest(index_dir)
        check_manifest(self.manifest, index_dir, bits=bits,
                       checkpoint_fingerprint=checkpoint_fingerprint)
        self.shards = [Shard(index_dir, s, self.manifest) for s in range(len(self.manifest["shards"]))]

    def search(self, queries: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        return merge([s.search(queries, target, k) for s in self.shards], k)


def write_index(out_dir, codes_writer_fn, *, bits: int, kind: str, shards: int,
                manifest_fields: dict, overwrite: bool = False, progress=None) -> dict:
    """Write a new index directory atomically.

    `codes_writer_fn(writer)` streams every code into a CodesWriter (the encode
    job); then the shards are built and the manifest written, all in a hidden
    temporary directory renamed over `out_dir` only when complete. A failure
    anywhere leaves `out_dir` (and a previous index there) untouched."""
    out_dir = Path(out_dir).resolve()
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(out_dir)
    try:
        writer = CodesWriter(tmp)
        codes_writer_fn(writer)
        codes = writer.finish(bits // 8)
        if not len(codes):
            raise ValueError("there is nothing to index (0 pairs)")
        check_unique(codes.ids, "the indexed data")
        bounds = shard_bounds(len(codes), shards)
        params = {}
        for s in range(shards):
            params = write_shard(tmp, s, kind, codes.slice(bounds[s], bounds[s + 1]))
        manifest = {"format_version": FORMAT_VERSION, "version": _version_after(out_dir),
                    "bits": bits, "kind": kind, "params": params, "count": len(codes),
                    "shards": [{"rows": bounds[s + 1] - bounds[s]} for s in range(shards)],
                    "codes": writer.files, "created_at": now(), "updated_at": now(),
                    **manifest_fields}
        _write_manifest(tmp, manifest)
        move_into_place(tmp, out_dir)
    except BaseException:
        _remove(tmp)
        raise
    log.info("wrote a %s index of %d codes (%d bits, %d shards) to %s",
             kind, len(codes), bits, shards, out_dir)
    return manifest


def _write_next_version(index_dir: Path, change) -> dict:
    """Write the next version of an index directory, atomically: `change(tmp,
    manifest)` edits a copy whose files are hard links to the current ones (a
    file it rewrites must be unlinked first, never written into) and the
    manifest in memory; the copy then replaces the directory with the version
    one higher. A failure leaves the directory as it was."""
    manifest = read_manifest(index_dir)
    tmp = temp_dir_for(index_dir)
    try:
        _link_tree(index_dir, tmp)
        change(tmp, manifest)
        manifest["version"] = manifest_version(manifest) + 1
        manifest["updated_at"] = now()
        _write_manifest(tmp, manifest)
        move_into_place(tmp, index_dir)
    except BaseException:
        _remove(tmp)
        raise
    return manifest


def _rebuild_shard(tmp: Path, shard: int, kind: str, codes: Codes) -> None:
    for target in TARGETS:
        os.unlink(tmp / shard_file(shard, target))      # a link to the old file
    write_shard(tmp, shard, kind, codes)


def add_to_index(index_dir, codes_writer_fn, *, dataset: dict) -> dict:
    """Append codes to an existing index as its next version: the new codes get
    new codes files and join the last shard (rebuilt from its codes); the other
    shards' files are hard-linked unchanged. A duplicate id is an error."""
    index_dir = Path(index_dir).resolve()

    def append(tmp: Path, manifest: dict) -> None:
        writer = CodesWriter(tmp, first_part=len(manifest["codes"]))
        codes_writer_fn(writer)
        new = writer.finish(manifest["bits"] // 8)
        if not len(new):
            raise ValueError("there is nothing to add (0 pairs)")
        old = read_codes(index_dir)
        check_unique(np.concatenate([old.ids, new.ids]), f"{index_dir} plus the added data")
        last = len(manifest["shards"]) - 1
        first_row = manifest["count"] - manifest["shards"][last]["rows"]
        rows = Codes(*(np.concatenate([a[first_row:], b]) for a, b in
                       zip((old.ids, old.image, old.text), (new.ids, new.image, new.text))))
        _rebuild_shard(tmp, last, manifest["kind"], rows)
        manifest["shards"][last]["rows"] = len(rows)
        manifest["count"] += len(new)
        manifest["codes"] += writer.files
        manifest["datasets"].append(dataset)
        log.info("adding %d codes to %s", len(new), index_dir)

    manifest = _write_next_version(index_dir, append)
    log.info("%s: version %d, %d codes", index_dir, manifest["version"], manifest["count"])
    return manifest


def remove_from_index(index_dir, ids) -> dict:
    """Remove the pairs with these dataset ids from an index, as its next version:
    the codes are rewritten without them (database order kept), the shards that
    held them are rebuilt, the others hard-linked unchanged. An id the index
    does not hold is an error naming it; so is a removal that would leave a
    shard empty."""
    index_dir = Path(index_dir).resolve()
    ids = np.unique(np.asarray(ids, np.int64))
    if not len(ids):
        raise ValueError("no ids to remove")
    codes = read_codes(index_dir)
    held = np.isin(ids, codes.ids)
    if not held.all():
        missing = ids[~held]
        shown = ", ".join(str(v) for v in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"{index_dir}: {len(missing)} id(s) not in the index: {shown}; "
                         "nothing was removed")
    keep = ~np.isin(codes.ids, ids)

    def drop(tmp: Path, manifest: dict) -> None:
        for name in manifest["codes"]:
            os.unlink(tmp / name)                      # links to the old files
        kept = Codes(codes.ids[keep], codes.image[keep], codes.text[keep])
        writer = CodesWriter(tmp)
        writer.add(kept.ids, kept.image, kept.text)
        writer.finish(manifest["bits"] // 8)
        bounds = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])
        start = 0
        for shard, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            rows = int(keep[a:b].sum())
            if rows == 0:
                raise ValueError(f"{index_dir}: removing these ids would leave shard {shard} "
                                 "empty; rebuild the index with fewer shards instead")
            if rows < b - a:                           # this shard held some of them
                _rebuild_shard(tmp, shard, manifest["kind"], kept.slice(start, start + rows))
                manifest["shards"][shard]["rows"] = rows
            start += rows
        manifest["count"] = len(kept)
        manifest["codes"] = writer.files
        log.info("removing %d codes from %s", len(ids), index_dir)

    manifest = _write_next_version(index_dir, drop)
    log.info("%s: version %d, %d codes", index_dir, manifest["version"], manifest["count"])
    return manifest


def check_unique(ids: np.ndarray, what: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    dup = values[counts > 1]
    if len(dup):
        shown = ", ".join(str(v) for v in dup[:10]) + (", ..." if len(dup) > 10 else "")
        raise ValueError(f"{what}: {len(dup)} duplicate id(s): {shown}; ids must be unique")


def _write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of src into dst (same layout); the manifest is rewritten."""
    for path in src.rglob("*"):
        if path.is_file() and path.name != MANIFEST:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def _remove(directory: Path) -> None:
    import shutil
    shutil.rmtree(directory, ignore_errors=True)


def recall_at_k(index_dir, k: int = 10, queries: int = 200, seed: int = 0) -> dict[str, float]:
    """Recall@k of an (approximate) index against exact search, for cross-modal
    queries sampled from the index's own codes: text codes searching the image
    index ("image") and image codes searching the text index ("text").

    Ties-aware: a returned item counts as a hit when it is as close as the
    exact k-th result (another item at that distance is as good an answer)."""
    codes, index = read_codes(index_dir), HashIndex(index_dir)
    pick = np.random.default_rng(seed).choice(len(codes), min(queries, len(codes)), replace=False)
    k = min(k, len(codes))
    out = {}
    for target, source in (("image", "text"), ("text", "image")):
        q = codes.of(source)[pick]
        exact = exact_index(flat_index(codes.of(target)))          # on a GPU if there is one
        kth = exact.search(q, k)[0][:, -1:]                          # (nq, 1)
        D, I = index.search(q, target, k)
        out[target] = float(((D <= kth) & (I >= 0)).sum() / (len(q) * k))
    return out
