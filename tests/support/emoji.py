"""A small real emoji set for tests: lines of Debian's emoji-test.txt picked at
test time, converted with the real font and CLDR files (the converter is
hashgan_ray.data.convert.emoji; `make test` installs the three packages)."""
from pathlib import Path

import pytest

from hashgan_ray.data.convert import emoji

SOURCES = {"font": emoji.FONT, "annotations": emoji.ANNOTATIONS, "derived": emoji.DERIVED,
           "emoji_test": emoji.EMOJI_TEST}
# Code points of the lines picked, as emoji-test.txt writes them. Two subgroups of
# Smileys & Emotion, a minimally-qualified line and an Emoji 15.0 emoji that
# Debian 12's CLDR 41 does not annotate (face-neutral-skeptical), a hand and its
# skin-tone variant, a component, mammals with a ZWJ sequence, four flags.
PICKED = ["1F600", "1F603", "1F636 200D 1F32B", "1FAE8", "1F63A", "1F638", "1F44B",
          "1F44B 1F3FB", "1F3FB", "1F436", "1F431", "1F408", "1F408 200D 2B1B",
          "1F1E9 1F1EA", "1F1EB 1F1F7", "1F1EC 1F1E7", "1F1FA 1F1F8"]


def skip_unless_installed() -> None:
    """Skip the calling test where a Debian package of the emoji set is missing."""
    gone = [f"{path} ({emoji.PACKAGES[source]})" for source, path in SOURCES.items()
            if not path.is_file()]
    if gone:
        pytest.skip(f"missing {', '.join(gone)}: `make test` installs the packages")


def write_emoji_test(out: Path, picked=PICKED) -> Path:
    """emoji-test.txt with its comments, group and subgroup lines and the data
    lines of `picked` only, in the real file's order."""
    kept, found = [], set()
    for line in emoji.EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        points = line.split(";")[0].strip()
        if not line.strip() or line.startswith("#") or points in picked:
            kept.append(line)
            found.add(points)
    assert found >= set(picked), f"not in {emoji.EMOJI_TEST}: {set(picked) - found}"
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out
