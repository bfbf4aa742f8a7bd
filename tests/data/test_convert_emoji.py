"""The emoji converter on Debian's real files: the font and CLDR's annotations
whole, emoji-test.txt cut to 17 of its lines (support/emoji.py)."""
from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from support.emoji import SOURCES, skip_unless_installed, write_emoji_test

from hashgan_ray.cli import main
from hashgan_ray.data.convert import emoji
from hashgan_ray.data.format import DataError, read_meta, read_pairs

# Pair id (its place among the fully-qualified lines) -> (emoji, words) as CLDR 41
# gives them, by default. Dropped: 2 shaking face (Emoji 15.0, no CLDR annotation),
# 5 waving hand (hand, wave, waving: words of no other emoji), 6 its skin tone.
EXPECTED = {
    0: ("😀", ["face", "grin", "grinning"]),
    1: ("😃", ["eyes", "face", "grinning", "mouth", "open", "smile"]),     # "big": one emoji
    3: ("😺", ["cat", "face", "grinning", "mouth", "open", "smile"]),
    4: ("😸", ["cat", "eyes", "face", "grin", "grinning", "smile"]),
    7: ("🐶", ["face", "pet"]),
    8: ("🐱", ["cat", "face", "pet"]),
    9: ("🐈", ["cat", "pet"]),
    10: ("🐈\u200d⬛", ["cat"]),                                            # a ZWJ sequence
    11: ("🇩🇪", ["flag"]),
    12: ("🇫🇷", ["flag"]),
    13: ("🇬🇧", ["flag", "united"]),                                        # "United Kingdom"
    14: ("🇺🇸", ["flag", "united"]),
}
SUBGROUP = {0: "face-smiling", 1: "face-smiling", 3: "cat-face", 4: "cat-face", 7: "animal-mammal",
            8: "animal-mammal", 9: "animal-mammal", 10: "animal-mammal", 11: "country-flag",
            12: "country-flag", 13: "country-flag", 14: "country-flag"}
GROUPS = ["Smileys & Emotion", "Animals & Nature", "Flags"]
SPLIT = {"n_query": 2, "n_train": 4}

pytestmark = pytest.mark.usefixtures("installed")


@pytest.fixture(scope="module")
def installed():
    skip_unless_installed()


@pytest.fixture(scope="module")
def emoji_test(tmp_path_factory):
    return write_emoji_test(tmp_path_factory.mktemp("emoji") / "emoji-test.txt")


def rows(out) -> dict[int, dict]:
    return {r["id"]: r for r in read_pairs(out).to_pylist()}


def words(row, meta) -> list[str]:
    return [meta.vocabulary[i] for i in row["text"]]


def test_pairs_words_labels_names(emoji_test, tmp_path):
    meta, report = emoji.convert(tmp_path / "out", emoji_test=emoji_test, **SPLIT)
    assert meta.name == meta.source == "emoji"
    assert dict(report.dropped) == {"no CLDR annotation": 1, "no vocabulary word": 1,
                                    "skin-tone variant": 1}
    assert report.examples["no CLDR annotation"] == "shaking face"
    assert meta.vocabulary == sorted({w for _, ws in EXPECTED.values() for w in ws})
    assert meta.label_names == ["face-smiling", "cat-face", "animal-mammal", "country-flag"]
    assert meta.counts == {"query": 2, "train": 4, "database": 6, "total": 12}
    assert (meta.extra["label_by"], meta.extra["skin_tones"], meta.extra["min_word_count"]) == (
        "subgroup", False, 2)
    got = rows(tmp_path / "out")
    assert sorted(got) == sorted(EXPECTED)
    for i, (chars, expected_words) in EXPECTED.items():
        assert (got[i]["emoji"], words(got[i], meta)) == (chars, expected_words)
        assert meta.label_names[got[i]["labels"][0]] == SUBGROUP[i] and len(got[i]["labels"]) == 1
    assert got[4]["name"] == "grinning cat with smiling eyes"          # CLDR's name
    assert got[14]["name"] == "flag: United States"


