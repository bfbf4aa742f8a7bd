"""DCMH .mat converter on tiny v5 and v7.3 files in the layouts DCMH ships."""
from __future__ import annotations

import io
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from hashgan_ray.cli import build_parser, main
from hashgan_ray.data.convert import dcmh_mat
from hashgan_ray.data.format import DataError, read_pairs

N, V, L = 6, 5, 3
# YAll (n x vocab) counts and LAll (n x L): row 1 has no word, row 3 no label.
YALL = np.array([[1, 0, 2, 0, 0],
                 [0, 0, 0, 0, 0],
                 [0, 3, 0, 0, 1],
                 [1, 1, 0, 0, 0],
                 [0, 0, 0, 1, 0],
                 [2, 0, 0, 0, 1]], dtype=np.float64)
LALL = np.array([[1, 0, 1],
                 [1, 0, 0],
                 [0, 1, 0],
                 [0, 0, 0],
                 [1, 1, 1],
                 [0, 0, 1]], dtype=np.float64)
EXPECTED = {0: ([0, 2, 2], [0, 2]), 2: ([1, 1, 1, 4], [1]), 4: ([3], [0, 1, 2]),
            5: ([0, 0, 4], [2])}
MATLAB_HEADER = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, "
                 b"Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 .")


def pixels(h: int, w: int) -> np.ndarray:
    """(n, H, W, 3) images: value = 80*channel + 8*image + row. Constant along
    W, so a swapped H/W, a wrong channel order or a wrong row all change it."""
    c = np.arange(3)[None, None, None, :]
    i = np.arange(N)[:, None, None, None]
    y = np.arange(h)[None, :, None, None]
    return np.broadcast_to(80 * c + 8 * i + y, (N, h, w, 3)).astype(np.uint8)


def matlab_images(images: np.ndarray, layout: str) -> np.ndarray:
    """The (n, H, W, 3) images as MATLAB would hold them, in MATLAB's axis order."""
    if layout == "n3hw":
        return images.transpose(0, 3, 1, 2)        # n x 3 x H x W (NUS-WIDE's IAll)
    return images.transpose(1, 2, 3, 0)            # H x W x 3 x n (MATLAB's own stack)


def save_v5(path: Path, **variables) -> Path:
    scipy.io.savemat(path, variables)             # numpy's shape = MATLAB's size
    return path


