"""IAPR TC-12 (official iaprtc12.tgz layout) + a labels file -> hashgan-ray dataset.

    hashgan-ray data convert iapr --src iaprtc12 --labels labels.txt --out data/iapr

SRC holds the unpacked distribution:

    images/<NN>/<id>.jpg                       the photographs (`--images` to look elsewhere)
    annotations_complete_eng/<NN>/<id>.eng     one English record per image (`--annotations`)

Decisions:

* Pairs are the `<NN>/<id>.eng` records under the annotation directory; an
  image without a record is not a pair.
* A record is read as UTF-8, or as ISO-8859-1 when it is not valid UTF-8 (most
  are Latin-1), and parsed with a regex, not an XML parser: the files are not
  well-formed XML (bare `&`, stray characters). An element's text runs from
  `<TAG>` to the next tag, so a missing closing tag does not swallow the file.
  SGML entities (`&amp;`, `&eacute;`) are unescaped.
* The image is the one `<IMAGE>` names (`images/00/25.jpg`, relative to SRC):
  its first component is replaced by the image directory, so `--images` moves
  it. Without `<IMAGE>` the image is IMAGES/<NN>/<id>.jpg beside the record.
* Pair id = the image number, the integer stem of the image file (`25` for
  `25.jpg`). IAPR numbers images uniquely across folders, so two records naming
  the same number are an error, as is a stem that is not an integer.
* Text: the `<DESCRIPTION>` (a record without one is an error naming the file).
  Tokenizer: lowercase, then every run of two or more letters is a word (Unicode
  letters, so `café` is one word; digits, punctuation and apostrophes split,
  and one-letter pieces such as the `s` of `woman's` are dropped). Words on the
  short English stop-word list below are removed. The vocabulary is every word
  found in at least `--min-word-count` descriptions of labelled images (default
  5, a usual document-frequency cut that keeps the words frequent enough to
  learn from; the size it gives on the full collection has not been checked
  against the paper's 2,912 dimensions), sorted alphabetically. A pair's text is
  the index of each of its vocabulary words, repeated once per occurrence.
* Labels come from `--labels FILE`, a format defined here: one line per image,
  `<image key> <label> [<label> ...]`, whitespace-separated, `#` starts a
  comment, blank lines are ignored. The key is the image's path under the image
  directory without extension (`00/25`) or the bare image number (`25`, which
  is unambiguous since numbers are unique). Label names are free words without
  whitespace or `#`; `label_names` = the sorted distinct names in the file (so
  a label may end up with no kept pair). A key naming no record, or an image
  given two lines, is an error naming the file and line.
* A pair is dropped, for the first reason that applies, and counted in the
  report: "no label" (no line in the labels file, or a line with no label),
  "no vocabulary word" (empty description or none of its words in the
  vocabulary), "missing image", "unreadable image" (the JPEG does not decode).
"""
from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hashgan_ray.data.convert.common import (Report, add_pair_or_drop, progress, read_lines,
                                             read_text, tokenize)
from hashgan_ray.data.format import DatasetMeta, DatasetWriter, data_error
from hashgan_ray.data.splits import PROTOCOL_SIZES

DEFAULT_MIN_WORD_COUNT = 5
@dataclass
class Record:
    """What one .eng file contributes: where its image is and its words."""
    eng: Path
    image: Path
    key: str            # <NN>/<stem>, the labels-file key
    id: int
    words: list[str]    # description tokens, stop words removed, in order


def convert(src, out, *, labels, images=None, annotations=None,
            min_word_count: int = DEFAULT_MIN_WORD_COUNT,
            n_query: int = PROTOCOL_SIZES["iapr"][0], n_train: int = PROTOCOL_SIZES["iapr"][1],
            seed: int = 0, image_size: int = 224, link_images: bool = False,
            overwrite: bool = False) -> tuple[DatasetMeta, Report]:
    """Convert IAPR TC-12 under `src`, labelled by the file `labels`, into `out`.
    `images` / `annotations` default to SRC/images and SRC/annotations_complete_eng."""
    if min_word_count < 1:
        raise ValueError(f"min_word_count must be at least 1, got {min_word_count}")
    src = Path(src)
    image_dir = Path(images) if images is not None else src / "images"
    annotation_dir = (Path(annotations) if annotations is not None
                      else src / "annotations_complete_eng")
    if not image_dir.is_dir():
        raise data_error(image_dir, None, "image directory not found (set --images)")
    records = read_records(annotation_dir, image_dir)
    labels_of = read_labels(Path(labels), records)
    label_names = sorted({name for names in labels_of.values() for name in names})
    if not label_names:
        raise data_error(labels, None, "no labels in the file")
    vocabulary = build_vocabulary([r.words for r in records if labels_of.get(r.id)],
                                  min_word_count)
    if not vocabulary:
        raise data_error(annotation_dir, None,
                         f"no word occurs in at least {min_word_count} descriptions of "
                         "labelled images; lower --min-word-count")

    report = Report()
    column = "image_path" if link_images else "image"
    with DatasetWriter(out, vocabulary, label_names, image_column=column,
                       overwrite=overwrite) as writer:
        write_pairs(writer, report, records, labels_of, link_images)
        extra = {"report": report.as_dict(), "src": str(src.resolve()),
                 "images": str(image_dir.resolve()),
                 "annotations": str(annotation_dir.resolve()),
                 "labels_file": str(Path(labels).resolve()),
                 "min_word_count": min_word_count}
        meta = writer.finish(name="iapr", source="iapr", image_size=image_size,
                             n_query=n_query, n_train=n_train, seed=seed, extra=extra)
    return meta, report


