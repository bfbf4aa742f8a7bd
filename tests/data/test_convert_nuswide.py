"""The NUS-WIDE converter on a 12-image copy of the official layout."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashgan_ray.cli import build_parser, main
from hashgan_ray.data.convert import nuswide
from hashgan_ray.data.format import DataError, read_meta, read_pairs

TAGS = ["sky", "sun", "dog", "cat", "tree", "car"]
CONCEPTS = ["animal", "beach", "clouds", "dog", "sky"]
# Frequencies: sky 6, clouds 5, animal 4, dog 4, beach 2. With top 3, the
# animal/dog tie goes to animal (listed first), so image 11 (dog only) is dropped.
IMAGES = [  # (dir/file, tag indices, concepts)
    ("actor/0001_101.jpg", [0, 2], {"sky", "animal"}),
    ("actor/0002_102.jpg", [1], {"clouds"}),
    ("actor/0003_103.jpg", [3, 5], {"beach"}),                  # no top concept
    ("beach/0004_104.jpg", [], {"sky"}),                        # no tags
    ("beach/0005_105.jpg", [4], {"sky", "clouds"}),             # missing image
    ("beach/0006_106.jpg", [0, 1, 2, 3, 4, 5], {"dog", "animal"}),  # corrupt image
    ("beach/0007_107.jpg", [5], {"sky", "clouds", "dog"}),
    ("cat/0008_108.jpg", [2, 3], {"animal", "dog"}),
    ("cat/0009_109.jpg", [0], {"sky"}),
    ("cat/0010_110.jpg", [1, 4], {"clouds", "beach"}),
    ("cat/0011_111.jpg", [3], {"animal", "sky", "clouds"}),
    ("cat/0012_112.jpg", [0, 5], {"dog"}),                      # no top concept
]
MISSING, CORRUPT = 4, 5
LABEL_NAMES = ["animal", "clouds", "sky"]
EXPECTED = {  # id -> (text, labels)
    0: ([0, 2], [0, 2]),
    1: ([1], [1]),
    6: ([5], [1, 2]),
    7: ([2, 3], [0]),
    8: ([0], [2]),
    9: ([1, 4], [1]),
    10: ([3], [0, 1, 2]),
}
DROPPED = {"no top concept label": 2, "no tags": 1, "missing image": 1, "unreadable image": 1}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def make_nuswide(root: Path) -> Path:
    """Write the fixture in the official layout; return SRC."""
    for d in ("ImageList", "NUS_WID_Tags", "ConceptsList", "Groundtruth/AllLabels"):
        (root / d).mkdir(parents=True)
    (root / "ImageList/Imagelist.txt").write_text(
        "".join(f"C:\\ImageData\\Flickr\\{f.replace('/', chr(92))}\r\n" for f, _, _ in IMAGES))
    (root / "NUS_WID_Tags/TagList1k.txt").write_text("\n".join(TAGS) + "\n")
    rows = []
    for i, (_, tags, _) in enumerate(IMAGES):
        sep = "\t" if i % 2 else " "          # both separators, with a trailing one
        rows.append(sep.join("1" if t in tags else "0" for t in range(len(TAGS))) + sep)
    (root / "NUS_WID_Tags/AllTags1k.txt").write_text("\n".join(rows) + "\n")
    (root / "ConceptsList/Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    for c in CONCEPTS:
        column = "".join(f"{int(c in concepts)}\n" for _, _, concepts in IMAGES)
        (root / f"Groundtruth/AllLabels/Labels_{c}.txt").write_text(column)
    for i, (f, _, _) in enumerate(IMAGES):
        path = root / "Flickr" / f
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == CORRUPT:
            path.write_bytes(_jpeg(i)[:200])
        elif i != MISSING:
            path.write_bytes(_jpeg(i))
    return root


def set_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def convert(src, out, **options):
    options = {"top_concepts": 3, "n_query": 2, "n_train": 3, **options}
    return nuswide.convert(src, out, **options)


def rows_by_id(out: Path) -> dict[int, dict]:
    return {row["id"]: row for row in read_pairs(out).to_pylist()}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


@pytest.fixture
def src(tmp_path) -> Path:
    return make_nuswide(tmp_path / "NUS-WIDE")


def test_rows_value_by_value(src, tmp_path):
    out = tmp_path / "out"
    meta, report = convert(src, out)
    rows = rows_by_id(out)
    assert sorted(rows) == sorted(EXPECTED)
    for pair_id, (text, labels) in EXPECTED.items():
        assert rows[pair_id]["text"] == text
        assert rows[pair_id]["labels"] == labels
        assert rows[pair_id]["image"] == (src / "Flickr" / IMAGES[pair_id][0]).read_bytes()
    assert meta.vocabulary == TAGS
    assert meta.label_names == LABEL_NAMES
    assert meta.name == meta.source == "nuswide"
    assert meta.counts == {"query": 2, "train": 3, "database": 2, "total": 7}
    assert read_meta(out) == meta
    assert report.kept == 7
    assert dict(report.dropped) == DROPPED
    assert meta.extra["report"] == report.as_dict()
    assert meta.extra["concept_counts"] == {"animal": 4, "clouds": 5, "sky": 6}
    assert meta.extra["src"] == str(src.resolve())


def test_top_concepts_option(src, tmp_path):
    meta, report = convert(src, tmp_path / "out", top_concepts=5)
    assert meta.label_names == CONCEPTS
    assert report.dropped["no top concept label"] == 0
    assert report.kept == 9   # images 2 and 11 now carry a concept
    with pytest.raises(ValueError, match="top_concepts"):
        convert(src, tmp_path / "out2", top_concepts=6)


def test_link_images_stores_absolute_paths(src, tmp_path):
    out = tmp_path / "out"
    meta, report = convert(src, out, link_images=True)
    assert meta.image_column == "image_path"
    rows = rows_by_id(out)
    assert sorted(rows) == sorted(EXPECTED)
    for pair_id, row in rows.items():
        assert "image" not in row
        assert Path(row["image_path"]).is_absolute()
        assert row["image_path"] == str((src / "Flickr" / IMAGES[pair_id][0]).resolve())
    assert dict(report.dropped) == DROPPED   # linked images are still checked


def test_images_option(src, tmp_path):
    elsewhere = tmp_path / "pictures"
    (src / "Flickr").rename(elsewhere)
    meta, _ = convert(src, tmp_path / "out", images=elsewhere)
    assert meta.counts["total"] == 7
    with pytest.raises(DataError, match="Flickr"):
        convert(src, tmp_path / "out2")


def test_split_depends_on_seed_only(src, tmp_path):
    def split(seed, name):
        convert(src, tmp_path / name, seed=seed)
        return {i: r["split"] for i, r in rows_by_id(tmp_path / name).items()}

    first = split(0, "a")
    assert split(0, "b") == first
    assert any(split(s, f"s{s}") != first for s in (1, 2, 3))


def test_cli_arguments_and_run(src, tmp_path, capsys):
    command = ["data", "convert", "nuswide", "--src", str(src)]
    defaults = build_parser().parse_args([*command, "--out", "x"])
    assert (defaults.query, defaults.train, defaults.top_concepts) == (2100, 10500, 21)
    assert defaults.images is None and not defaults.link_images
    assert main([*command, "--out", str(tmp_path / "out"), "--top-concepts", "3",
                 "--query", "1", "--train", "2"]) == 0
    assert "pairs kept: 7" in capsys.readouterr().out
    assert read_meta(tmp_path / "out").counts["query"] == 1


@pytest.mark.parametrize("file, lineno, text, expected", [
    ("NUS_WID_Tags/AllTags1k.txt", 11, "0 1 0 1 0", "AllTags1k.txt:11: expected 6 values, found 5"),
    ("NUS_WID_Tags/AllTags1k.txt", 12, "0 1 0 1 0 1 1", "AllTags1k.txt:12: expected 6 values"),
    ("NUS_WID_Tags/AllTags1k.txt", 4, "0 1 2 1 0 0", "AllTags1k.txt:4: expected 0 or 1, found '2'"),
    ("Groundtruth/AllLabels/Labels_clouds.txt", 5, "yes", "Labels_clouds.txt:5: expected 0 or 1"),
    ("ImageList/Imagelist.txt", 3, "0003_103.jpg", "Imagelist.txt:3: expected an image path"),
    ("NUS_WID_Tags/TagList1k.txt", 4, "sky", "TagList1k.txt:4: 'sky' is also on line 1"),
])
def test_malformed_line_is_an_error(src, tmp_path, file, lineno, text, expected):
    set_line(src / file, lineno, text)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=expected):
        convert(src, out)
    assert_nothing_written(out)


def test_label_file_of_wrong_length(src, tmp_path):
    path = src / "Groundtruth/AllLabels/Labels_sky.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:11]))
    with pytest.raises(DataError, match=r"Labels_sky.txt:12: 11 lines, but .*Imagelist.txt "
                                        r"lists 12 images"):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_tag_matrix_of_wrong_length(src, tmp_path):
    path = src / "NUS_WID_Tags/AllTags1k.txt"
    path.write_text(path.read_text() + "0 0 0 0 0 1\n")
    with pytest.raises(DataError, match="AllTags1k.txt: 13 rows, but .*lists 12 images"):
        convert(src, tmp_path / "out")


def test_concept_without_label_file(src, tmp_path):
    (src / "Groundtruth/AllLabels/Labels_dog.txt").unlink()
    with pytest.raises(DataError, match="Labels_dog.txt.*concept 'dog'"):
        convert(src, tmp_path / "out")


def test_trailing_blank_lines_are_ignored(src, tmp_path):
    for file in ("ImageList/Imagelist.txt", "Groundtruth/AllLabels/Labels_sky.txt",
                 "NUS_WID_Tags/AllTags1k.txt"):
        with open(src / file, "a") as f:
            f.write("\n\n")
    meta, _ = convert(src, tmp_path / "out")
    assert meta.counts["total"] == 7


def test_existing_output_needs_overwrite(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        convert(src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    meta, _ = convert(src, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert read_meta(out) == meta


def test_failed_overwrite_keeps_previous_dataset(src, tmp_path):
    out = tmp_path / "out"
    first, _ = convert(src, out)
    set_line(src / "NUS_WID_Tags/AllTags1k.txt", 12, "0 0 x 0 0 0")   # the last row
    with pytest.raises(DataError, match="AllTags1k.txt:12"):
        convert(src, out, overwrite=True, seed=1)
    assert read_meta(out) == first
    assert sorted(rows_by_id(out)) == sorted(EXPECTED)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
