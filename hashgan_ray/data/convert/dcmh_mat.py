"""DCMH's preprocessed MATLAB files -> hashgan-ray dataset.

    hashgan-ray data convert dcmh-mat --src FLICKR-25K.mat --out data/mirflickr
    hashgan-ray data convert dcmh-mat --src nus-wide-tc21-{iall,yall,lall}.mat --out data/nuswide

The DCMH line of work ships either one file with the images (`IAll` or
`images`), the text bag of words `YAll` (n x vocab) and the labels `LAll`
(n x L), or one file per variable (`<prefix>-iall.mat`, `-yall.mat`,
`-lall.mat`). `--src` takes one or more files; each variable is looked up by
name across all of them (missing or found twice: an error).

Decisions:

* Version: a file that h5py recognises as HDF5 is MATLAB v7.3 and is read
  lazily with h5py, `rows` pairs at a time (about 64 MiB of images per chunk:
  NUS-WIDE's IAll is 29 GB). Any other file goes to scipy.io.loadmat (v4/v5),
  which loads only the three variables; v5 caps a variable at 2 GB, so that
  fits in memory. Sparse v5 matrices are densified chunk by chunk.
* Axis order: everything is reasoned about in MATLAB's axis order. h5py shows
  a MATLAB array with its axes reversed (MATLAB n x 3 x H x W is h5py
  (W, H, 3, n)), so v7.3 shapes and blocks are reversed back; loadmat already
  returns MATLAB's order.
* Pair count n: LAll's row count when YAll and the image array have a length
  equal to it, else LAll's column count (a transposed LAll); neither: an error
  listing the three shapes (row counts that differ).
* YAll / LAll orientation: the pairs run along MATLAB rows if there are n rows
  (DCMH's n x vocab), else along columns.
* Images: a 4-D uint8 array. In MATLAB order the pair axis is an end axis
  (last or first) of length n, the channel axis another axis of size 3, and
  the two left are height then width, in that order (MATLAB indexes images
  row first, and an NCHW array keeps H before W). So MATLAB's own
  H x W x 3 x n and Python's n x 3 x H x W both read right. If more than one
  reading fits (an image side equal to n or to 3), the one with the channel
  axis next to the pair axis wins (those two layouts); none, or still several:
  an error. Channels are taken in stored order as R, G, B. Each image becomes
  an (H, W, 3) array stored as a lossless PNG (encode_png), so the pixel
  values round-trip exactly. `image_size` defaults to the stored side (the
  larger one if not square).
* Text: the nonzero columns of the pair's YAll row, each index repeated as
  many times as its count. Values must be non-negative integers; labels must
  be 0 or 1. Both are checked over the whole file before any image is encoded,
  so a bad row fails in seconds, naming the file, variable and 0-based row.
* Pair id = the 0-based row index. A pair is dropped, and counted, for the
  first reason that applies: "no label" (all-zero LAll row), "no vocabulary
  word" (all-zero YAll row).
* Names: the files carry no words or label names, so the vocabulary is
  `w0000`, `w0001`, ... and the labels `l00`, `l01`, ... unless
  `--vocabulary` / `--label-names` give a file with one name per line (blank
  lines at the end ignored; the count must match, names must be distinct).
* `--name` defaults to what the first file's name suggests: "nus" -> nuswide,
  "flickr" or "mir" -> mirflickr, "iapr" -> iapr, else the file stem without a
  `-iall`/`-yall`/`-lall` suffix. It picks the default split sizes from the
  DCMH protocol (PROTOCOL_SIZES; 2000 query / 10000 train when unknown).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from hashgan_ray.data.convert.common import Report, progress, read_names
from hashgan_ray.data.format import DataError, DatasetMeta, DatasetWriter, data_error
from hashgan_ray.data.images import encode_png
from hashgan_ray.data.splits import PROTOCOL_SIZES

CHUNK_BYTES = 64 * 2**20          # bytes of one variable read at a time
DEFAULT_SIZES = (2000, 10000)     # query, train when --name is not a protocol dataset
VARIABLES = {                     # role -> accepted MATLAB variable names
    "images": ("IAll", "images"),
    "text": ("YAll",),
    "labels": ("LAll",),
}


@dataclass
class MatVar:
    """One MATLAB variable, seen in MATLAB's axis order whatever stores it."""
    path: Path
    name: str
    data: object          # h5py.Dataset (lazy), numpy array or scipy sparse matrix
    reversed: bool        # True for v7.3: h5py shows MATLAB's axes reversed

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.data.shape)
        return shape[::-1] if self.reversed else shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Elements start:stop along MATLAB axis `axis`, all of the other axes,
        as a dense array in MATLAB's axis order. Only that block is read."""
        ndim = len(self.data.shape)
        index = [slice(None)] * ndim
        index[ndim - 1 - axis if self.reversed else axis] = slice(start, stop)
        block = self.data[tuple(index)]
        if scipy.sparse.issparse(block):
            block = block.toarray()
        return np.asarray(block).transpose() if self.reversed else np.asarray(block)

    def __str__(self) -> str:
        return f"{self.path}: variable {self.name}"


