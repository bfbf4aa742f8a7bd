"""MIRFlickr-25K (the two official archives, unpacked) -> hashgan-ray dataset.

    hashgan-ray data convert mirflickr --src mirflickr --out data/mirflickr

mirflickr25k.zip unpacks to `mirflickr/im1.jpg ... im25000.jpg` and
`mirflickr/meta/tags/tags1.txt ...`; pass that `mirflickr` directory as SRC.
mirflickr25k_annotations_v080.zip holds `<concept>.txt`, `<concept>_r1.txt` and
README.txt; unpack it to SRC/annotations (or point `--annotations` at it).

Decisions:

* The images are enumerated by the tags directory: N runs from 1 to the largest
  N of a `tags<N>.txt` file, and every N in that range must have its tags file
  (an empty file means no tags). The image itself may be missing (a drop, see
  below), so the image directory does not define the enumeration.
* Pair id = N - 1 for im<N>.jpg: the 0-based index of the image, as for the
  other converters; stable across runs and options.
* Tags are one per line, stripped and lowercased; a tag repeated on an image
  counts once (text is binary, like the DCMH bag of words).
* Vocabulary = the tags on at least `min_tag_count` images (counted over all
  images, before any drop), sorted by code point (Python's `sorted`).
* Labels: each `<concept>.txt` lists the 1-based numbers of the images carrying
  the concept. `*_r1.txt` (the "relevant" subsets) and README.txt are not
  concepts and are ignored. label_names = the concept file stems, sorted.
* An image is dropped, for the first reason that applies, with the reason
  counted in the report: "no label", "no vocabulary tag", "missing image",
  "unreadable image" (the JPEG does not decode).
* Errors (DataError naming file and line): an annotation line that is not a
  positive integer or names an image past the last one (it would label the
  wrong image or none), a tags file missing inside 1..N, no concept files.
  Blank lines in annotation files are skipped.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hashgan_ray.data.convert.common import Report, add_pair_or_drop, progress, read_lines
from hashgan_ray.data.format import DatasetMeta, DatasetWriter, data_error
from hashgan_ray.data.splits import PROTOCOL_SIZES

TAGS_FILE = re.compile(r"tags([1-9][0-9]*)\.txt")
IMAGE_NUMBER = re.compile(r"[0-9]+")


def convert(src, out, *, images=None, tags=None, annotations=None, min_tag_count: int = 20,
            n_query: int = PROTOCOL_SIZES["mirflickr"][0],
            n_train: int = PROTOCOL_SIZES["mirflickr"][1], seed: int = 0, image_size: int = 224,
            link_images: bool = False, overwrite: bool = False) -> tuple[DatasetMeta, Report]:
    """Convert MIRFlickr-25K into a dataset at `out`. `images` (default SRC), `tags`
    (default SRC/meta/tags) and `annotations` (default SRC/annotations) override
    where each part was unpacked."""
    src = Path(src)
    image_dir = Path(images) if images is not None else src
    tag_dir = Path(tags) if tags is not None else src / "meta" / "tags"
    annotation_dir = Path(annotations) if annotations is not None else src / "annotations"
    if not image_dir.is_dir():
        raise data_error(image_dir, None, "image directory not found (set --images)")
    image_tags = _read_tags(tag_dir)
    n_images = len(image_tags)
    label_names, image_labels = _read_annotations(annotation_dir, n_images)
    vocabulary = _vocabulary(image_tags, min_tag_count, tag_dir)
    word_ids = {word: i for i, word in enumerate(vocabulary)}

    report = Report()
    column = "image_path" if link_images else "image"
    with DatasetWriter(out, vocabulary, label_names, image_column=column,
                       overwrite=overwrite) as writer:
        for pair_id in progress(range(n_images), total=n_images, desc="mirflickr"):
            image = image_dir / f"im{pair_id + 1}.jpg"
            text = sorted(word_ids[t] for t in image_tags[pair_id] if t in word_ids)
            if not image_labels[pair_id]:
                report.drop("no label", image.name)
            elif not text:
                report.drop("no vocabulary tag", image.name)
            else:
                add_pair_or_drop(writer, report, pair_id, image, text, image_labels[pair_id],
                          link_images)
        extra = {"report": report.as_dict(), "src": str(src.resolve()),
                 "images": str(image_dir.resolve()), "tags": str(tag_dir.resolve()),
                 "annotations": str(annotation_dir.resolve()),
                 "min_tag_count": min_tag_count, "n_images": n_images}
        meta = writer.finish(name="mirflickr", source="mirflickr", image_size=image_size,
                             n_query=n_query, n_train=n_train, seed=seed, extra=extra)
    return meta, report



# -- reading tags and annotations ------------------------------------------------

def _read_tags(tag_dir: Path) -> list[set[str]]:
    """The tag set of each image, index N - 1 for tags<N>.txt."""
    if not tag_dir.is_dir():
        raise data_error(tag_dir, None, "tags directory not found (set --tags)")
    numbers = [int(m.group(1)) for p in tag_dir.iterdir() if (m := TAGS_FILE.fullmatch(p.name))]
    if not numbers:
        raise data_error(tag_dir, None, "no tags<N>.txt files")
    n_images = max(numbers)
    tags = []
    for n in range(1, n_images + 1):
        path = tag_dir / f"tags{n}.txt"
        if not path.is_file():
            # A gap would shift nothing but silently lose an image's text; say so.
            raise data_error(path, None, f"missing, but tags{n_images}.txt exists: "
                                         f"images 1..{n_images} each need a tags file")
        tags.append({line.strip().lower() for line in read_lines(path) if line.strip()})
    return tags


def _concept_files(annotation_dir: Path) -> list[Path]:
    """`<concept>.txt` files sorted by concept; not README.txt nor the `_r1` subsets."""
    if not annotation_dir.is_dir():
        raise data_error(annotation_dir, None, "annotations directory not found "
                                               "(set --annotations)")
    files = [p for p in annotation_dir.glob("*.txt")
             if not p.stem.endswith("_r1") and p.stem.lower() != "readme"]
    if not files:
        raise data_error(annotation_dir, None, "no <concept>.txt annotation files")
    return sorted(files, key=lambda p: p.stem)


def _read_concept(path: Path, n_images: int) -> set[int]:
    """0-based ids of the images listed (1-based) in one concept file."""
    ids = set()
    for lineno, line in enumerate(read_lines(path), 1):
        value = line.strip()
        if not value:
            continue
        if not IMAGE_NUMBER.fullmatch(value) or not 1 <= int(value) <= n_images:
            raise data_error(path, lineno,
                             f"expected an image number in 1..{n_images}, found {value!r}")
        ids.add(int(value) - 1)
    return ids


def _read_annotations(annotation_dir: Path, n_images: int) -> tuple[list[str], list[list[int]]]:
    """Label names and each image's sorted label indices."""
    files = _concept_files(annotation_dir)
    labels: list[list[int]] = [[] for _ in range(n_images)]
    for label, path in enumerate(files):   # increasing label, so each list comes out sorted
        for image_id in sorted(_read_concept(path, n_images)):
            labels[image_id].append(label)
    return [p.stem for p in files], labels


def _vocabulary(image_tags: list[set[str]], min_count: int, tag_dir: Path) -> list[str]:
    """Tags on at least `min_count` images, sorted."""
    if min_count < 1:
        raise ValueError(f"min_tag_count must be at least 1, got {min_count}")
    counts = Counter(tag for tags in image_tags for tag in tags)
    vocabulary = sorted(tag for tag, n in counts.items() if n >= min_count)
    if not vocabulary:
        raise data_error(tag_dir, None, f"no tag occurs on {min_count} or more images; "
                                        "lower --min-tag-count")
    return vocabulary