def test_label_by_group(emoji_test, tmp_path):
    meta, _ = emoji.convert(tmp_path / "out", emoji_test=emoji_test, label_by="group", **SPLIT)
    assert meta.label_names == GROUPS
    got = rows(tmp_path / "out")
    assert [meta.label_names[got[i]["labels"][0]] for i in (1, 3, 9, 12)] == [
        "Smileys & Emotion", "Smileys & Emotion", "Animals & Nature", "Flags"]
    with pytest.raises(ValueError, match="label_by must be one of"):
        emoji.convert(tmp_path / "x", emoji_test=emoji_test, label_by="colour", **SPLIT)


def test_skin_tones_and_word_counts(emoji_test, tmp_path):
    meta, report = emoji.convert(tmp_path / "tones", emoji_test=emoji_test, skin_tones=True,
                                 **SPLIT)
    assert dict(report.dropped) == {"no CLDR annotation": 1}
    got = rows(tmp_path / "tones")
    # the variant's words make the hand's count twice; "light skin tone" stays once
    assert words(got[5], meta) == words(got[6], meta) == ["hand", "wave", "waving"]
    assert got[6]["name"] == "waving hand: light skin tone" and got[6]["emoji"] == "👋🏻"
    assert "hand-fingers-open" in meta.label_names and meta.extra["skin_tones"] is True

    meta, report = emoji.convert(tmp_path / "once", emoji_test=emoji_test, min_word_count=1,
                                 **SPLIT)
    assert "no vocabulary word" not in report.dropped
    assert {"big", "france", "germany", "kingdom", "unlucky", "wave"} <= set(meta.vocabulary)
    assert all(w == w.lower() for w in meta.vocabulary)
    assert not {"with", "of", "on"} & set(meta.vocabulary)               # stop words
    with pytest.raises(DataError, match="no word is in the annotations of at least 99 emoji"):
        emoji.convert(tmp_path / "none", emoji_test=emoji_test, min_word_count=99, **SPLIT)
    assert not (tmp_path / "none").exists()


def test_pictures(emoji_test, tmp_path):
    emoji.convert(tmp_path / "out", emoji_test=emoji_test, **SPLIT)
    pictures = {}
    for i, row in rows(tmp_path / "out").items():
        with Image.open(io.BytesIO(row["image"])) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 64))
            pictures[i] = np.asarray(img)
    for i, pixels in pictures.items():
        assert (pixels[[0, 0, -1, -1], [0, -1, 0, -1]] == 255).all(), i     # white corners
        assert (pixels < 200).any(axis=2).mean() > 0.2, i                     # a drawing
    assert not np.array_equal(pictures[11], pictures[12])            # flags differ
    emoji.convert(tmp_path / "small", emoji_test=emoji_test, image_size=24, **SPLIT)
    with Image.open(io.BytesIO(rows(tmp_path / "small")[0]["image"])) as img:
        assert img.size == (24, 24)


def test_split_depends_on_seed_only(emoji_test, tmp_path):
    def split(seed):
        emoji.convert(tmp_path / str(seed), emoji_test=emoji_test, seed=seed, overwrite=True,
                      **SPLIT)
        return {i: r["split"] for i, r in rows(tmp_path / str(seed)).items()}

    first = split(0)
    assert split(0) == first
    assert any(split(s) != first for s in (1, 2, 3))


GOOD = "1F600 ; fully-qualified # 😀 E1.0 grinning face"
HEAD = "# group: Smileys & Emotion\n# subgroup: face-smiling\n"
BAD_LINES = [  # (file text, line at fault, message)
    (HEAD + GOOD + "\n1F603 fully-qualified # 😃 E0.6 grinning face with big eyes\n", 4,
     "expected 'code points ; status # emoji E<version> name'"),
    (HEAD + "1F6G0 ; fully-qualified # 😀 E1.0 grinning face\n", 3,
     "code point '1F6G0' is not hexadecimal"),
    (HEAD + "\n\n110000 ; fully-qualified # 😀 E1.0 grinning face\n", 5,
     "code point '110000' is not hexadecimal"),
    (HEAD + "1F600 ; fully-qualifed # 😀 E1.0 grinning face\n", 3, "unknown status 'fully-qualifed'"),
    (HEAD + "1F603 ; fully-qualified # 😀 E0.6 grinning face with big eyes\n", 3,
     "the emoji after '#' is not '1F603'"),
    ("# emoji-test.txt\n" + GOOD + "\n" + HEAD, 2, "an emoji before its '# group:'"),
    ("# group: Smileys & Emotion\n" + GOOD + "\n", 2, "an emoji before its '# group:'"),
]


