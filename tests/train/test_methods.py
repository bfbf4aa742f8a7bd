"""The registry (train/methods/__init__.py): build_trainer hands each config field
to the trainer that uses it; the optimizer/scheduler state helper (steps.Optimizers)."""
import pytest
import torch

from hashgan_ray.config import METHODS, TrainConfig
from hashgan_ray.data.format import read_meta
from hashgan_ray.train.loop import train_split_ids
from hashgan_ray.train.methods import build_model, build_trainer, trainer_class
from hashgan_ray.train.steps import LrSchedule, Optimizers

TINY = dict(bits=16, text_hidden=64, text_features=32)


def built(synth_data, **fields):
    cfg = TrainConfig(data=str(synth_data), **TINY, **fields)
    torch.manual_seed(0)
    model = build_model(cfg, read_meta(synth_data))
    return build_trainer(cfg, model, train_ids=train_split_ids(synth_data)), model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_every_optimizer_takes_the_configs_lr_betas_and_schedule(synth_data, method, schedule):
    attention = "both" if method == "hashgan" else "none"
    trainer, _ = built(synth_data, method=method, attention=attention, lr=3e-4, beta1=0.7,
                       lr_schedule=schedule, epochs=7, lr_decay_every=3, lr_decay=0.2)
    assert isinstance(trainer, trainer_class(method))
    optimizers = [o for o in trainer.optimizers.named.values() if o is not None]
    # hashgan: E/D and G; dcmh: image and text; dfah, schgan: two players; supervised: one
    assert len(optimizers) == (1 if method == "supervised" else 2)
    for o in optimizers:
        # (HashGAN's and SCH-GAN's label head is a second group of E/D's optimizer)
        assert {(g["lr"], g["betas"]) for g in o.param_groups} == {(3e-4, (0.7, 0.999))}
    assert len(trainer.optimizers.schedulers) == len(optimizers)
    for s in trainer.optimizers.schedulers:
        if schedule == "cosine":
            assert isinstance(s, torch.optim.lr_scheduler.CosineAnnealingLR) and s.T_max == 7
        else:
            assert isinstance(s, torch.optim.lr_scheduler.StepLR)
            assert (s.step_size, s.gamma) == (3, 0.2)


def test_hashgan_and_schgan_take_the_objective_and_the_schedule_of_steps(synth_data):
    fields = dict(margin=0.7, mining="hardest", d_steps=3, g_steps=2, label_head=0.3)
    hashgan, _ = built(synth_data, method="hashgan", quantization=0.4, balance=0.2, **fields)
    assert (hashgan.margin, hashgan.mining, hashgan.d_steps, hashgan.g_steps) == (
        0.7, "hardest", 3, 2)
    assert (hashgan.quantization, hashgan.balance, hashgan.oracle) == (0.4, 0.2, None)
    schgan, _ = built(synth_data, method="schgan", **fields)
    assert (schgan.margin, schgan.mining, schgan.d_steps, schgan.g_steps) == (0.7, "hardest", 3, 2)
    num_labels = read_meta(synth_data).num_labels
    for trainer in (hashgan, schgan):           # the label head: the weight, a logit per label
        assert trainer.label_head.weight == 0.3
        assert trainer.label_head.layer.out_features == num_labels
    for method in ("hashgan", "schgan"):        # weight 0: the paper's objective, no head
        assert built(synth_data, method=method, label_head=0.0)[0].label_head is None
    oracle, model = built(synth_data, method="hashgan", attention="oracle")
    assert oracle.oracle is not None and oracle.opt_g is None
    assert list(model.attention.parameters()) == []


def test_dcmh_starts_from_the_configs_seed_and_supervised_has_a_head_per_label(synth_data):
    a, _ = built(synth_data, method="dcmh", seed=5)
    b, _ = built(synth_data, method="dcmh", seed=5)
    c, _ = built(synth_data, method="dcmh", seed=6)
    assert torch.equal(a.buffers["image"], b.buffers["image"])
    assert not torch.equal(a.buffers["image"], c.buffers["image"])
    supervised, _ = built(synth_data, method="supervised")
    assert supervised.head.out_features == read_meta(synth_data).num_labels


@pytest.mark.parametrize("method", ["dcmh", "dfah"])
def test_methods_with_a_row_per_training_pair_need_the_train_ids(synth_data, method):
    cfg = TrainConfig(data=str(synth_data), method=method, **TINY)
    model = build_model(cfg, read_meta(synth_data))
    with pytest.raises(ValueError, match="train_ids|training ids"):
        build_trainer(cfg, model)


def test_optimizers_save_and_restore_by_name_with_their_schedulers(tmp_path):
    def fresh():
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        return Optimizers(LrSchedule("step", decay_every=1, decay=0.5),
                          first=torch.optim.Adam(net.parameters(), lr=1.0), absent=None), net

    optimizers, net = fresh()
    net(torch.ones(1, 3)).sum().backward()
    optimizers["first"].step()
    optimizers.end_epoch()
    state = optimizers.state_dict()
    assert set(state) == {"first", "absent", "schedulers"} and state["absent"] is None
    torch.save(state, tmp_path / "state.pt")
    again, _ = fresh()
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert again["first"].state_dict()["state"][0]["step"] == 1
    assert again["first"].param_groups[0]["lr"] == 0.5
    assert again.schedulers[0].last_epoch == 1


class ReadFields(TrainConfig):
    """A TrainConfig that records the fields read from it once `read` is set
    (not in its own __post_init__ checks)."""

    def __getattribute__(self, name):
        read = object.__getattribute__(self, "__dict__").get("read")
        if read is not None and name in TrainConfig.__dataclass_fields__:
            read.add(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("method", METHODS)
def test_a_method_fields_option_is_read_for_its_methods_alone(synth_data, method):
    """config.METHOD_FIELDS lets a grid keep another method's finished cells when
    one of these options changes (experiment/grid.py): each is read, in building
    the model and the trainer, for exactly the methods it names."""
    from hashgan_ray.config import METHOD_FIELDS

    cfg = ReadFields(data=str(synth_data), method=method, **TINY)
    cfg.read = set()
    build_trainer(cfg, build_model(cfg, read_meta(synth_data)),
                  train_ids=train_split_ids(synth_data))
    assert {name for name, methods in METHOD_FIELDS.items() if method in methods} == (
        cfg.read & set(METHOD_FIELDS))
