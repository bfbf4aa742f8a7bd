"""The MIRFlickr-25K converter on a 15-image copy of the two unpacked archives."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashgan_ray.cli import build_parser, main
from hashgan_ray.data.convert import mirflickr
from hashgan_ray.data.format import DataError, read_meta, read_pairs

TAGS = {  # N of im<N>.jpg -> lines of tags<N>.txt
    1: ["Sky", "sun"], 2: ["sky", "dog"], 3: ["dog", "cat"], 4: [], 5: ["unique1"],
    6: ["cat", "tree"], 7: ["tree", "SKY", "sky"], 8: ["sun", "beach"], 9: ["beach"],
    10: ["sky"], 11: ["dog"], 12: ["flower"], 13: ["cat"], 14: ["sun"], 15: ["tree"],
}
# Images on >= 2 images: sky 4, sun 3, dog 3, cat 3, tree 3, beach 2 (unique1, flower: 1).
VOCABULARY = ["beach", "cat", "dog", "sky", "sun", "tree"]
CONCEPTS = {"animals": [2, 3, 11, 13], "clouds": [1, 7, 10],
            "people": [8, 9, 14, 12], "sky": [1, 7, 10, 4, 5]}
LABEL_NAMES = ["animals", "clouds", "people", "sky"]
MISSING, CORRUPT = 11, 13
EXPECTED = {  # id (N - 1) -> (text, labels)
    0: ([3, 4], [1, 3]),
    1: ([2, 3], [0]),
    2: ([1, 2], [0]),
    6: ([3, 5], [1, 3]),
    7: ([0, 4], [2]),
    8: ([0], [2]),
    9: ([3], [1, 3]),
    13: ([4], [2]),
}
DROPPED = {"no label": 2, "no vocabulary tag": 3, "missing image": 1, "unreadable image": 1}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def make_mirflickr(root: Path) -> Path:
    """Write mirflickr/ as the archives unpack, annotations in mirflickr/annotations."""
    tag_dir = root / "meta" / "tags"
    annotation_dir = root / "annotations"
    tag_dir.mkdir(parents=True)
    annotation_dir.mkdir()
    for n, tags in TAGS.items():
        (tag_dir / f"tags{n}.txt").write_text("".join(f"{t}\r\n" for t in tags))
        if n == CORRUPT:
            (root / f"im{n}.jpg").write_bytes(_jpeg(n)[:200])
        elif n != MISSING:
            (root / f"im{n}.jpg").write_bytes(_jpeg(n))
    for concept, numbers in CONCEPTS.items():
        (annotation_dir / f"{concept}.txt").write_text("".join(f"{n}\n" for n in numbers))
    (annotation_dir / "people_r1.txt").write_text("8\n6\n")   # a subset, not a concept
    (annotation_dir / "README.txt").write_text("MIRFLICKR-25000 annotations v080\n")
    return root


def convert(src, out, **options):
    options = {"min_tag_count": 2, "n_query": 2, "n_train": 3, **options}
    return mirflickr.convert(src, out, **options)


def rows_by_id(out: Path) -> dict[int, dict]:
    return {row["id"]: row for row in read_pairs(out).to_pylist()}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


@pytest.fixture
def src(tmp_path) -> Path:
    return make_mirflickr(tmp_path / "mirflickr")


def test_rows_value_by_value(src, tmp_path):
    out = tmp_path / "out"
    meta, report = convert(src, out)
    rows = rows_by_id(out)
    assert sorted(rows) == sorted(EXPECTED)
    for pair_id, (text, labels) in EXPECTED.items():
        assert rows[pair_id]["text"] == text
        assert rows[pair_id]["labels"] == labels
        assert rows[pair_id]["image"] == (src / f"im{pair_id + 1}.jpg").read_bytes()
    assert meta.vocabulary == VOCABULARY
    assert meta.label_names == LABEL_NAMES
    assert meta.name == meta.source == "mirflickr"
    assert meta.counts == {"query": 2, "train": 3, "database": 3, "total": 8}
    assert read_meta(out) == meta
    assert report.kept == 8
    assert dict(report.dropped) == DROPPED
    assert meta.extra["report"] == report.as_dict()
    assert meta.extra["n_images"] == 15
    assert meta.extra["min_tag_count"] == 2


def test_min_tag_count_sets_the_vocabulary(src, tmp_path):
    meta, report = convert(src, tmp_path / "out", min_tag_count=1)
    assert meta.vocabulary == sorted(VOCABULARY + ["flower", "unique1"])
    assert report.dropped["no vocabulary tag"] == 1   # only im4, which has no tags at all
    with pytest.raises(DataError, match="min-tag-count"):
        convert(src, tmp_path / "out2", min_tag_count=5)


def test_link_images_stores_absolute_paths(src, tmp_path):
    out = tmp_path / "out"
    meta, report = convert(src, out, link_images=True)
    assert meta.image_column == "image_path"
    rows = rows_by_id(out)
    assert sorted(rows) == sorted(EXPECTED)
    for pair_id, row in rows.items():
        assert "image" not in row
        assert Path(row["image_path"]).is_absolute()
        assert row["image_path"] == str((src / f"im{pair_id + 1}.jpg").resolve())
    assert dict(report.dropped) == DROPPED   # linked images are still checked


def test_directory_options(src, tmp_path):
    images, tags, annotations = tmp_path / "img", tmp_path / "tags", tmp_path / "ann"
    images.mkdir()
    for f in src.glob("im*.jpg"):
        f.rename(images / f.name)
    (src / "meta" / "tags").rename(tags)
    (src / "annotations").rename(annotations)
    meta, report = convert(src, tmp_path / "out", images=images, tags=tags,
                           annotations=annotations)
    assert sorted(rows_by_id(tmp_path / "out")) == sorted(EXPECTED)
    assert dict(report.dropped) == DROPPED
    with pytest.raises(DataError, match="tags directory not found"):
        convert(src, tmp_path / "out2", images=images)


def test_split_depends_on_seed_only(src, tmp_path):
    def split(seed, name):
        convert(src, tmp_path / name, seed=seed)
        return {i: r["split"] for i, r in rows_by_id(tmp_path / name).items()}

    first = split(0, "a")
    assert split(0, "b") == first
    assert any(split(s, f"s{s}") != first for s in (1, 2, 3))


def test_cli_arguments_and_run(src, tmp_path, capsys):
    command = ["data", "convert", "mirflickr", "--src", str(src)]
    defaults = build_parser().parse_args([*command, "--out", "x"])
    assert (defaults.query, defaults.train, defaults.min_tag_count) == (2000, 10000, 20)
    assert defaults.images is defaults.tags is defaults.annotations is None
    assert main([*command, "--out", str(tmp_path / "out"), "--min-tag-count", "2",
                 "--query", "1", "--train", "2"]) == 0
    assert "pairs kept: 8" in capsys.readouterr().out
    assert read_meta(tmp_path / "out").counts["query"] == 1


@pytest.mark.parametrize("bad, lineno", [("abc", 3), ("0", 2), ("16", 4), ("-3", 1), ("2.5", 3)])
def test_bad_annotation_line_is_an_error(src, tmp_path, bad, lineno):
    lines = [str(n) for n in CONCEPTS["animals"]]
    lines[lineno - 1] = bad
    (src / "annotations" / "animals.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"animals.txt:{lineno}: expected an image number "
                                        f"in 1..15, found '{bad}'"):
        convert(src, out)
    assert_nothing_written(out)


def test_blank_annotation_lines_are_skipped(src, tmp_path):
    (src / "annotations" / "clouds.txt").write_text("1\n\n7\n10\n\n")
    meta, _ = convert(src, tmp_path / "out")
    assert meta.counts["total"] == 8


def test_missing_tags_file_is_an_error(src, tmp_path):
    (src / "meta" / "tags" / "tags8.txt").unlink()
    with pytest.raises(DataError, match="tags8.txt: missing"):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_images_are_enumerated_by_the_tags_files(src, tmp_path):
    (src / "im16.jpg").write_bytes(_jpeg(16))      # an image without tags file: not a pair
    (src / "meta" / "tags" / "tags15.txt").unlink()   # the last tags file defines the count
    meta, report = convert(src, tmp_path / "out")
    assert meta.extra["n_images"] == 14
    assert report.dropped["no label"] == 1


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


def test_failure_mid_conversion_leaves_nothing_behind(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, _ = convert(src, out)
    # Break the writer after some pairs were written: the previous dataset survives.
    real_add = mirflickr.DatasetWriter.add

    def failing_add(self, pair_id, *args, **kwargs):
        if pair_id == 9:
            raise OSError("disk full")
        real_add(self, pair_id, *args, **kwargs)

    monkeypatch.setattr(mirflickr.DatasetWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        convert(src, out, overwrite=True, seed=1)
    with pytest.raises(OSError, match="disk full"):
        convert(src, tmp_path / "new")
    assert read_meta(out) == first
    assert sorted(rows_by_id(out)) == sorted(EXPECTED)
    assert_nothing_written(tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
