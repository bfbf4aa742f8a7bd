"""The label-supervised reference (train/methods/supervised.py) and the in-memory loop."""
import numpy as np
import pytest
import torch

from hashgan_ray.config import TrainConfig
from hashgan_ray.evaluation.metrics import label_codes, mean_average_precision
from hashgan_ray.train.local import load_split, train_in_memory
from hashgan_ray.train.methods import build_model, build_trainer


def small_cfg(data, **kw):
    return TrainConfig(**{"data": str(data), "out": "", "bits": 16, "text_hidden": 64,
                          "text_features": 32, "batch_size": 32, "epochs": 2, "lr": 1e-3, **kw})


def test_label_codes_are_the_packed_label_vectors_and_their_map_by_hand():
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=np.float32)
    assert label_codes(labels).tolist() == [[0b10000000], [0b01100000], [0b11000000]]
    # Query [1,0,0] against database rows [0,1,1] (d=3, irrelevant) and [1,1,0]
    # (d=1, relevant): the relevant one ranks first, AP = 1.
    q, d = labels[:1], labels[1:]
    assert mean_average_precision(label_codes(q), label_codes(d), q, d) == pytest.approx(1.0)
    # Each row against all three: [1,0,0] ranks itself (d=0), [1,1,0] (d=1, relevant),
    # [0,1,1] (d=3, irrelevant); [0,1,1] ranks itself, [1,1,0] (d=2), [1,0,0] (d=3,
    # irrelevant); every row is relevant to [1,1,0]. Relevant items always lead: MAP 1.
    assert mean_average_precision(label_codes(labels), label_codes(labels),
                                  labels, labels) == pytest.approx(1.0)


def test_supervised_step_trains_the_head_from_text_only(synth_data):
    cfg = small_cfg(synth_data, method="supervised")
    torch.manual_seed(0)
    from hashgan_ray.data.format import read_meta
    model = build_model(cfg, read_meta(synth_data))
    trainer = build_trainer(cfg, model)
    arrays = load_split(synth_data, "train")
    batch = {k: torch.as_tensor(v[:32]) for k, v in arrays.items()}
    # The image loss alone must not reach the head: its gradient comes from text.
    h_img = torch.tanh(trainer.branches["image"](batch["image"]))
    image_logits = torch.nn.functional.linear(h_img, trainer.head.weight.detach(),
                                              trainer.head.bias.detach())
    torch.nn.functional.binary_cross_entropy_with_logits(image_logits, batch["labels"]).backward()
    assert trainer.head.weight.grad is None
    assert model.net.image_code.weight.grad is not None
    model.zero_grad(set_to_none=True)
    before = trainer.head.weight.detach().clone()
    stats = trainer.step(0, batch)
    assert set(stats) == {"text_ce", "image_ce", "balance"} and all(np.isfinite(list(stats.values())))
    assert not torch.equal(before, trainer.head.weight)
    # State round-trips (what a checkpoint holds).
    other = build_trainer(cfg, build_model(cfg, read_meta(synth_data)))
    other.load_state_dict(trainer.state_dict())
    assert torch.equal(other.head.weight, trainer.head.weight)


def test_in_memory_training_runs_every_epoch_and_the_model_encodes(synth_data):
    epochs = []
    model = train_in_memory(small_cfg(synth_data, attention="none", lr_schedule="cosine"),
                            on_epoch=lambda e, m, s: epochs.append((e, s)))
    assert [e for e, _ in epochs] == [0, 1]
    assert all(np.isfinite(s["full"]) for _, s in epochs)
    assert not model.training
    codes = model.encode_text(torch.as_tensor(load_split(synth_data, "query")["text"]))
    assert codes.shape[1] == 16


def test_cosine_schedule_reaches_zero_at_the_last_epoch():
    from hashgan_ray.train.steps import LrSchedule

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    (sched,) = LrSchedule("cosine", epochs=4).schedulers([opt, None])
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs[1] < 1.0 and lrs[3] < lrs[2]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