@dataclass
class Source:
    """The three variables and how to read pairs out of them."""
    images: MatVar
    text: MatVar
    labels: MatVar
    n: int                                  # pairs
    layout: tuple[int, int, int, int]       # image MATLAB axes: pair, height, width, channel
    text_axis: int                          # MATLAB axis of YAll along which pairs run
    label_axis: int

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.images.shape[self.layout[1]], self.images.shape[self.layout[2]]

    @property
    def vocab_size(self) -> int:
        return self.text.shape[1 - self.text_axis]

    @property
    def num_labels(self) -> int:
        return self.labels.shape[1 - self.label_axis]


def convert(src, out, *, name: str | None = None, vocabulary=None, label_names=None,
            n_query: int | None = None, n_train: int | None = None, seed: int = 0,
            image_size: int | None = None, overwrite: bool = False,
            chunk_rows: int | None = None) -> tuple[DatasetMeta, Report]:
    """Convert DCMH .mat file(s) `src` (one path or a list) into a dataset at `out`.
    `vocabulary` / `label_names` are optional name files; `name` defaults from the
    first file name; `chunk_rows` overrides the pairs read at a time."""
    paths = [Path(p) for p in ([src] if isinstance(src, (str, Path)) else src)]
    if not paths:
        raise ValueError("no .mat file given")
    name = name or default_name(paths[0])
    default_query, default_train = PROTOCOL_SIZES.get(name, DEFAULT_SIZES)
    n_query = default_query if n_query is None else n_query
    n_train = default_train if n_train is None else n_train
    with contextlib.ExitStack() as stack:       # closes the v7.3 files
        source = open_source(paths, stack)
        words = _names(vocabulary, source.vocab_size, "w", 4, source.text)
        label_list = _names(label_names, source.num_labels, "l", 2, source.labels)
        # Fail on a bad value now, not after hours of image encoding.
        check_values(source.text, source.text_axis, source.n, _counts_error, chunk_rows)
        check_values(source.labels, source.label_axis, source.n, _binary_error, chunk_rows)
        report = Report()
        with DatasetWriter(out, words, label_list, overwrite=overwrite) as writer:
            write_pairs(writer, report, source, chunk_rows, desc=name)
            extra = {"report": report.as_dict(),
                     "files": [str(p.resolve()) for p in paths],
                     "variables": _describe(source),
                     "vocabulary_file": str(Path(vocabulary).resolve()) if vocabulary else None,
                     "label_names_file": str(Path(label_names).resolve()) if label_names else None}
            meta = writer.finish(name=name, source="dcmh-mat",
                                 image_size=image_size or max(source.image_shape),
                                 n_query=n_query, n_train=n_train, seed=seed, extra=extra)
    return meta, report


