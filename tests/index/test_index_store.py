"""The index directory without Ray: real FAISS, real Parquet, brute force from metrics."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hashgan_ray.evaluation.metrics import hamming_distances
from hashgan_ray.index import store


def random_codes(n, bits, seed, first_id=0):
    rng = np.random.default_rng(seed)
    ids = first_id + rng.permutation(n).astype(np.int64) * 3     # ids are not row numbers
    image = np.packbits(rng.random((n, bits)) < 0.5, axis=1)
    text = np.packbits(rng.random((n, bits)) < 0.5, axis=1)
    return store.Codes(ids, image, text)


def writer_of(codes, batch=97, fail_after=None):
    def write(writer):
        for a in range(0, len(codes), batch):
            if fail_after is not None and a >= fail_after:
                raise RuntimeError("encoder died")
            c = codes.slice(a, a + batch)
            writer.add(c.ids, c.image, c.text)
    return write


def fields():
    return {"checkpoint": {"path": "/m", "fingerprint": "f" * 64}, "datasets": [],
            "dataset_fingerprint": "d" * 64}


def brute_force(queries, db_codes, db_ids, k):
    """The metrics module's ranking: ascending Hamming, ties by database order."""
    d = hamming_distances(queries, db_codes)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), db_ids[order]


@pytest.mark.parametrize("shards", [1, 3])
def test_exact_search_is_the_brute_force_ranking_with_ties(tmp_path, shards):
    # 8-bit codes over 700 rows: every distance is shared by dozens of rows
    codes = random_codes(700, 8, seed=shards)
    m = store.write_index(tmp_path / "ix", writer_of(codes), bits=8, kind="flat",
                          shards=shards, manifest_fields=fields())
    assert [s["rows"] for s in m["shards"]] == np.diff(store.shard_bounds(700, shards)).tolist()
    index = store.HashIndex(tmp_path / "ix")
    queries = random_codes(25, 8, seed=99).text
    for target in ("image", "text"):
        for k in (1, 10, 333, 700, 1000):
            D, I = index.search(queries, target, k)
            bD, bI = brute_force(queries, codes.of(target), codes.ids, k)
            assert (I == bI).all() and (D == bD).all(), (target, k)


def test_codes_files_and_manifest(tmp_path):
    codes = random_codes(250, 32, seed=1)
    store.write_index(tmp_path / "ix", writer_of(codes), bits=32, kind="flat", shards=2,
                      manifest_fields=fields())
    table = pq.read_table(tmp_path / "ix" / "codes" / "part-00000.parquet")
    assert table.schema == pa.schema([("id", pa.int64()), ("image_code", pa.binary(4)),
                                      ("text_code", pa.binary(4))])
    back = store.read_codes(tmp_path / "ix")
    assert (back.ids == codes.ids).all() and (back.image == codes.image).all()
    m = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert (m["bits"], m["count"], m["kind"], len(m["shards"])) == (32, 250, "flat", 2)
    assert m["checkpoint"]["fingerprint"] == "f" * 64 and m["created_at"].endswith("Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]      # no temporary left


def test_manifest_mismatch_is_refused(tmp_path):
    store.write_index(tmp_path / "ix", writer_of(random_codes(50, 16, 0)), bits=16,
                      kind="flat", shards=1, manifest_fields=fields())
    with pytest.raises(store.IndexMismatch, match="holds 16-bit codes but the model makes 32-bit"):
        store.HashIndex(tmp_path / "ix", bits=32)
    with pytest.raises(store.IndexMismatch, match="built with another model"):
        store.open_shard(tmp_path / "ix", 0, bits=16, checkpoint_fingerprint="0" * 64)
    store.open_shard(tmp_path / "ix", 0, bits=16, checkpoint_fingerprint="f" * 64)
    with pytest.raises(FileNotFoundError, match="is not an index directory"):
        store.read_manifest(tmp_path)


def test_a_failed_build_leaves_the_previous_index_intact(tmp_path):
    first = random_codes(300, 16, seed=0)
    store.write_index(tmp_path / "ix", writer_of(first), bits=16, kind="flat", shards=1,
                      manifest_fields=fields())
    before = (tmp_path / "ix" / "manifest.json").read_text()
    with pytest.raises(RuntimeError, match="encoder died"):
        store.write_index(tmp_path / "ix", writer_of(random_codes(300, 16, 5), fail_after=150),
                          bits=16, kind="flat", shards=1, manifest_fields=fields(), overwrite=True)
    dup = random_codes(10, 16, 1)
    dup.ids[3] = dup.ids[7]
    with pytest.raises(ValueError, match="1 duplicate id"):
        store.write_index(tmp_path / "ix", writer_of(dup), bits=16, kind="flat", shards=1,
                          manifest_fields=fields(), overwrite=True)
    with pytest.raises(FileExistsError, match="--overwrite"):
        store.write_index(tmp_path / "ix", writer_of(first), bits=16, kind="flat", shards=1,
                          manifest_fields=fields())
    assert (tmp_path / "ix" / "manifest.json").read_text() == before
    assert (store.read_codes(tmp_path / "ix").ids == first.ids).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_add_appends_to_the_last_shard_and_refuses_duplicates(tmp_path):
    old, new = random_codes(200, 16, 0), random_codes(60, 16, 1, first_id=10_000)
    store.write_index(tmp_path / "ix", writer_of(old), bits=16, kind="flat", shards=2,
                      manifest_fields=fields())
    shard0 = (tmp_path / "ix" / store.shard_file(0, "image")).read_bytes()
    m = store.add_to_index(tmp_path / "ix", writer_of(new), dataset={"path": "new"})
    assert m["count"] == 260 and [s["rows"] for s in m["shards"]] == [100, 160]
    assert (tmp_path / "ix" / store.shard_file(0, "image")).read_bytes() == shard0
    both = store.read_codes(tmp_path / "ix")
    assert (both.ids == np.concatenate([old.ids, new.ids])).all()
    D, I = store.HashIndex(tmp_path / "ix").search(new.text[:5], "image", 260)
    bD, bI = brute_force(new.text[:5], both.image, both.ids, 260)
    assert (I == bI).all() and (D == bD).all()
    assert set(new.ids) <= set(I.ravel())
    with pytest.raises(ValueError, match="60 duplicate id"):
        store.add_to_index(tmp_path / "ix", writer_of(new), dataset={"path": "again"})
    assert store.read_manifest(tmp_path / "ix")["count"] == 260


def test_remove_rebuilds_only_the_shards_that_held_the_ids(tmp_path):
    codes = random_codes(200, 16, 0)
    store.write_index(tmp_path / "ix", writer_of(codes), bits=16, kind="flat", shards=2,
                      manifest_fields=fields())
    shard0 = (tmp_path / "ix" / store.shard_file(0, "image")).stat().st_ino
    gone = codes.ids[[100, 150, 199]]                               # all in shard 1
    m = store.remove_from_index(tmp_path / "ix", gone[::-1])
    assert m["count"] == 197 and [s["rows"] for s in m["shards"]] == [100, 97]
    assert (tmp_path / "ix" / store.shard_file(0, "image")).stat().st_ino == shard0  # linked
    left = store.read_codes(tmp_path / "ix")
    keep = ~np.isin(codes.ids, gone)
    assert (left.ids == codes.ids[keep]).all() and (left.text == codes.text[keep]).all()
    assert (store.read_ids(tmp_path / "ix") == left.ids).all()
    D, I = store.HashIndex(tmp_path / "ix").search(codes.text[:7], "image", 197)
    bD, bI = brute_force(codes.text[:7], left.image, left.ids, 197)   # database order kept
    assert (I == bI).all() and (D == bD).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]       # nothing left behind


