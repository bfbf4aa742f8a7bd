"""IAPR TC-12 converter on a tiny copy of the official layout."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from hashgan_ray.cli import build_parser, main
from hashgan_ray.data.convert import iapr
from hashgan_ray.data.format import DataError, read_pairs

# key -> description. The Latin-1 byte of "café" in 00/25, an entity in 00/27,
# a bare "&" in 00/25 and 01/1001. Words by hand, with min_word_count=2 over the
# labelled records (00/29 has no labels line, so its "lake" does not count):
VOCAB = ["blue", "café", "church", "front", "house", "mountains", "red", "sky", "white", "yellow"]
DESCRIPTIONS = {
    "00/25": "A yellow house & a white church; the café is yellow.",
    "00/26": "White house with a red roof in front of the mountains",   # no <IMAGE>
    "00/27": "Red caf&eacute; in front of the church",                  # no closing tag
    "00/28": "the and of",                                              # only stop words
    "00/29": "a blue lake",                                             # no labels line
    "01/1001": "mountains & a lake under a blue sky",
    "01/1002": "blue sky over the red mountains",
    "01/1003": "a white church",                                        # image missing
    "01/1004": "yellow house",                                          # corrupt JPEG
    "01/1005": "a boat on the lake",                                    # empty labels line
}
LABELS_FILE = """\
# test labels: <key> <label> ...
00/25 building city city   # a repeated label counts once
00/26 mountain building
00/27 building