def save_v73(path: Path, **variables) -> Path:
    """A v7.3-like file: HDF5 after a 512-byte MATLAB header, each variable stored
    transposed, as MATLAB's column-major writer leaves it for h5py to see."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            f.create_dataset(name, data=np.ascontiguousarray(np.asarray(value).T))
    with open(path, "r+b") as f:
        f.write(MATLAB_HEADER.ljust(116))
    return path


def split_files(root: Path, layout: str = "n3hw", h: int = 6, w: int = 6, yall=YALL,
                lall=LALL) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [save_v73(root / "nus-wide-tc21-iall.mat", IAll=matlab_images(pixels(h, w), layout)),
            save_v73(root / "nus-wide-tc21-yall.mat", YAll=yall),
            save_v73(root / "nus-wide-tc21-lall.mat", LAll=lall)]


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def check_rows(out: Path, images: np.ndarray) -> None:
    rows = read_pairs(out).sort_by("id").to_pylist()
    assert [row["id"] for row in rows] == sorted(EXPECTED)
    for row in rows:
        text, labels = EXPECTED[row["id"]]
        assert row["text"] == text
        assert row["labels"] == labels
        np.testing.assert_array_equal(decode(row["image"]), images[row["id"]])


def check_report(meta, report) -> None:
    assert report.kept == 4
    assert dict(report.dropped) == {"no label": 1, "no vocabulary word": 1}
    assert meta.extra["report"]["dropped"] == dict(report.dropped)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


@pytest.mark.parametrize("layout", ["n3hw", "hw3n"])
def test_v5_single_file(tmp_path, layout):
    images = pixels(7, 5)                           # not square: H and W cannot swap unseen
    src = save_v5(tmp_path / "FLICKR-25K.mat", images=matlab_images(images, layout),
                  YAll=YALL, LAll=LALL)
    out = tmp_path / "out" / "flickr"
    meta, report = dcmh_mat.convert(src, out, n_query=1, n_train=2, seed=1)
    assert (meta.name, meta.source) == ("mirflickr", "dcmh-mat")
    assert meta.vocabulary == ["w0000", "w0001", "w0002", "w0003", "w0004"]
    assert meta.label_names == ["l00", "l01", "l02"]
    assert meta.image_size == 7
    assert meta.counts == {"query": 1, "train": 2, "database": 1, "total": 4}
    check_report(meta, report)
    check_rows(out, images)


def test_v5_sparse_text_and_labels(tmp_path):
    images = pixels(4, 4)
    src = save_v5(tmp_path / "iapr-tc12.mat", IAll=matlab_images(images, "hw3n"),
                  YAll=scipy.sparse.csc_matrix(YALL), LAll=scipy.sparse.csc_matrix(LALL))
    out = tmp_path / "out"
    meta, report = dcmh_mat.convert(src, out, n_query=1, n_train=1)
    assert meta.name == "iapr"
    check_report(meta, report)
    check_rows(out, images)


@pytest.mark.parametrize("layout", ["n3hw", "hw3n"])
def test_v73_split_files(tmp_path, layout):
    files = split_files(tmp_path / "mat", layout)
    assert h5py.is_hdf5(files[0])
    with h5py.File(files[0], "r") as f:             # h5py sees MATLAB's axes reversed
        assert f["IAll"].shape == ((6, 6, 3, N) if layout == "n3hw" else (N, 3, 6, 6))
    out = tmp_path / "out" / "nus"
    meta, report = dcmh_mat.convert(files, out, n_query=2, n_train=1)
    assert meta.name == "nuswide" and meta.image_size == 6
    assert meta.counts == {"query": 2, "train": 1, "database": 1, "total": 4}
    assert meta.extra["variables"]["images"]["mat_version"] == "7.3"
    check_report(meta, report)
    check_rows(out, pixels(6, 6))


def test_v73_transposed_text_and_labels(tmp_path):
    # YAll/LAll written from Python without MATLAB's transpose: vocab x n as MATLAB sees it.
    files = split_files(tmp_path / "mat", yall=YALL.T, lall=LALL.T)
    out = tmp_path / "out"
    meta, report = dcmh_mat.convert(files, out, n_query=1, n_train=1)
    check_report(meta, report)
    check_rows(out, pixels(6, 6))


def test_v73_reads_lazily_in_row_chunks(tmp_path, monkeypatch):
    files = split_files(tmp_path / "mat", "n3hw")
    reads = []
    original = h5py.Dataset.__getitem__

    def recording(self, key):
        reads.append((self.name, self.shape, key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    dcmh_mat.convert(files, tmp_path / "out", n_query=1, n_train=1, chunk_rows=2)
    image_reads = [r for r in reads if r[0] == "/IAll"]
    assert len(image_reads) == 3                          # 6 pairs, 2 at a time
    for name, shape, key in reads:
        bounded = [(axis, k) for axis, k in enumerate(key) if k != slice(None)]
        assert len(bounded) == 1, (name, key)              # one axis sliced, the pair axis
        axis, k = bounded[0]
        assert shape[axis] == N and k.stop - k.start <= 2


def test_image_axes_rule():
    def axes(shape, n):
        var = dcmh_mat.MatVar(Path("x.mat"), "IAll", np.zeros(shape, np.uint8), reversed=False)
        return dcmh_mat.image_axes(var, n)

    assert axes((N, 3, 7, 5), N) == (0, 2, 3, 1)
    assert axes((7, 5, 3, N), N) == (3, 0, 1, 2)
    assert axes((4, 4, 3, 4), 4) == (3, 0, 1, 2)         # side == n: channel beside pairs
    assert axes((4, 3, 4, 4), 4) == (0, 2, 3, 1)
    with pytest.raises(DataError, match="expected n x 3 x H x W"):
        axes((N, 7, 5, 2), N)


def test_names_from_files(tmp_path):
    src = save_v5(tmp_path / "data.mat", IAll=matlab_images(pixels(4, 4), "hw3n"),
                  YAll=YALL, LAll=LALL)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("sky\nsea\ntree\ndog\ncar\n\n")
    names = tmp_path / "labels.txt"
    names.write_text("animal\nnature\nvehicle\n")
    meta, _ = dcmh_mat.convert(src, tmp_path / "out", vocabulary=vocab, label_names=names,
                               n_query=1, n_train=1)
    assert meta.name == "data"
    assert meta.vocabulary == ["sky", "sea", "tree", "dog", "car"]
    assert meta.label_names == ["animal", "nature", "vehicle"]
    names.write_text("animal\nnature\n")
    with pytest.raises(DataError, match=re.escape(f"{names}: 2 names, expected 3")):
        dcmh_mat.convert(src, tmp_path / "out2", label_names=names, n_query=1, n_train=1)


@pytest.mark.parametrize("path, name", [("nus-wide-tc21-iall.mat", "nuswide"),
                                        ("FLICKR-25K.mat", "mirflickr"),
                                        ("mirflickr25k-yall.mat", "mirflickr"),
                                        ("IAPR-TC12.mat", "iapr"),
                                        ("coco-lall.mat", "coco")])
def test_default_name(path, name):
    assert dcmh_mat.default_name(Path(path)) == name


def test_cli_run(tmp_path, capsys):
    files = split_files(tmp_path / "mat")
    out = tmp_path / "cli"
    argv = ["data", "convert", "dcmh-mat", "--src", *map(str, files), "--out", str(out),
            "--query", "1", "--train", "1"]
    args = build_parser().parse_args(argv)
    assert args.image_size is None and not hasattr(args, "link_images")
    assert main(argv) == 0
    assert "pairs kept: 4" in capsys.readouterr().out
    assert (out / "meta.json").is_file()


# -- malformed input: a clear DataError and nothing left behind ----------------------

def convert_fails(tmp_path, src, match, error=DataError):
    out = tmp_path / "out" / "ds"
    with pytest.raises(error, match=match):
        dcmh_mat.convert(src, out, n_query=1, n_train=1)
    assert leftovers(out) == []


def test_missing_variable(tmp_path):
    src = save_v5(tmp_path / "FLICKR-25K.mat", images=matlab_images(pixels(4, 4), "hw3n"),
                  YAll=YALL)
    convert_fails(tmp_path, src, re.escape(f"no LAll variable (labels) in the given files "
                                           f"(variables found: {src}: YAll, images)"))


def test_variable_in_two_files(tmp_path):
    files = split_files(tmp_path / "mat")
    extra = save_v5(tmp_path / "more.mat", YAll=YALL)
    convert_fails(tmp_path, [*files, extra], re.escape(
        f"text variable found more than once ({files[1]}: YAll, {extra}: YAll)"))


def test_mismatched_row_counts(tmp_path):
    files = split_files(tmp_path / "mat", yall=YALL[:-1])
    convert_fails(tmp_path, files, rf"row counts differ: .*{re.escape(str(files[1]))}: "
                                   r"variable YAll is 5x5")


def test_non_integer_count(tmp_path):
    yall = YALL.copy()
    yall[2, 1] = 0.5
    files = split_files(tmp_path / "mat", yall=yall)
    convert_fails(tmp_path, files, re.escape(f"{files[1]}: variable YAll, row 2 (0-based): "
                                             "column 1 (0-based) is 0.5"))


def test_label_value_two(tmp_path):
    lall = LALL.copy()
    lall[4, 0] = 2
    src = save_v5(tmp_path / "FLICKR-25K.mat", images=matlab_images(pixels(4, 4), "n3hw"),
                  YAll=YALL, LAll=lall)
    convert_fails(tmp_path, src, re.escape(f"{src}: variable LAll, row 4 (0-based): "
                                           "column 0 (0-based) is 2.0, expected 0 or 1"))


def test_float_images(tmp_path):
    src = save_v5(tmp_path / "x.mat", IAll=pixels(4, 4).astype(np.float32), YAll=YALL, LAll=LALL)
    convert_fails(tmp_path, src, re.escape(f"{src}: variable IAll is float32, expected uint8"))


def test_not_a_mat_file(tmp_path):
    src = tmp_path / "junk.mat"
    src.write_bytes(b"hello" * 50)
    convert_fails(tmp_path, src, re.escape(f"{src}: not a MATLAB .mat file"))


def test_failure_while_writing_leaves_nothing(tmp_path):
    files = split_files(tmp_path / "mat")
    out = tmp_path / "out" / "ds"
    with pytest.raises(ValueError, match="cannot take"):       # 4 pairs kept, 5 asked for
        dcmh_mat.convert(files, out, n_query=3, n_train=2)
    assert leftovers(out) == []