def test_a_refused_removal_changes_nothing(tmp_path):
    codes = random_codes(40, 16, 0)
    store.write_index(tmp_path / "ix", writer_of(codes), bits=16, kind="flat", shards=2,
                      manifest_fields=fields())
    before = (tmp_path / "ix" / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"2 id\(s\) not in the index: 1, 7; nothing"):
        store.remove_from_index(tmp_path / "ix", [codes.ids[0], 1, 7])
    with pytest.raises(ValueError, match="leave shard 1 empty"):
        store.remove_from_index(tmp_path / "ix", codes.ids[20:])
    with pytest.raises(ValueError, match="no ids"):
        store.remove_from_index(tmp_path / "ix", [])
    assert (tmp_path / "ix" / "manifest.json").read_text() == before
    assert len(store.read_codes(tmp_path / "ix")) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_each_change_is_a_new_version(tmp_path):
    """add, remove and a build over the directory each give the next version: what
    a running service watches for (hashgan_ray.serving.app)."""
    codes, more = random_codes(50, 16, 0), random_codes(10, 16, 1, first_id=10_000)
    write = dict(bits=16, kind="flat", shards=1, manifest_fields=fields())
    assert store.write_index(tmp_path / "ix", writer_of(codes), **write)["version"] == 1
    assert store.add_to_index(tmp_path / "ix", writer_of(more),
                              dataset={"path": "more"})["version"] == 2
    assert store.remove_from_index(tmp_path / "ix", more.ids[:2])["version"] == 3
    m = store.write_index(tmp_path / "ix", writer_of(codes), overwrite=True, **write)
    assert m["version"] == 4 and store.manifest_version(store.read_manifest(tmp_path / "ix")) == 4
    assert store.write_index(tmp_path / "new", writer_of(codes), **write)["version"] == 1


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "multihash"])
def test_approximate_kinds_report_recall(tmp_path, kind):
    codes = random_codes(2000, 32, seed=2)
    m = store.write_index(tmp_path / "ix", writer_of(codes, batch=500), bits=32, kind=kind,
                          shards=1, manifest_fields=fields())
    assert m["kind"] == kind and m["params"]
    recall = store.recall_at_k(tmp_path / "ix", k=10, queries=50)
    assert set(recall) == {"image", "text"}
    assert all(0.3 <= r <= 1.0 for r in recall.values()), recall
    D, I = store.HashIndex(tmp_path / "ix").search(codes.text[:3], "image", 10)
    assert I.shape == (3, 10) and (I[I >= 0] % 3 == 0).all()     # dataset ids come back
