import pytest
import torch

from hashgan_ray.data.loading import iter_batches
from hashgan_ray.losses import label_similarity, triplet_ranking_loss
from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.steps import build_optimizers, ed_step, g_step, is_g_step

MARGIN = 2.0


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
    assert [is_g_step(s, 4, 1) for s in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert not any(is_g_step(s, 4, 0) for s in range(10))


def test_ed_step_moves_e_and_d_but_not_attention(batch):
    model = tiny_model()
    opt_ed, _ = build_optimizers(model, 1e-3, 0.5)
    att, net = snapshot(model.attention), snapshot(model.net)
    for _ in range(2):
        ed_step(model, model.net, batch, opt_ed, MARGIN)
    assert moved(att, model.attention) == set()
    assert {"image_code.weight", "text_code.weight", "text_net.0.weight"} <= moved(net, model.net)


def test_g_step_moves_only_attention_and_raises_the_adversarial_loss(batch):
    model = tiny_model()
    model.eval()          # no dropout/batch-norm updates: only the optimiser changes weights
    _, opt_g = build_optimizers(model, 1e-2, 0.5)
    att, net = snapshot(model.attention), snapshot(model.net)
    before = adversarial(model, batch)
    for _ in range(3):
        g_step(model, model.attention, batch, opt_g, MARGIN)
    assert moved(net, model.net) == set()
    assert moved(att, model.attention) == {"image.score.weight", "image.score.bias",
                                           "text.score.weight", "text.score.bias"}
    assert adversarial(model, batch) > before


def test_no_attention_means_no_g_optimizer():
    model = tiny_model(image_attention=False, text_attention=False)
    assert build_optimizers(model, 1e-3, 0.5)[1] is None


def test_deterministic_for_a_seed_on_cpu(batch):
    runs = []
    for _ in range(2):
        model = tiny_model(seed=3)
        opt_ed, opt_g = build_optimizers(model, 1e-3, 0.5)
        torch.manual_seed(3)
        for step in range(5):
            (g_step(model, model.attention, batch, opt_g, MARGIN) if is_g_step(step, 4, 1)
             else ed_step(model, model.net, batch, opt_ed, MARGIN))
        runs.append(snapshot(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_hashgan_trainer_state_round_trips_through_weights_only_load(batch, tmp_path):
    from hashgan_ray.config import TrainConfig
    from hashgan_ray.train.methods import single_process, trainer_class

    cfg = TrainConfig(bits=16, text_hidden=64, text_features=32, d_steps=1, g_steps=1)
    model = tiny_model()
    trainer = trainer_class("hashgan")(model, cfg, wrap=single_process)
    losses = [trainer.step(i, batch) for i in range(2)]
    assert "full" in losses[0] and "g_adversarial" in losses[1]      # E/D then G
    trainer.end_epoch()
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    again = trainer_class("hashgan")(model, cfg, wrap=single_process)
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert again.opt_ed.state_dict()["state"][0]["step"] == 1
    assert again.schedulers[0].last_epoch == 1