def write_pairs(writer: DatasetWriter, report: Report, source: Source,
                chunk_rows: int | None, desc: str) -> None:
    """Stream the pairs, a chunk of rows of each variable at a time."""
    height, width = source.image_shape
    rows = chunk_rows or max(1, CHUNK_BYTES // (height * width * 3))
    n = source.n
    chunks = zip(range(0, n, rows),
                 read_chunks(source.images, source.layout[0], n, rows),
                 read_chunks(source.text, source.text_axis, n, rows),
                 read_chunks(source.labels, source.label_axis, n, rows))
    with progress(None, total=n, desc=desc) as bar:
        for start, images, text, labels in chunks:
            pixels = images.transpose(source.layout)           # (k, H, W, 3)
            text = _pairs_first(text, source.text_axis)
            labels = _pairs_first(labels, source.label_axis)
            for k in range(len(pixels)):
                _add_pair(writer, report, start + k, pixels[k], text[k], labels[k])
            bar.update(len(pixels))


def _describe(source: Source) -> dict:
    """Where each variable came from, for meta.json."""
    return {role: {"file": str(v.path.resolve()), "name": v.name,
                   "matlab_shape": list(v.shape), "mat_version": "7.3" if v.reversed else "5"}
            for role, v in (("images", source.images), ("text", source.text),
                            ("labels", source.labels))}



def default_name(path: Path) -> str:
    """nuswide / mirflickr / iapr when the file name says so, else its stem."""
    stem = Path(path).stem
    lower = stem.lower()
    if "nus" in lower:
        return "nuswide"
    if "flickr" in lower or "mir" in lower:
        return "mirflickr"
    if "iapr" in lower:
        return "iapr"
    return re.sub(r"-(iall|yall|lall)$", "", stem, flags=re.I)


# -- finding the variables ---------------------------------------------------------

def open_mat(path: Path, stack: contextlib.ExitStack) -> dict[str, Callable[[], MatVar]]:
    """Variable name -> function returning its MatVar, for one file. Nothing is
    read yet; a v7.3 file stays open until `stack` closes."""
    if not path.is_file():
        raise data_error(path, None, "file not found")
    if h5py.is_hdf5(path):
        f = stack.enter_context(h5py.File(path, "r"))
        return {key: (lambda key=key: _h5_variable(path, f, key))
                for key in f.keys() if not key.startswith("#")}
    try:
        names = [entry[0] for entry in scipy.io.whosmat(path)]
    except Exception as e:      # scipy raises several types for a non-MAT file
        raise data_error(path, None, f"not a MATLAB .mat file ({type(e).__name__}: {e})") from None
    return {key: (lambda key=key: MatVar(path, key, _load_v5(path, key), reversed=False))
            for key in names}


def _h5_variable(path: Path, f: h5py.File, key: str) -> MatVar:
    # Sparse matrices and structs are HDF5 groups; cells and chars are not numbers.
    if not isinstance(f[key], h5py.Dataset) or f[key].dtype.kind not in "uifb":
        raise data_error(path, None, f"variable {key} is not a full numeric matrix "
                                     "(save it with full() as a numeric array)")
    return MatVar(path, key, f[key], reversed=True)


def _load_v5(path: Path, key: str):
    data = scipy.io.loadmat(path, variable_names=[key])[key]
    if scipy.sparse.issparse(data):
        return data.tocsr()
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "uifb":
        raise data_error(path, None, f"variable {key} is not a numeric matrix")
    return data


def find_variables(paths: list[Path], stack: contextlib.ExitStack) -> dict[str, MatVar]:
    """role -> MatVar for images, text and labels, looked up across all files."""
    files = {path: open_mat(path, stack) for path in paths}
    found = {}
    for role, names in VARIABLES.items():
        hits = [(path, n) for path, variables in files.items() for n in names if n in variables]
        if not hits:
            listing = "; ".join(f"{p}: {', '.join(sorted(v)) or 'none'}" for p, v in files.items())
            raise DataError(f"no {' or '.join(names)} variable ({role}) in the given files "
                            f"(variables found: {listing})")
        if len(hits) > 1:
            where = ", ".join(f"{p}: {n}" for p, n in hits)
            raise DataError(f"{role} variable found more than once ({where}); pass one")
        path, key = hits[0]
        found[role] = files[path][key]()
    return found


def open_source(paths: list[Path], stack: contextlib.ExitStack) -> Source:
    """Find the variables and work out n and every axis (module docstring)."""
    found = find_variables(paths, stack)
    images, text, labels = found["images"], found["text"], found["labels"]
    n = pair_count(images, text, labels)
    return Source(images, text, labels, n, image_axes(images, n),
                  rows_axis(text, n), rows_axis(labels, n))


# -- shapes and axes -----------------------------------------------------------------

def pair_count(images: MatVar, text: MatVar, labels: MatVar) -> int:
    """n: the LAll dimension (rows first) that YAll and the image array share."""
    if len(labels.shape) != 2 or len(text.shape) != 2 or len(images.shape) != 4:
        raise DataError(f"expected 2-D {labels.name} and {text.name} and 4-D {images.name}, "
                        f"got {_shapes(images, text, labels)}")
    for n in dict.fromkeys(labels.shape):
        if n in text.shape and n in (images.shape[0], images.shape[-1]):
            return n
    raise DataError(f"row counts differ: {_shapes(images, text, labels)}")


def _shapes(*variables: MatVar) -> str:
    return "; ".join(f"{v} is {'x'.join(map(str, v.shape))}" for v in variables)


def image_axes(images: MatVar, n: int) -> tuple[int, int, int, int]:
    """MATLAB axes (pair, height, width, channel) of the 4-D image array."""
    if images.dtype != np.uint8:
        raise data_error(images.path, None, f"variable {images.name} is {images.dtype}, "
                                            "expected uint8 pixels")
    shape = images.shape
    readings = [(p, c) for p in (3, 0) if shape[p] == n
                for c in range(4) if c != p and shape[c] == 3]
    if len(readings) > 1:      # side == n or 3: the DCMH layouts, channel beside pairs
        readings = [(p, c) for p, c in readings if abs(p - c) == 1]
    if len(readings) != 1:
        raise data_error(images.path, None, f"variable {images.name} is "
                                            f"{'x'.join(map(str, shape))}: expected n x 3 x H x W "
                                            f"or H x W x 3 x n with n = {n}")
    pair, channel = readings[0]
    height, width = [a for a in range(4) if a not in (pair, channel)]
    return pair, height, width, channel


def rows_axis(var: MatVar, n: int) -> int:
    """0 if the pairs run along MATLAB rows (n x width), else 1."""
    return 0 if var.shape[0] == n else 1


def _pairs_first(block: np.ndarray, axis: int) -> np.ndarray:
    return block if axis == 0 else block.T


# -- reading and checking ------------------------------------------------------------

def read_chunks(var: MatVar, axis: int, n: int, rows: int) -> Iterator[np.ndarray]:
    """Blocks of at most `rows` pairs along `axis`, in order (never the whole array)."""
    for start in range(0, n, rows):
        yield var.read(axis, start, min(start + rows, n))


def check_values(var: MatVar, axis: int, n: int, find_error, chunk_rows: int | None) -> None:
    """Run `find_error(values) -> (row, message) | None` over the pair rows of `var`."""
    width = var.shape[1 - axis]
    rows = chunk_rows or max(1, CHUNK_BYTES // (8 * max(1, width)))
    for start, block in zip(range(0, n, rows), read_chunks(var, axis, n, rows)):
        error = find_error(_pairs_first(block, axis))
        if error is not None:
            row, message = error
            raise data_error(var.path, None, f"variable {var.name}, row {start + row} "
                                             f"(0-based): {message}")


def _first_bad(bad: np.ndarray, values: np.ndarray, what: str):
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), f"column {col} (0-based) is {values[row, col].item()!r}, expected {what}"


def _counts_error(values: np.ndarray):
    if values.dtype.kind in "ub":
        return None
    bad = ~(np.isfinite(values) & (values >= 0) & (values == np.floor(values)))
    return _first_bad(bad, values, "a non-negative integer count")


def _binary_error(values: np.ndarray):
    return _first_bad((values != 0) & (values != 1), values, "0 or 1")


def _names(path, count: int, prefix: str, digits: int, var: MatVar) -> list[str]:
    """Names from a one-per-line file (count checked against `var`), else placeholders."""
    if path is None:
        digits = max(digits, len(str(count - 1)))
        return [f"{prefix}{i:0{digits}d}" for i in range(count)]
    return read_names(Path(path), count)


def _add_pair(writer: DatasetWriter, report: Report, pair_id: int, pixels: np.ndarray,
              counts: np.ndarray, label_row: np.ndarray) -> None:
    labels = np.flatnonzero(label_row)
    words = np.flatnonzero(counts)
    if not len(labels):
        report.drop("no label", f"row {pair_id}")
    elif not len(words):
        report.drop("no vocabulary word", f"row {pair_id}")
    else:
        text = np.repeat(words, counts[words].astype(np.int64))   # a count of 2 = index twice
        writer.add(pair_id, text.tolist(), labels.tolist(),
                   image=encode_png(np.ascontiguousarray(pixels)))
        report.kept += 1
