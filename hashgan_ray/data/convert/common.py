"""What every converter shares: the kept/dropped report, the progress bar, reading
names and 0/1 rows, and the tokenizer of free text (IAPR descriptions, CLDR keywords)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from hashgan_ray.data.format import data_error
from hashgan_ray.data.images import check_image


@dataclass
class Report:
    """Pairs kept and pairs dropped, by reason; printed at the end of a conversion
    and stored in meta.json under extra.report."""
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)   # reason -> first offending item

    def drop(self, reason: str, example: str | None = None) -> None:
        self.dropped[reason] += 1
        if example is not None:
            self.examples.setdefault(reason, example)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "examples": self.examples}

    def format(self) -> str:
        lines = [f"pairs kept: {self.kept}",
                 f"pairs dropped: {sum(self.dropped.values())}"]
        for reason, n in sorted(self.dropped.items()):
            example = self.examples.get(reason)
            lines.append(f"  {reason}: {n}" + (f" (e.g. {example})" if example else ""))
        return "\n".join(lines)


def progress(iterable, total: int | None, desc: str):
    """A progress bar on stderr (tqdm), the same look for every converter."""
    return tqdm(iterable, total=total, desc=desc, unit="pair", dynamic_ncols=True,
                mininterval=0.5)


def read_image_or_drop(path: Path, report: Report) -> bytes | None:
    """The file's bytes if it is a readable JPEG/PNG; otherwise count the drop
    (`missing image` / `unreadable image`) and return None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.drop("missing image", str(path))
        return None
    except OSError as e:
        report.drop("unreadable image", f"{path}: {e}")
        return None
    try:
        check_image(data)
    except ValueError as e:
        report.drop("unreadable image", f"{path}: {e}")
        return None
    return data


def read_text(path: Path) -> str:
    """A text file as UTF-8, else Latin-1 (the encodings these datasets use);
    a clear error if it is missing."""
    if not path.is_file():
        raise data_error(path, None, "file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_lines(path: Path) -> list[str]:
    """Lines without their endings and without trailing blank lines (a final
    newline or two is not a missing entry). Splits on "\\n" only: splitlines()
    would also break at U+0085, which is byte 0x85 in Latin-1 text, and shift
    the line numbers that errors report."""
    lines = [line.rstrip("\r") for line in read_text(path).split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_names(path: Path, count: int | None = None) -> list[str]:
    """One distinct, non-empty name per line (words, concepts, labels); the
    index is the name's id. `count`, if given, is the number expected."""
    names, seen = [], {}
    for lineno, line in enumerate(read_lines(path), 1):
        name = line.strip()
        if not name:
            raise data_error(path, lineno, "empty name")
        if name in seen:
            raise data_error(path, lineno, f"{name!r} is also on line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise data_error(path, None, "no names in the file")
    if count is not None and len(names) != count:
        raise data_error(path, None, f"{len(names)} names, expected {count}")
    return names


def add_pair_or_drop(writer, report: Report, pair_id: int, image: Path,
                     text: list[int], labels: list[int], link_images: bool) -> None:
    """Write one pair if its image file decodes (a linked image is checked too);
    otherwise the drop is counted by `read_image_or_drop`."""
    data = read_image_or_drop(image, report)
    if data is None:
        return
    if link_images:
        writer.add(pair_id, text, labels, image_path=str(image.resolve()))
    else:
        writer.add(pair_id, text, labels, image=data)
    report.kept += 1


def parse_binary_row(line: str, path: Path, lineno: int, width: int | None) -> list[int]:
    """A row of 0/1 values separated by tabs or spaces; errors name file and line."""
    values = line.split()
    if width is not None and len(values) != width:
        raise data_error(path, lineno, f"expected {width} values, found {len(values)}")
    out = []
    for v in values:
        if v not in ("0", "1"):
            raise data_error(path, lineno, f"expected 0 or 1, found {v!r}")
        out.append(int(v))
    return out


# -- words of free text -------------------------------------------------------------

WORD = re.compile(r"[^\W\d_]{2,}")        # two or more letters; \w minus digits and _

# Function words only (articles, pronouns, prepositions, auxiliaries): content
# words that place things, such as "front", "left" or "background", carry meaning
# in IAPR descriptions and stay. Single letters never reach this list (see WORD).
STOP_WORDS = frozenset("""
    about above across after against along among an and another any are around as at
    be been before behind being below beside between both but by can could did do does
    during each for from had has have he her here hers him his how if in into is it its
    itself me more most my near next no nor not of off on onto or other our out over
    own same she so some such than that the their them then there these they this those
    through to too under until up upon very was we were what when where which while who
    whom whose why will with within without would you your
""".split())


def tokenize(text: str) -> list[str]:
    """Words of a text in order: lowercase runs of two or more letters (Unicode
    letters, so `café` is one word; digits, punctuation and apostrophes split),
    minus STOP_WORDS."""
    return [w for w in WORD.findall(text.lower()) if w not in STOP_WORDS]
