"""Unicode's emoji (three Debian packages) -> hashgan-ray dataset: real pictures
and real words that nobody here made or tuned.

    hashgan-ray data convert emoji --out data/emoji

Sources, at their Debian paths by default (an option each to point elsewhere):

    fonts-noto-color-emoji   /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf    the pictures
    unicode-cldr-core        /usr/share/unicode/cldr/common/annotations/en.xml    keywords, names
                             /usr/share/unicode/cldr/common/annotationsDerived/en.xml   (sequences)
    unicode-data             /usr/share/unicode/emoji/emoji-test.txt              groups, subgroups

Decisions:

* Pairs are the fully-qualified emoji of emoji-test.txt. Pair id = the
  emoji's 0-based position among the file's fully-qualified lines, so an
  emoji keeps its id whatever the options leave out.
* The Component group (skin-tone swatches, hair pieces: parts of emoji, not
  pictures of anything) has status `component`, so it never becomes a pair.
* Left out, each counted in the report: skin-tone variants (a code point
  U+1F3FB..U+1F3FF), unless `skin_tones`: five near-identical pictures with
  one label would each find the others and inflate MAP; "no CLDR
  annotation"; "no vocabulary word"; "no glyph in the font" (the font draws
  nothing, or more than one glyph's width: a sequence it does not join).
* Label: the emoji's subgroup ("animal-mammal"), or its group ("Animals &
  Nature") with `label_by="group"`; one label per pair. `label_names` are in
  the file's order.
* Text: the CLDR keywords and the CLDR name (`type="tts"`) of the emoji,
  looked up as written and then without U+FE0F (CLDR drops variation
  selectors); the main file first, then the derived one (sequences: flags,
  skin tones, ZWJ). Tokenized as IAPR's descriptions are (common.tokenize:
  lower-case runs of two or more letters, a short list of English function
  words removed: "of", "with", "on" say nothing about a picture). Each word
  counts once per pair (a bag of words, binary as tags are). The vocabulary
  is the words of at least `min_word_count` pairs (default 2): a word of one
  emoji only can link no two pairs, and when that pair is a query its word was
  never seen in training. Sorted alphabetically.
* Name: CLDR's name; emoji-test.txt's name where CLDR has none. Stored with
  the emoji in the optional `name` and `emoji` columns (data/format.py).
* Picture: the glyph drawn in colour by Pillow at the font's one bitmap size
  (109 px; CBDT fonts have no other), cropped to what it drew, centred on a
  white square 17/16 of its longer side (a margin of 1/32 each side), resized
  to `image_size` (default 64) with Lanczos, stored as lossless PNG. Sequences
  (flags, ZWJ families) need Pillow's complex text layout (libraqm); without it they
  draw as several glyphs and are dropped as "no glyph in the font", and the
  report says why.
* Split: 200 query / 1,000 train by default, the rest database (1,774 pairs
  kept with the defaults from Debian 12's packages), drawn with `seed` as for
  every converter.
* Malformed input is an error naming file and line: a data line of
  emoji-test.txt without `;` status `#` emoji, an unknown status, a code point
  that is not hex, an emoji before any group or subgroup line, the emoji
  after `#` differing from its code points; an XML file that does not parse.
  A missing file names the Debian package that brings it.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from hashgan_ray.data.convert.common import Report, progress, read_lines, tokenize
from hashgan_ray.data.format import DatasetMeta, DatasetWriter, DataError, data_error
from hashgan_ray.data.images import encode_png

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
DERIVED = Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
# Which Debian package brings each source (the error for a missing file names it).
PACKAGES = {"font": "fonts-noto-color-emoji", "annotations": "unicode-cldr-core",
            "derived": "unicode-cldr-core", "emoji_test": "unicode-data"}

N_QUERY, N_TRAIN = 200, 1000
DEFAULT_IMAGE_SIZE = 64
DEFAULT_MIN_WORD_COUNT = 2
LABEL_BY = ("subgroup", "group")
FONT_SIZE = 109                      # Noto Color Emoji's only bitmap strike
GLYPH_WIDTH = 136                    # one glyph at that size (pixels)
SKIN_TONES = range(0x1F3FB, 0x1F400)
STATUSES = ("component", "fully-qualified", "minimally-qualified", "unqualified")
# 1F600   ; fully-qualified     # 😀 E1.0 grinning face
TEST_LINE = re.compile(r"^([^;#]+?)\s*;\s*([a-z-]+)\s*#\s*(\S+)\s+E\d+\.\d+\s+(.+?)\s*$")
CODE_POINT = re.compile(r"[0-9A-Fa-f]{1,6}")


@dataclass
class Emoji:
    id: int
    chars: str
    group: str
    subgroup: str
    name: str                  # emoji-test.txt's


def missing_package(path: Path, source: str) -> DataError:
    package = PACKAGES[source]
    return DataError(f"{path}: not found; it comes with the Debian package {package} "
                     f"(apt-get install {package}), or point --{source.replace('_', '-')} "
                     f"at a copy")


def read_emoji_test(path: Path) -> list[Emoji]:
    """Every fully-qualified emoji of emoji-test.txt with its group and subgroup."""
    if not path.is_file():
        raise missing_package(path, "emoji_test")
    out, group, subgroup = [], None, None
    for lineno, line in enumerate(read_lines(path), 1):
        line = line.strip()
        if line.startswith("# group:"):
            group, subgroup = line[len("# group:"):].strip(), None
            continue
        if line.startswith("# subgroup:"):
            subgroup = line[len("# subgroup:"):].strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = TEST_LINE.match(line)
        if m is None:
            raise data_error(path, lineno, "expected 'code points ; status # emoji E<version> "
                                           f"name', found {line[:80]!r}")
        points, status, chars, name = m.groups()
        if status not in STATUSES:
            raise data_error(path, lineno, f"unknown status {status!r}")
        decoded = decode_code_points(points.split(), path, lineno)
        if decoded != chars:
            raise data_error(path, lineno, f"the emoji after '#' is not {points!r}")
        if group is None or subgroup is None:
            raise data_error(path, lineno, "an emoji before its '# group:' and '# subgroup:' lines")
        if status == "fully-qualified":
            out.append(Emoji(len(out), chars, group, subgroup, name))
    if not out:
        raise data_error(path, None, "no fully-qualified emoji")
    return out


def decode_code_points(points: list[str], path: Path, lineno: int) -> str:
    """"1F408 200D 2B1B".split() -> the string; a point that is not hexadecimal up
    to 10FFFF is an error naming file and line."""
    for p in points:
        if not CODE_POINT.fullmatch(p) or int(p, 16) > 0x10FFFF:
            raise data_error(path, lineno, f"code point {p!r} is not hexadecimal "
                                           "(0 to 10FFFF)")
    return "".join(chr(int(p, 16)) for p in points)


def read_annotations(path: Path, source: str) -> dict[str, tuple[list[str], str | None]]:
    """CLDR annotations: emoji -> (keywords, name or None)."""
    if not path.is_file():
        raise missing_package(path, source)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise data_error(path, e.position[0], f"not well-formed XML: {e}") from None
    out: dict[str, tuple[list[str], str | None]] = {}
    for node in root.iter("annotation"):
        cp = node.get("cp")
        if not cp:
            continue
        keywords, name = out.get(cp, ([], None))
        text = (node.text or "").strip()
        if node.get("type") == "tts":
            name = text
        else:
            keywords = [k.strip() for k in text.split("|") if k.strip()]
        out[cp] = (keywords, name)
    return out


class GlyphRenderer:
    """Draws one emoji in colour and frames it as a square picture."""

    def __init__(self, font_path: Path, image_size: int):
        if not font_path.is_file():
            raise missing_package(font_path, "font")
        try:
            # FreeTypeFont, not truetype(): on a load error truetype() looks for a font of
            # the same file name in the system's font folders and would use that instead.
            self.font = ImageFont.FreeTypeFont(str(font_path), FONT_SIZE)
        except OSError as e:
            raise data_error(font_path, None, f"not a font Pillow can draw at {FONT_SIZE} px "
                                              f"({e})") from None
        self.size = image_size

    def render(self, chars: str) -> np.ndarray | None:
        """uint8 (S, S, 3), or None when the font draws nothing or not one glyph."""
        canvas = Image.new("RGBA", (GLYPH_WIDTH * 4, GLYPH_WIDTH * 2), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((GLYPH_WIDTH // 2, GLYPH_WIDTH // 2), chars, font=self.font,
                                    embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None or box[2] - box[0] > GLYPH_WIDTH * 1.25:
            return None
        glyph = canvas.crop(box)
        side = int(max(glyph.size) * 17 / 16)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        square = square.convert("RGB").resize((self.size, self.size), Image.LANCZOS)
        return np.asarray(square, dtype=np.uint8)


def annotation_of(chars: str, tables) -> tuple[list[str], str | None] | None:
    for key in (chars, chars.replace("\ufe0f", "")):
        for table in tables:
            if key in table:
                return table[key]
    return None


def convert(out, *, font=FONT, annotations=ANNOTATIONS, derived=DERIVED, emoji_test=EMOJI_TEST,
            label_by: str = "subgroup", skin_tones: bool = False,
            min_word_count: int = DEFAULT_MIN_WORD_COUNT, n_query: int = N_QUERY,
            n_train: int = N_TRAIN, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
            overwrite: bool = False) -> tuple[DatasetMeta, Report]:
    """Convert the emoji of the three Debian packages into a dataset at `out`."""
    if label_by not in LABEL_BY:
        raise ValueError(f"label_by must be one of {LABEL_BY}, got {label_by!r}")
    emoji = read_emoji_test(Path(emoji_test))
    tables = [read_annotations(Path(annotations), "annotations"),
              read_annotations(Path(derived), "derived")]
    renderer = GlyphRenderer(Path(font), image_size)
    report = Report()

    # Pass 1: what each emoji would be (words, name, picture); pass 2 writes the
    # pairs that have words of the vocabulary, which counts pass 1's pictures only.
    no_glyph = "no glyph in the font" + ("" if features.check("raqm") else
                                         " (Pillow without libraqm joins no sequence)")
    drawn = []                                        # (emoji, words, name, png)
    for e in progress(emoji, total=len(emoji), desc="emoji"):
        if not skin_tones and any(ord(c) in SKIN_TONES for c in e.chars):
            report.drop("skin-tone variant", e.name)
        elif (found := annotation_of(e.chars, tables)) is None:
            report.drop("no CLDR annotation", e.name)
        elif (pixels := renderer.render(e.chars)) is None:
            report.drop(no_glyph, e.name)
        else:
            keywords, name = found
            name = name or e.name
            words = sorted(set(tokenize(" ".join([*keywords, name]))))
            drawn.append((e, words, name, encode_png(pixels, level=9)))
    counts = Counter(w for _, words, _, _ in drawn for w in words)
    vocabulary = sorted(w for w, c in counts.items() if c >= min_word_count)
    if not vocabulary:
        raise data_error(annotations, None, f"no word is in the annotations of at least "
                                            f"{min_word_count} emoji; lower --min-word-count")
    word_index = {w: i for i, w in enumerate(vocabulary)}
    kept = [(e, [word_index[w] for w in words if w in word_index], name, png)
            for e, words, name, png in drawn]
    for e, text, name, _ in kept:
        if not text:
            report.drop("no vocabulary word", name)
    kept = [k for k in kept if k[1]]
    label_names = list(dict.fromkeys(getattr(e, label_by) for e, _, _, _ in kept))
    label_index = {n: i for i, n in enumerate(label_names)}

    with DatasetWriter(out, vocabulary, label_names, optional_columns=("name", "emoji"),
                       overwrite=overwrite) as writer:
        for e, text, name, png in kept:
            writer.add(e.id, text, [label_index[getattr(e, label_by)]], image=png,
                       name=name, emoji=e.chars)
            report.kept += 1
        extra = {"report": report.as_dict(), "label_by": label_by, "skin_tones": skin_tones,
                 "min_word_count": min_word_count, "complex_layout": features.check("raqm"),
                 "sources": {k: str(Path(v).resolve()) for k, v in (
                     ("font", font), ("annotations", annotations), ("derived", derived),
                     ("emoji_test", emoji_test))}}
        meta = writer.finish(name="emoji", source="emoji", image_size=image_size,
                             n_query=n_query, n_train=n_train, seed=seed, extra=extra)
    return meta, report