def write_pairs(writer: DatasetWriter, report: Report, records: list[Record],
                labels_of: dict[int, list[str]], link_images: bool) -> None:
    """Stream every record that keeps a label, a word and a readable image."""
    word_index = {w: i for i, w in enumerate(writer.vocabulary)}
    label_index = {name: i for i, name in enumerate(writer.label_names)}
    for record in progress(records, total=len(records), desc="iapr"):
        names = labels_of.get(record.id)
        text = sorted(word_index[w] for w in record.words if w in word_index)
        if not names:
            report.drop("no label", str(record.eng))
        elif not text:
            report.drop("no vocabulary word", str(record.eng))
        else:
            add_pair_or_drop(writer, report, record.id, record.image, text, sorted(label_index[n] for n in names),
                      link_images)



# -- annotation records ------------------------------------------------------------

def element(text: str, tag: str) -> tuple[str, int] | None:
    """Text of the first <tag> element and the line it starts on, or None.
    The value ends at the next tag, closing or not (records are not strict XML)."""
    m = re.search(rf"<{tag}\s*>(.*?)(?=<\s*/?\s*[A-Za-z]+\s*>|\Z)", text, re.S | re.I)
    if m is None:
        return None
    return html.unescape(m.group(1)).strip(), text.count("\n", 0, m.start()) + 1


def read_records(annotation_dir: Path, image_dir: Path) -> list[Record]:
    """One Record per <NN>/<id>.eng file; duplicate image numbers are an error."""
    if not annotation_dir.is_dir():
        raise data_error(annotation_dir, None, "annotation directory not found (set --annotations)")
    paths = sorted(annotation_dir.glob("*/*.eng"))
    if not paths:
        raise data_error(annotation_dir, None, "no <NN>/<id>.eng annotation files")
    records, first = [], {}
    for path in paths:
        record = parse_record(path, image_dir)
        if record.id in first:
            raise data_error(path, None, f"image number {record.id} is also named by "
                                         f"{first[record.id]}")
        first[record.id] = path
        records.append(record)
    return records


def parse_record(path: Path, image_dir: Path) -> Record:
    """The Record of one .eng file (module docstring: encoding, elements, image)."""
    text = read_text(path)
    description = element(text, "DESCRIPTION")
    if description is None:
        raise data_error(path, None, "no <DESCRIPTION> element")
    image_element = element(text, "IMAGE")
    image = _image_path(image_element, path, image_dir)
    if not re.fullmatch(r"[0-9]+", image.stem):
        raise data_error(path, image_element[1] if image_element else None,
                         f"image {image.name!r}: the file stem is not an image number")
    pair_id = int(image.stem)
    return Record(path, image, f"{image.parent.name}/{image.stem}", pair_id,
                  tokenize(description[0]))


def _image_path(found: tuple[str, int] | None, eng: Path, image_dir: Path) -> Path:
    """IMAGES/ + the <IMAGE> path without its first component (`images/`), or,
    without an <IMAGE> element, IMAGES/<NN>/<id>.jpg after the record's name."""
    if found and found[0]:
        parts = PurePosixPath(found[0].replace("\\", "/")).parts
        return image_dir.joinpath(*(parts[1:] if len(parts) > 1 else parts))
    return image_dir / eng.parent.name / f"{eng.stem}.jpg"


def build_vocabulary(texts: list[list[str]], min_count: int) -> list[str]:
    """Sorted words found in at least `min_count` of `texts` (document frequency)."""
    df = Counter(w for words in texts for w in set(words))
    return sorted(w for w, n in df.items() if n >= min_count)


# -- labels file -------------------------------------------------------------------

def read_labels(path: Path, records: list[Record]) -> dict[int, list[str]]:
    """Pair id -> label names (distinct, possibly empty) from the labels file."""
    by_key = {r.key: r.id for r in records}
    ids = set(by_key.values())
    labels, line_of = {}, {}
    for lineno, line in enumerate(read_lines(path), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key, names = fields[0], fields[1:]
        pair_id = _lookup(key, by_key, ids)
        if pair_id is None:
            raise data_error(path, lineno, f"unknown image {key!r}: no annotation record "
                                           "for it (keys look like '00/25' or '25')")
        if pair_id in line_of:
            raise data_error(path, lineno, f"image {key!r} already has labels on line "
                                           f"{line_of[pair_id]}")
        line_of[pair_id] = lineno
        labels[pair_id] = sorted(set(names))
    return labels


def _lookup(key: str, by_key: dict[str, int], ids: set[int]) -> int | None:
    """Pair id of a `00/25` or `25` key, None when no record has it."""
    if "/" in key:
        return by_key.get(key)
    if re.fullmatch(r"[0-9]+", key) and int(key) in ids:
        return int(key)
    return None


