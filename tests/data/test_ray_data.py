import numpy as np

from hashgan_ray.data.format import read_pairs
from hashgan_ray.data.ray_data import read_split


def test_ray_data_streams_decoded_batches(local_ray, synth_data):
    ds = read_split(synth_data, "database")
    batches = list(ds.iter_batches(batch_size=32, batch_format="numpy"))
    ids = np.concatenate([b["id"] for b in batches])
    expected = read_pairs(synth_data, "database", columns=["id"]).column("id").to_pylist()
    assert sorted(ids.tolist()) == sorted(expected) and len(ids) == 216
    b = batches[0]
    assert set(b) == {"id", "image", "text", "labels"}
    assert b["image"].dtype == np.uint8 and b["image"].shape[1:] == (3, 64, 64)
    assert b["labels"].shape[1] == 24 and (b["labels"].sum(1) >= 1).all()

    torch_batch = next(iter(read_split(synth_data, "query").iter_torch_batches(batch_size=8)))
    assert tuple(torch_batch["image"].shape) == (8, 3, 64, 64)
    assert str(torch_batch["text"].dtype) == "torch.float32"
