import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from hashgan_ray.data.format import DataError, DatasetWriter, iter_pairs, pair_files, read_meta, read_pairs
from hashgan_ray.data.images import encode_png
from hashgan_ray.data.splits import assign_splits, labeled_ids, mark_labeled, rows_of_split

PNG = encode_png(np.zeros((4, 4, 3), np.uint8))
VOCAB, LABELS = ["a", "b", "c"], ["x", "y"]


def write(out, n=20, *, overwrite=False, fail_after=None, **kw):
    with DatasetWriter(out, VOCAB, LABELS, rows_per_group=3, rows_per_file=7,
                       overwrite=overwrite) as w:
        for i in range(n):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("boom")
            w.add(1000 - i, [i % 3, 2], [i % 2], image=PNG)
        return w.finish(name="t", source="synthetic", image_size=4, seed=kw.get("seed", 1),
                        n_query=kw.get("n_query", 3), n_train=kw.get("n_train", 5))


def leftovers(parent):
    return [p for p in os.listdir(parent) if p.startswith(".")]


def test_round_trip_rows_groups_files_and_meta(tmp_path):
    meta = write(tmp_path / "ds")
    assert meta.counts == {"query": 3, "train": 5, "database": 12, "total": 20}
    assert len(pair_files(tmp_path / "ds")) == 3                     # 7 + 7 + 6 rows
    assert pq.ParquetFile(pair_files(tmp_path / "ds")[0]).num_row_groups == 3
    table = read_pairs(tmp_path / "ds")
    assert table.column_names == ["id", "image", "text", "labels", "split"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [1000 - i for i in range(20)]   # storage order kept
    assert rows[4] == {"id": 996, "image": PNG, "text": [1, 2], "labels": [0],
                       "split": rows[4]["split"]}
    on_disk = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert on_disk["vocabulary"] == VOCAB and on_disk["format_version"] == 1
    assert read_meta(tmp_path / "ds").split_size("database") == 17
    assert leftovers(tmp_path) == []


def test_split_filters_in_readers(tmp_path):
    write(tmp_path / "ds")
    db = read_pairs(tmp_path / "ds", "database").column("split").to_pylist()
    assert len(db) == 17 and set(db) == {"train", "database"}
    q = [b for b in iter_pairs(tmp_path / "ds", "query", columns=["id"], batch_size=2)]
    assert sum(b.num_rows for b in q) == 3 and q[0].schema.names == ["id"]


def test_failed_write_leaves_nothing_and_keeps_previous(tmp_path):
    with pytest.raises(RuntimeError):
        write(tmp_path / "new", fail_after=10)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []

    write(tmp_path / "ds")
    before = read_pairs(tmp_path / "ds").to_pylist()
    with pytest.raises(RuntimeError):
        write(tmp_path / "ds", overwrite=True, fail_after=10)
    assert read_pairs(tmp_path / "ds").to_pylist() == before
    with pytest.raises(FileExistsError, match="--overwrite"):
        write(tmp_path / "ds")
    write(tmp_path / "ds", n=9, overwrite=True)
    assert read_meta(tmp_path / "ds").counts["total"] == 9
    assert leftovers(tmp_path) == []


def test_writer_rejects_bad_rows(tmp_path):
    with DatasetWriter(tmp_path / "ds", VOCAB, LABELS) as w:
        w.add(1, [0], [0], image=PNG)
        with pytest.raises(ValueError, match="duplicate pair id 1"):
            w.add(1, [0], [0], image=PNG)
        with pytest.raises(ValueError, match="word index out of range"):
            w.add(2, [3], [0], image=PNG)
        with pytest.raises(ValueError, match="label index out of range"):
            w.add(2, [0], [2], image=PNG)
        with pytest.raises(ValueError, match="'image' value is missing"):
            w.add(2, [0], [0], image_path="x.jpg")
    with pytest.raises(ValueError, match="cannot take 3 query"):
        write(tmp_path / "small", n=2)


def test_splits_are_deterministic_and_order_free():
    ids = np.arange(100, 200)
    a = assign_splits(ids, 10, 30, seed=3)
    assert (a == "query").sum() == 10 and (a == "train").sum() == 30
    assert (a == assign_splits(ids, 10, 30, seed=3)).all()
    assert not (a == assign_splits(ids, 10, 30, seed=4)).all()
    shuffled = np.random.default_rng(0).permutation(len(ids))
    b = assign_splits(ids[shuffled], 10, 30, seed=3)
    assert (b == a[shuffled]).all()          # same id, same split, whatever the row order
    assert rows_of_split("database") == ("train", "database")
    with pytest.raises(ValueError, match="unknown split"):
        rows_of_split("test")


def test_read_meta_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="meta.json: missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"format_version": 1,\n "name": }')
    with pytest.raises(DataError, match=r"meta.json:2: not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"format_version": 99}')
    with pytest.raises(DataError, match="format_version 99"):
        read_meta(tmp_path)


def test_labeled_ids_draw_a_fixed_fraction_independent_of_order():
    ids = np.arange(100, 300)
    chosen = labeled_ids(ids, 0.1, seed=3)
    assert len(chosen) == 20 and set(chosen) <= set(ids)
    np.testing.assert_array_equal(chosen, labeled_ids(ids[::-1], 0.1, seed=3))
    assert not np.array_equal(chosen, labeled_ids(ids, 0.1, seed=4))
    np.testing.assert_array_equal(labeled_ids(ids, 1.0, seed=3), ids)

    batch = {"id": np.array([chosen[0], 5, chosen[1]]), "x": np.array([1, 2, 3])}
    kept = mark_labeled(batch, chosen, keep_unlabeled=False)
    assert kept["x"].tolist() == [1, 3]
    marked = mark_labeled(batch, chosen, keep_unlabeled=True)
    assert marked["labeled"].tolist() == [True, False, True] and marked["x"].tolist() == [1, 2, 3]


def test_a_fraction_that_keeps_no_labelled_pair_is_refused():
    with pytest.raises(ValueError, match="keeps none"):
        labeled_ids(np.arange(5), 0.01, seed=0)
