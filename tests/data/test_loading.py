import numpy as np

from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.data.images import decode_rgb
from hashgan_ray.data.loading import BatchSpec, bag_of_indices, decode_batch, iter_batches


def test_bag_of_indices_counts_repeats():
    out = bag_of_indices([[0, 2, 2], [], [1]], 3)
    assert out.dtype == np.float32
    assert out.tolist() == [[1, 0, 2], [0, 0, 0], [0, 1, 0]]


def test_decode_batch_values(synth_data):
    meta = read_meta(synth_data)
    rows = read_pairs(synth_data, "query").slice(0, 5).to_pydict()
    out = decode_batch(rows, BatchSpec.from_meta(meta))
    assert out["image"].shape == (5, 3, 64, 64) and out["image"].dtype == np.uint8
    assert (out["image"][2] == decode_rgb(rows["image"][2], 64).transpose(2, 0, 1)).all()
    assert out["text"].shape == (5, meta.vocab_size)
    assert np.flatnonzero(out["text"][1]).tolist() == rows["text"][1]
    assert np.flatnonzero(out["labels"][3]).tolist() == rows["labels"][3]
    assert out["id"].tolist() == rows["id"]


def test_iter_batches_covers_the_split_in_order(synth_data):
    ids = np.concatenate([b["id"] for b in iter_batches(synth_data, "database", 50)])
    assert ids.tolist() == read_pairs(synth_data, "database", columns=["id"]).column("id").to_pylist()
    small = next(iter_batches(synth_data, "query", 4, BatchSpec.from_meta(read_meta(synth_data), 32)))
    assert small["image"].shape == (4, 3, 32, 32)
