import pytest
import torch

from hashgan_ray.data.loading import iter_batches
from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.losses import label_similarity, triplet_ranking_loss
from hashgan_ray.train.methods.hashgan import ed_step, g_step
from hashgan_ray.train.steps import build_optimizers, g_steps_after

MARGIN = 2.0
BETAS = (0.5, 0.999)


@pytest.fixture(scope="module")
def batch(synth_data):
    raw = next(iter_batches(synth_data, "train", 32))
    return {k: torch.as_tensor(v) for k, v in raw.items()}


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return HashGAN(bits=16, vocab_size=496, text_hidden=64, text_features=32, **kw)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def adversarial(model, batch):
    """F_{T->Î} + F_{I->T̂} with attended queries, as the G step measures it."""
    with torch.no_grad():
        codes = model(batch["image"], batch["text"])
        sim = label_similarity(batch["labels"], batch["labels"])
        return (triplet_ranking_loss(codes["txt"], codes["img_un"], sim, MARGIN)
                + triplet_ranking_loss(codes["img"], codes["txt_un"], sim, MARGIN)).item()


def test_schedule_is_four_ed_steps_then_one_g_step():
    # HashGAN's and SCH-GAN's: G steps come after every 4th E/D step, on the same batch
    assert [g_steps_after(s, 4, 1) for s in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert [g_steps_after(s, 2, 3) for s in range(4)] == [0, 3, 0, 3]
    assert not any(g_steps_after(s, 4, 0) for s in range(8))


@pytest.mark.parametrize("attention", ["both", "none"])
def test_every_batch_gets_an_ed_step_with_or_without_attention(batch, synth_data, attention):
    """An epoch is the same number of E/D updates in every Table 4 setting."""
    from hashgan_ray.config import TrainConfig
    from hashgan_ray.train.methods import build_trainer

    cfg = TrainConfig(data=str(synth_data), bits=16, text_hidden=64, text_features=32, d_steps=4,
                      g_steps=1)
    model = tiny_model(image_attention=attention == "both", text_attention=attention == "both")
    trainer = build_trainer(cfg, model)
    stats = [trainer.step(i, batch) for i in range(8)]
    assert all("full" in s for s in stats)
    assert trainer.opt_ed.state_dict()["state"][0]["step"] == 8
    g_steps = [i for i, s in enumerate(stats) if "g_adversarial" in s]
    assert g_steps == ([3, 7] if attention == "both" else [])
    if attention == "both":
        assert trainer.opt_g.state_dict()["state"][0]["step"] == 2


@pytest.mark.parametrize("batches", [3, 4])
def test_an_epoch_too_short_for_a_g_step_is_reported(batch, batches, synth_data, caplog):
    """The schedule counts steps within an epoch: fewer than d_steps batches
    mean G never moves, which a user with a small dataset must be told."""
    from hashgan_ray.config import TrainConfig
    from hashgan_ray.train.methods import build_trainer

    cfg = TrainConfig(data=str(synth_data), bits=16, text_hidden=64, text_features=32, d_steps=4,
                      g_steps=1)
    trainer = build_trainer(cfg, tiny_model())
    before = snapshot(trainer.model.attention)
    with caplog.at_level("WARNING", logger="hashgan_ray.train"):
        for _ in range(2):                                     # two epochs, one warning
            for i in range(batches):
                trainer.step(i, batch)
            trainer.end_epoch()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if batches < cfg.d_steps:
        assert moved(before, trainer.model.attention) == set()
        assert warnings == ["attention (G) got no step this epoch: 3 batches per worker, fewer "
                            "than d_steps=4; use a smaller --batch-size or --d-steps, or more data"]
    else:
        assert moved(before, trainer.model.attention)
        assert warnings == []


def test_ed_step_moves_e_and_d_but_not_attention(batch):
    model = tiny_model()
    opt_ed, _ = build_optimizers(model, 1e-3, BETAS)
    att, net = snapshot(model.attention), snapshot(model.net)
    for _ in range(2):
        ed_step(model, model.net, batch, opt_ed, MARGIN)
    assert moved(att, model.attention) == set()
    assert {"image_code.weight", "text_code.weight", "text_net.0.weight"} <= moved(net, model.net)


def test_g_step_moves_only_attention_and_raises_the_adversarial_loss(batch):
    model = tiny_model()
    model.eval()          # no dropout/batch-norm updates: only the optimiser changes weights
    _, opt_g = build_optimizers(model, 1e-2, BETAS)
    att, net = snapshot(model.attention), snapshot(model.net)
    before = adversarial(model, batch)
    for _ in range(3):
        g_step(model, model.attention, batch, opt_g, MARGIN)
    assert moved(net, model.net) == set()
    assert moved(att, model.attention) == {"image.score.weight", "image.score.bias",
                                           "text.score.weight", "text.score.bias"}
    assert adversarial(model, batch) > before


def test_the_model_says_which_attention_trains_whatever_the_config(batch, synth_data):
    """The trainer goes by the model's attention modules (steps.attention_switches),
    not by the config's switches, which only decide what build_model builds."""
    from hashgan_ray.config import TrainConfig
    from hashgan_ray.train.methods import build_trainer
    from hashgan_ray.train.steps import attention_switches

    model = tiny_model(image_attention=True, text_attention=False)
    assert attention_switches(model) == (True, False)
    cfg = TrainConfig(data=str(synth_data), bits=16, text_hidden=64, text_features=32,
                      attention="none", d_steps=1)
    stats = build_trainer(cfg, model).step(0, batch)
    assert stats["t2i_adv"] > 0 and stats["i2t_adv"] == 0 and "g_adversarial" in stats


def test_no_attention_means_no_g_optimizer():
    model = tiny_model(image_attention=False, text_attention=False)
    assert build_optimizers(model, 1e-3, BETAS)[1] is None


def test_deterministic_for_a_seed_on_cpu(batch):
    runs = []
    for _ in range(2):
        model = tiny_model(seed=3)
        opt_ed, opt_g = build_optimizers(model, 1e-3, BETAS)
        torch.manual_seed(3)
        for step in range(4):
            ed_step(model, model.net, batch, opt_ed, MARGIN)
            if g_steps_after(step, 4, 1):
                g_step(model, model.attention, batch, opt_g, MARGIN)
        runs.append(snapshot(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_hashgan_trainer_state_round_trips_through_weights_only_load(batch, synth_data, tmp_path):
    from hashgan_ray.config import TrainConfig
    from hashgan_ray.data.format import read_meta
    from hashgan_ray.train.methods import build_trainer

    meta = read_meta(synth_data)
    cfg = TrainConfig(bits=16, text_hidden=64, text_features=32, d_steps=1, g_steps=1,
                      label_head=1.0)
    model = tiny_model()
    trainer = build_trainer(cfg, model, meta=meta)
    losses = trainer.step(0, batch)
    assert "full" in losses and "g_adversarial" in losses and "label" in losses  # E/D then G
    trainer.end_epoch()
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    again = build_trainer(cfg, model, meta=meta)
    again.load_state_dict(state)
    assert again.opt_ed.state_dict()["state"][0]["step"] == 1
    assert again.opt_g.state_dict()["state"][0]["step"] == 1
    assert again.optimizers.schedulers[0].last_epoch == 1
    for a, b in zip(trainer.label_head.layer.parameters(), again.label_head.layer.parameters()):
        assert torch.equal(a, b)
    # a run without the label term has no head to restore: refused with the way out
    without = build_trainer(TrainConfig(**{**cfg.__dict__, "label_head": 0.0}), tiny_model())
    torch.save(without.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="--label-head 0"):
        build_trainer(cfg, tiny_model(), meta=meta).load_state_dict(
            torch.load(tmp_path / "plain.pt", weights_only=True))
    with pytest.raises(ValueError, match="trained with the label head"):     # and the other way
        without.load_state_dict(state)