@pytest.mark.parametrize("text, line, message", BAD_LINES, ids=[m for _, _, m in BAD_LINES])
def test_malformed_emoji_test_line(tmp_path, text, line, message):
    bad = tmp_path / "emoji-test.txt"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}:{line}: {message}")):
        emoji.convert(tmp_path / "out", emoji_test=bad, **SPLIT)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["annotations", "derived"])
def test_malformed_xml_names_file_and_line(emoji_test, tmp_path, source):
    lines = SOURCES[source].read_text(encoding="utf-8").split("\n")
    lines.insert(30, '\t\t<annotation cp="&">a bare ampersand</annotation>')   # line 31
    bad = tmp_path / "en.xml"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}:31: not well-formed XML")):
        emoji.convert(tmp_path / "out", emoji_test=emoji_test, **{source: bad}, **SPLIT)


def test_a_file_that_is_not_a_font(emoji_test, tmp_path):
    """Named as the real font: Pillow's truetype() would have drawn with that one."""
    bad = tmp_path / "NotoColorEmoji.ttf"
    bad.write_bytes(b"not a font")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not a font Pillow can draw")):
        emoji.convert(tmp_path / "out", emoji_test=emoji_test, font=bad, **SPLIT)


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_missing_file_names_its_debian_package(emoji_test, tmp_path, source, capsys):
    gone, package = tmp_path / "gone" / SOURCES[source].name, emoji.PACKAGES[source]
    option = "--" + source.replace("_", "-")
    message = (f"{gone}: not found; it comes with the Debian package {package} "
               f"(apt-get install {package}), or point {option} at a copy")
    with pytest.raises(DataError, match=re.escape(message)):
        emoji.convert(tmp_path / "out", **{"emoji_test": emoji_test, source: gone}, **SPLIT)
    sources = {"--emoji-test": str(emoji_test), option: str(gone)}
    argv = ["data", "convert", "emoji", "--out", str(tmp_path / "cli"),
            *[x for pair in sources.items() for x in pair]]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"hashgan-ray: error: {message}\n"       # one line


def test_cli(emoji_test, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["data", "convert", "emoji", "--emoji-test", str(emoji_test), "--out", str(out),
            "--query", "2", "--train", "4", "--label-by", "group", "--skin-tones",
            "--min-word-count", "2", "--image-size", "32", "--seed", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pairs kept: 14" in printed and "no CLDR annotation: 1 (e.g. shaking face)" in printed
    meta = read_meta(out)
    assert (meta.label_names, meta.image_size, meta.seed) == (GROUPS[:1] + ["People & Body"]
                                                              + GROUPS[1:], 32, 5)
    assert len(rows(out)) == 14 and rows(out)[6]["emoji"] == "👋🏻"
    assert main(argv) == 2                                          # it exists: no overwrite
    assert "already exists" in capsys.readouterr().err
    shutil.copy(emoji_test, tmp_path / "bad.txt")
    with (tmp_path / "bad.txt").open("a", encoding="utf-8") as f:
        f.write("1F600 ; fully-qualified\n")
    lineno = len((tmp_path / "bad.txt").read_text(encoding="utf-8").splitlines())
    assert main([*argv[:3], "--emoji-test", str(tmp_path / "bad.txt"), "--out",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hashgan-ray: error: {tmp_path / 'bad.txt'}:{lineno}: expected")
    assert len(err.splitlines()) == 1
