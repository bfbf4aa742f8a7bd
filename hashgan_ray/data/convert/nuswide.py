"""NUS-WIDE (official distribution layout) -> hashgan-ray dataset.

    hashgan-ray data convert nuswide --src NUS-WIDE --out data/nuswide

SRC holds the unpacked official files:

    ImageList/Imagelist.txt              one image per line (Windows paths)
    NUS_WID_Tags/TagList1k.txt           the 1,000 tag words = the text vocabulary
    NUS_WID_Tags/AllTags1k.txt           one 0/1 row of 1,000 tags per image
    ConceptsList/Concepts81.txt          the 81 concept names
    Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 per line per image
    Flickr/<dir>/<file>.jpg              the images (`--images` to look elsewhere)

Decisions:

* Pair id = line number in Imagelist.txt minus 1. Every per-image file is
  aligned to that order, so the id is stable across runs and options.
* An image path is resolved as IMAGES/<dir>/<file>, the last two components of
  the Windows path (`C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg` ->
  `actor/0001_2124494179.jpg`).
* Labels: the `top_concepts` concepts carried by the most images (counted over
  all images). Ties in frequency go to the concept listed first in
  Concepts81.txt. The kept concepts keep their Concepts81.txt order in
  `label_names`; their frequencies are recorded in meta.json
  (extra.concept_counts).
* Text: the sorted indices of the tags set in the image's AllTags1k.txt row.
* An image is dropped, for the first reason that applies, with the reason
  counted in the report: "no top concept label", "no tags" (all-zero tag row: a
  text query needs words, so the kept count is somewhat below DCMH's 195,834),
  "missing image", "unreadable image" (the JPEG does not decode).
* Malformed annotation files are errors (DataError naming file and line), since
  a misaligned or garbled file would silently mislabel every later image: a tag
  row without exactly one value per vocabulary word, a value other than 0/1, a
  label file or tag matrix whose length differs from Imagelist.txt, a concept
  without its Labels_ file, an empty or duplicated tag/concept name, an image
  line that is not a path. Blank lines at the end of a file are ignored.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hashgan_ray.data.convert.common import (Report, add_pair_or_drop, parse_binary_row,
                                             progress, read_lines, read_names)
from hashgan_ray.data.format import DatasetMeta, DatasetWriter, data_error
from hashgan_ray.data.splits import PROTOCOL_SIZES

IMAGE_LIST = Path("ImageList/Imagelist.txt")
TAG_LIST = Path("NUS_WID_Tags/TagList1k.txt")
TAG_MATRIX = Path("NUS_WID_Tags/AllTags1k.txt")
CONCEPT_LIST = Path("ConceptsList/Concepts81.txt")
LABEL_DIR = Path("Groundtruth/AllLabels")
BINARY = {"0", "1"}


def convert(src, out, *, images=None, top_concepts: int = 21,
            n_query: int = PROTOCOL_SIZES["nuswide"][0], n_train: int = PROTOCOL_SIZES["nuswide"][1],
            seed: int = 0, image_size: int = 224, link_images: bool = False,
            overwrite: bool = False) -> tuple[DatasetMeta, Report]:
    """Convert the NUS-WIDE files under `src` into a dataset at `out`.
    `images` is the image root (default SRC/Flickr)."""
    src = Path(src)
    image_root = Path(images) if images is not None else src / "Flickr"
    vocabulary = read_names(src / TAG_LIST)
    concepts = read_names(src / CONCEPT_LIST)
    image_files = _image_files(src / IMAGE_LIST)
    if not image_root.is_dir():
        raise data_error(image_root, None, "image directory not found (set --images)")
    label_names, label_matrix, concept_counts = _top_concepts(
        src, concepts, top_concepts, len(image_files))
    _check_row_count(src / TAG_MATRIX, len(image_files))

    report = Report()
    column = "image_path" if link_images else "image"
    with DatasetWriter(out, vocabulary, label_names, image_column=column,
                       overwrite=overwrite) as writer:
        rows = zip(image_files, _tag_rows(src / TAG_MATRIX, len(vocabulary)), label_matrix)
        for pair_id, (image_file, text, label_row) in enumerate(
                progress(rows, total=len(image_files), desc="nuswide")):
            labels = np.flatnonzero(label_row).tolist()
            if not labels:
                report.drop("no top concept label", image_file)
            elif not text:
                report.drop("no tags", image_file)
            else:
                add_pair_or_drop(writer, report, pair_id, image_root / image_file, text, labels,
                          link_images)
        extra = {"report": report.as_dict(), "src": str(src.resolve()),
                 "images": str(image_root.resolve()), "top_concepts": top_concepts,
                 "concept_counts": concept_counts}
        meta = writer.finish(name="nuswide", source="nuswide", image_size=image_size,
                             n_query=n_query, n_train=n_train, seed=seed, extra=extra)
    return meta, report



# -- reading the annotation files ------------------------------------------------

def _image_files(image_list: Path) -> list[str]:
    """`<dir>/<file>` of each image, in Imagelist.txt order. Kept as strings,
    not Paths: a quarter of a million Path objects costs real memory."""
    files = []
    for lineno, line in enumerate(read_lines(image_list), 1):
        parts = [p for p in re.split(r"[\\/]", line.strip()) if p]
        if len(parts) < 2:
            raise data_error(image_list, lineno,
                             f"expected an image path like C:\\ImageData\\Flickr\\actor\\"
                             f"0001_2124494179.jpg, found {line!r}")
        files.append(f"{parts[-2]}/{parts[-1]}")
    if not files:
        raise data_error(image_list, None, "no images listed")
    return files


def _read_label_file(path: Path, n_images: int) -> np.ndarray:
    """Boolean column of one Labels_<concept>.txt, checked against the image count."""
    lines = read_lines(path)
    if len(lines) != n_images:
        raise data_error(path, min(len(lines), n_images) + 1,
                         f"{len(lines)} lines, but {IMAGE_LIST} lists {n_images} images")
    values = [line.strip() for line in lines]
    if not set(values) <= BINARY:
        # Slow path only to name the first bad line.
        for lineno, line in enumerate(lines, 1):
            parse_binary_row(line, path, lineno, 1)
    return np.array(values) == "1"


def _top_concepts(src: Path, concepts: list[str], k: int, n_images: int):
    """Label names, (n_images, k) bool matrix and frequencies of the k most frequent
    concepts, in Concepts81.txt order."""
    if not 1 <= k <= len(concepts):
        raise ValueError(f"top_concepts must be between 1 and {len(concepts)}, got {k}")
    columns = []
    for concept in concepts:
        path = src / LABEL_DIR / f"Labels_{concept}.txt"
        if not path.is_file():
            raise data_error(path, None, f"missing: no label file for concept {concept!r} "
                                         f"listed in {CONCEPT_LIST}")
        columns.append(_read_label_file(path, n_images))
    counts = [int(c.sum()) for c in columns]
    # A stable sort keeps Concepts81.txt order among equal counts: ties go to the first listed.
    top = sorted(np.argsort(-np.array(counts), kind="stable")[:k].tolist())
    matrix = np.stack([columns[i] for i in top], axis=1)
    return [concepts[i] for i in top], matrix, {concepts[i]: counts[i] for i in top}


def _check_row_count(tag_matrix: Path, n_images: int) -> None:
    """Fail before hours of image reading, not after, if AllTags1k.txt is misaligned."""
    if not tag_matrix.is_file():
        raise data_error(tag_matrix, None, "file not found")
    with open(tag_matrix, "rb") as f:
        rows = sum(1 for line in f if line.strip())
    if rows != n_images:
        raise data_error(tag_matrix, None,
                         f"{rows} rows, but {IMAGE_LIST} lists {n_images} images")


def _tag_rows(path: Path, width: int):
    """Stream the tag indices of each AllTags1k.txt row (the file is ~0.5 GB)."""
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            values = line.split()
            if len(values) != width or not set(values) <= BINARY:
                parse_binary_row(line, path, lineno, width)  # raises, naming the fault
            yield [i for i, v in enumerate(values) if v == "1"]