00/28 city
01/1001 sky mountain
1002 sky
01/1003 building
01/1004 building
01/1005
"""
LABEL_NAMES = ["building", "city", "mountain", "sky"]
EXPECTED = {   # id -> (text, labels)
    25: ([1, 2, 4, 8, 9, 9], [0, 1]),
    26: ([3, 4, 5, 6, 8], [0, 2]),
    27: ([1, 2, 3, 6], [0]),
    1001: ([0, 5, 7], [2, 3]),
    1002: ([0, 5, 6, 7], [3]),
}


def eng_record(key: str, description: str | None) -> str:
    """A record like the official ones; 00/27 lacks </DESCRIPTION>, 00/26 <IMAGE>."""
    lines = ["<DOC>", f"<DOCNO>annotations/{key}.eng</DOCNO>", "<TITLE>Plaza de Armas</TITLE>"]
    if description is not None:
        closing = "" if key == "00/27" else "</DESCRIPTION>"
        lines.append(f"<DESCRIPTION>{description}{closing}")
    lines += ["<NOTES></NOTES>", "<LOCATION>Cusco, Perú</LOCATION>", "<DATE>March 2002</DATE>"]
    if key != "00/26":
        lines.append(f"<IMAGE>images/{key}.jpg</IMAGE>")
    lines += [f"<THUMBNAIL>thumbnails/{key}.jpg</THUMBNAIL>", "</DOC>", ""]
    return "\n".join(lines)


def make_iapr(root: Path, descriptions=DESCRIPTIONS, labels=LABELS_FILE) -> tuple[Path, Path]:
    """SRC with images/<NN>/<id>.jpg, annotations_complete_eng/<NN>/<id>.eng, and a labels file."""
    src = root / "iaprtc12"
    for i, (key, description) in enumerate(descriptions.items()):
        eng = src / "annotations_complete_eng" / f"{key}.eng"
        eng.parent.mkdir(parents=True, exist_ok=True)
        eng.write_bytes(eng_record(key, description).encode("latin-1"))
        image = src / "images" / f"{key}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        if key == "01/1003":
            continue
        if key == "01/1004":
            image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
            continue
        Image.new("RGB", (12, 9), (20 * i, 100, 200 - 10 * i)).save(image, quality=90)
    labels_path = root / "labels.txt"
    labels_path.write_text(labels)
    return src, labels_path


def leftovers(out: Path) -> list[str]:
    """The output directory or a hidden temp directory beside it, if any remain."""
    if not out.parent.exists():
        return []
    return sorted(p.name for p in out.parent.iterdir())


def test_records_are_latin1_and_tolerant(tmp_path):
    src, _ = make_iapr(tmp_path)
    raw = (src / "annotations_complete_eng/00/25.eng").read_bytes()
    assert b"caf\xe9" in raw and b" & " in raw       # the fixture is what it claims
    record = iapr.parse_record(src / "annotations_complete_eng/00/25.eng", src / "images")
    assert record.id == 25 and record.key == "00/25"
    assert record.image == src / "images/00/25.jpg"
    assert record.words == ["yellow", "house", "white", "church", "café", "yellow"]
    no_close = iapr.parse_record(src / "annotations_complete_eng/00/27.eng", src / "images")
    assert no_close.words == ["red", "café", "front", "church"]


def test_tokenizer():
    assert iapr.tokenize("The woman's CAFÉ, 2 dogs & a cat_x; in-front") == [
        "woman", "café", "dogs", "cat", "front"]


def test_convert_values(tmp_path):
    src, labels = make_iapr(tmp_path)
    out = tmp_path / "out" / "iapr"
    meta, report = iapr.convert(src, out, labels=labels, min_word_count=2,
                                n_query=1, n_train=2, seed=3)
    assert meta.name == meta.source == "iapr"
    assert meta.vocabulary == VOCAB
    assert meta.label_names == LABEL_NAMES
    assert meta.counts == {"query": 1, "train": 2, "database": 2, "total": 5}
    assert report.kept == 5
    assert dict(report.dropped) == {"no label": 2, "no vocabulary word": 1,
                                    "missing image": 1, "unreadable image": 1}
    assert meta.extra["report"]["dropped"] == dict(report.dropped)
    assert meta.extra["min_word_count"] == 2

    table = read_pairs(out).sort_by("id").to_pylist()
    assert [row["id"] for row in table] == sorted(EXPECTED)
    for row in table:
        text, row_labels = EXPECTED[row["id"]]
        assert row["text"] == text
        assert row["labels"] == row_labels
        key = "00" if row["id"] < 1000 else "01"
        assert row["image"] == (src / "images" / key / f"{row['id']}.jpg").read_bytes()


def test_link_images(tmp_path):
    src, labels = make_iapr(tmp_path)
    out = tmp_path / "linked"
    meta, _ = iapr.convert(src, out, labels=labels, min_word_count=2, n_query=1, n_train=1,
                           link_images=True)
    assert meta.image_column == "image_path"
    rows = read_pairs(out).sort_by("id").to_pylist()
    assert rows[0]["image_path"] == str((src / "images/00/25.jpg").resolve())


def test_images_elsewhere(tmp_path):
    src, labels = make_iapr(tmp_path)
    moved = tmp_path / "elsewhere"
    (src / "images").rename(moved)
    meta, report = iapr.convert(src, tmp_path / "out", labels=labels, images=moved,
                                min_word_count=2, n_query=1, n_train=1)
    assert report.kept == 5 and meta.extra["images"] == str(moved.resolve())


def test_threshold_too_high(tmp_path):
    src, labels = make_iapr(tmp_path)
    # The default (5) keeps no word of ten records: a clear error, not an empty dataset.
    with pytest.raises(DataError, match="no word occurs in at least 5 descriptions"):
        iapr.convert(src, tmp_path / "out", labels=labels, n_query=1, n_train=1)


def test_cli_run(tmp_path, capsys):
    src, labels = make_iapr(tmp_path)
    out = tmp_path / "cli"
    argv = ["data", "convert", "iapr", "--src", str(src), "--labels", str(labels),
            "--out", str(out), "--min-word-count", "2", "--query", "2", "--train", "2"]
    args = build_parser().parse_args(argv)
    assert (args.images, args.annotations, args.link_images) == (None, None, False)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pairs kept: 5" in printed and "no vocabulary word: 1" in printed
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize("line, lineno", [("00/99 building", 3), ("9999 sky", 3),
                                          ("02/25 sky", 3)])
def test_unknown_image_in_labels(tmp_path, line, lineno):
    src, labels = make_iapr(tmp_path, labels=f"00/25 city\n# comment\n{line}\n")
    out = tmp_path / "out" / "iapr"
    with pytest.raises(DataError, match=re.escape(f"{labels}:{lineno}: unknown image")):
        iapr.convert(src, out, labels=labels, min_word_count=2, n_query=1, n_train=1)
    assert leftovers(out) == []


def test_image_given_twice_in_labels(tmp_path):
    src, labels = make_iapr(tmp_path, labels="00/25 city\n25 building\n")
    message = f"{labels}:2: image '25' already has labels on line 1"
    with pytest.raises(DataError, match=re.escape(message)):
        iapr.convert(src, tmp_path / "out", labels=labels, n_query=1, n_train=1)


def test_missing_description(tmp_path):
    src, labels = make_iapr(tmp_path, descriptions={**DESCRIPTIONS, "01/1002": None})
    out = tmp_path / "out" / "iapr"
    eng = src / "annotations_complete_eng/01/1002.eng"
    with pytest.raises(DataError, match=re.escape(f"{eng}: no <DESCRIPTION> element")):
        iapr.convert(src, out, labels=labels, n_query=1, n_train=1)
    assert leftovers(out) == []


def test_image_stem_not_a_number(tmp_path):
    src, labels = make_iapr(tmp_path)
    eng = src / "annotations_complete_eng/01/1002.eng"
    eng.write_bytes(eng.read_bytes().replace(b"images/01/1002.jpg", b"images/01/x1002.jpg"))
    with pytest.raises(DataError, match=re.escape(f"{eng}:8: image 'x1002.jpg'")):
        iapr.convert(src, tmp_path / "out", labels=labels, n_query=1, n_train=1)


def test_image_number_twice(tmp_path):
    src, labels = make_iapr(tmp_path)
    twin = src / "annotations_complete_eng/02/25.eng"
    twin.parent.mkdir()
    twin.write_text(eng_record("02/25", "a copy"))
    with pytest.raises(DataError, match=re.escape(f"{twin}: image number 25 is also named by")):
        iapr.convert(src, tmp_path / "out", labels=labels, n_query=1, n_train=1)


def test_failure_while_writing_leaves_nothing(tmp_path):
    src, labels = make_iapr(tmp_path)
    out = tmp_path / "out" / "iapr"
    with pytest.raises(ValueError, match="cannot take"):      # 5 pairs kept, 6 asked for
        iapr.convert(src, out, labels=labels, min_word_count=2, n_query=3, n_train=3)
    assert leftovers(out) == []


def test_missing_directories(tmp_path):
    src, labels = make_iapr(tmp_path)
    with pytest.raises(DataError, match="annotation directory not found"):
        iapr.convert(src, tmp_path / "out", labels=labels, annotations=tmp_path / "nope",
                     n_query=1, n_train=1)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.txt'}: file not found")):
        iapr.convert(src, tmp_path / "out", labels=tmp_path / "nope.txt", n_query=1, n_train=1)
