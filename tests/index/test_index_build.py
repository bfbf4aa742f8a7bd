"""`hashgan-ray index build/add`: the real Ray Data job (actor pool) on a real local Ray."""
import json

import numpy as np
import pytest
from helpers import write_tiny_model

from hashgan_ray.cli import main
from hashgan_ray.data.format import DataError, DatasetWriter, read_meta, read_pairs
from hashgan_ray.evaluation.metrics import hamming_distances
from hashgan_ray.index import build, store
from hashgan_ray.model.checkpoint import fingerprint, load_model
from hashgan_ray.model.encode import encode_split


def copy_dataset(src, out, *, id_offset=0, corrupt_row=None):
    """A copy of the dataset at `src` with ids shifted (and one image broken)."""
    meta = read_meta(src)
    rows = read_pairs(src).to_pylist()
    with DatasetWriter(out, meta.vocabulary, meta.label_names) as w:
        for i, r in enumerate(rows):
            image = b"not an image" if i == corrupt_row else r["image"]
            w.add(r["id"] + id_offset, r["text"], r["labels"], image=image)
        w.finish(name="copy", source="synthetic", image_size=meta.image_size,
                 n_query=meta.counts["query"], n_train=meta.counts["train"], seed=meta.seed)
    return out


@pytest.fixture(scope="module")
def built(local_ray, synth_data, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "index"
    assert main(["index", "build", "--checkpoint", str(tiny_model), "--data", str(synth_data),
                 "--out", str(out), "--shards", "2", "--batch-size", "64"]) == 0
    return out


def test_build_encodes_the_database_in_order_and_search_is_exact(built, synth_data, tiny_model):
    m = json.loads((built / "manifest.json").read_text())
    assert (m["bits"], m["count"], m["kind"]) == (16, 216, "flat")
    assert [s["rows"] for s in m["shards"]] == [108, 108]
    assert m["checkpoint"]["fingerprint"] == fingerprint(tiny_model)
    assert m["datasets"][0]["split"] == "database" and len(m["dataset_fingerprint"]) == 64

    codes = store.read_codes(built)
    model, _ = load_model(tiny_model)
    expected = encode_split(model, synth_data, "database")        # the plain loop, same model
    assert (codes.ids == expected.ids).all()                        # storage order kept
    assert (codes.image == expected.image_codes).all() and (codes.text == expected.text_codes).all()

    query = encode_split(model, synth_data, "query")
    index = store.HashIndex(built, bits=16, checkpoint_fingerprint=fingerprint(tiny_model))
    for q, target in ((query.text_codes, "image"), (query.image_codes, "text")):
        D, I = index.search(q, target, 216)
        d = hamming_distances(q, codes.of(target))
        order = np.argsort(d, axis=1, kind="stable")
        assert (I == codes.ids[order]).all() and (D == np.take_along_axis(d, order, 1)).all()
        assert (np.diff(D, axis=1) == 0).sum() > 0                  # ties were exercised


def test_add_then_search_finds_the_new_ids_and_duplicates_are_refused(
        built, synth_data, tmp_path, capsys):
    index = tmp_path / "index"
    (index / "shards").mkdir(parents=True)
    for f in built.rglob("*"):                                    # a private copy to add to
        if f.is_file():
            (index / f.relative_to(built)).parent.mkdir(parents=True, exist_ok=True)
            (index / f.relative_to(built)).write_bytes(f.read_bytes())
    assert main(["index", "add", "--index", str(index), "--data", str(synth_data)]) == 2
    assert "216 duplicate id(s)" in capsys.readouterr().err

    new_data = copy_dataset(synth_data, tmp_path / "new", id_offset=100_000)
    assert main(["index", "add", "--index", str(index), "--data", str(new_data),
                 "--split", "query"]) == 0
    m = store.read_manifest(index)
    assert m["count"] == 216 + 24 and [s["rows"] for s in m["shards"]] == [108, 132]
    new_ids = read_pairs(new_data, "query", columns=["id"]).column("id").to_numpy()
    codes = store.read_codes(index)
    assert (codes.ids[-24:] == new_ids).all()
    # a new pair's own text finds its image at distance 0 or near it, and every new id is found
    D, I = store.HashIndex(index).search(codes.text[-24:], "image", 240)
    assert set(new_ids) <= set(I.ravel().tolist())
    assert (I[:, 0] >= 0).all()
    assert "version 2" in capsys.readouterr().out

    # and out again: the CLI's remove, no Ray needed
    assert main(["index", "remove", "--index", str(index), "--ids",
                 *map(str, new_ids)]) == 0
    assert "removed 24 pairs" in capsys.readouterr().out
    m = store.read_manifest(index)
    assert m["count"] == 216 and m["version"] == 3
    assert not set(new_ids) & set(store.read_ids(index).tolist())


def test_a_crash_in_the_middle_of_a_build_leaves_the_previous_index(
        built, synth_data, tiny_model, tmp_path):
    before = {p.relative_to(built): p.read_bytes() for p in built.rglob("*") if p.is_file()}
    broken = copy_dataset(synth_data, tmp_path / "broken", corrupt_row=150)
    with pytest.raises(Exception, match="cannot identify image"):
        build.build_index(tiny_model, broken, built, overwrite=True, batch_size=64)
    after = {p.relative_to(built): p.read_bytes() for p in built.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in built.parent.iterdir()) == ["index"]   # no temporary left


def test_a_model_of_another_vocabulary_is_refused(synth_data, tmp_path):
    other = copy_dataset(synth_data, tmp_path / "other")
    meta_path = other / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["vocabulary"] = meta["vocabulary"][::-1]
    meta_path.write_text(json.dumps(meta))
    model = write_tiny_model(tmp_path / "model", other)
    with pytest.raises(DataError, match="vocabulary differs"):
        build.check_dataset(model, synth_data)


def test_the_encode_job_bounds_what_waits_in_the_object_store(local_ray, synth_data, tiny_model):
    """Decoded batches queue for the encoders within a budget, not up to Ray Data's
    share of the store (which let it grow with the database: benchmarks/scale.py)."""
    from hashgan_ray.data.loading import BatchSpec

    ds = build.encode_job(tiny_model, synth_data, "database", batch_size=64, actors=2)
    spec = BatchSpec.from_meta(read_meta(synth_data), load_model(tiny_model)[0].args["image_size"])
    budget = build.object_store_budget(spec, 64, 2)
    assert ds.context.execution_options.resource_limits.object_store_memory == budget
    assert budget == 256 << 20                              # the floor, for batches this small
    big = BatchSpec(image_size=224, vocab_size=1000, num_labels=21)
    assert build.object_store_budget(big, 256, 4) == 8 * 4 * 256 * (3 * 224 ** 2 + 4 * 1021)
    ids = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert ids.tolist() == read_pairs(synth_data, "database", columns=["id"]).column("id").to_pylist()


def test_the_encode_jobs_read_and_decode_tasks_fit_in_one_cpu(local_ray, synth_data, tiny_model):
    """The encoders leave one CPU per node. A read task that waits for room
    downstream keeps its CPU, so with 1 CPU each for reading and decoding, such a
    read on that CPU kept every decode task from starting: the index stage of
    benchmarks/scale.py stalled for 15 minutes at NUS-WIDE's size. Now one read at
    a time (0.25 CPU) and a decode task (0.75) fit in it together. (Ray Data's
    logical plan, read through a private attribute: Ray is pinned in constraints.txt.)"""
    ds = build.encode_job(tiny_model, synth_data, "database", batch_size=64, actors=2)
    ops, op = [], ds._logical_plan.dag
    while op is not None:
        ops.append(op)
        op = op.input_dependencies[0] if op.input_dependencies else None
    by_name = {type(o).__name__ + ":" + getattr(o, "name", ""): o for o in ops}
    encode = next(o for k, o in by_name.items() if "CodeEncoder" in k)
    decode = next(o for k, o in by_name.items() if "decode_batch" in k)
    read = next(o for k, o in by_name.items() if k.startswith("ReadFiles"))
    assert encode.compute.min_size == encode.compute.max_size == 2        # the actor pool
    assert decode.ray_remote_args["num_cpus"] + read.ray_remote_args["num_cpus"] <= 1.0
    assert read.compute.size == 1                                           # one read at a time
    assert not any("Repartition" in k for k in by_name)                    # nothing between
