"""The oracle attention setting: the synthetic data's true masks, fixed in place of G."""
import numpy as np
import pytest
import torch
from torch import nn

from hashgan_ray.config import TrainConfig
from hashgan_ray.data.format import read_meta
from hashgan_ray.data.loading import iter_batches
from hashgan_ray.data.oracle import Oracle
from hashgan_ray.evaluation.evaluate import attended_share
from hashgan_ray.model.encode import encode_split
from hashgan_ray.model.hashgan import pack_codes
from hashgan_ray.train.methods import build_model, build_trainer


@pytest.fixture(scope="module")
def batch(synth_data):
    raw = next(iter_batches(synth_data, "train", 32))
    return {k: torch.as_tensor(v) for k, v in raw.items()}


def oracle_config(synth_data, **kw):
    return TrainConfig(data=str(synth_data), attention="oracle", bits=16, text_hidden=64,
                       text_features=32, d_steps=1, **kw)


class Recorder(nn.Module):
    """Runs the wrapped FeatureHashing and keeps the masks it was given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, image, text, masks, word_mask=None):
        def recording(maps, feats):
            z = masks(maps, feats)
            self.seen.append((z[0].detach().clone(), z[1].detach().clone(), word_mask))
            return z
        return self.net(image, text, recording, word_mask)


def test_oracle_masks_reach_the_model_unchanged(synth_data, batch):
    cfg = oracle_config(synth_data)
    torch.manual_seed(0)
    model = build_model(cfg, read_meta(synth_data))
    assert list(model.attention.parameters()) == []            # no G: the masks are given
    recorder = {}
    trainer = build_trainer(cfg, model, wrap=lambda m: recorder.setdefault(
        "net", Recorder(m)) if m is model.net else m)
    assert trainer.opt_g is None
    stats = trainer.step(0, batch)
    (z_img, z_txt, word_mask), = recorder["net"].seen
    oracle = Oracle(synth_data)
    ids = batch["id"].tolist()
    assert torch.equal(z_img, torch.as_tensor(oracle.image_masks(ids, 8, 8)))   # S/8 = 8
    assert 0 < float(z_img.mean()) < 0.25                      # a few positions per pattern
    assert bool((z_txt == 1).all())                            # text: the words are split instead
    assert torch.equal(word_mask, torch.as_tensor(oracle.word_masks(ids)))
    # both adversarial terms train E/D, as with learned attention
    assert stats["t2i_adv"] > 0 and stats["i2t_adv"] > 0


def test_oracle_text_codes_come_from_the_label_words_and_the_rest(synth_data, batch):
    cfg = oracle_config(synth_data)
    model = build_model(cfg, read_meta(synth_data)).eval()
    oracle = Oracle(synth_data)
    masks, word_mask = oracle.forward_masks(batch["id"], batch["text"])
    with torch.no_grad():
        codes = model.net(batch["image"], batch["text"], masks, word_mask)
        net = model.net
        label_only = net.hash_text(net.text_feats(batch["text"] * word_mask))
        the_rest = net.hash_text(net.text_feats(batch["text"] * (1 - word_mask)))
    assert torch.equal(codes["txt"], label_only) and torch.equal(codes["txt_un"], the_rest)
    assert not torch.equal(label_only, the_rest)


def test_oracle_evaluation_encodes_with_the_true_masks(synth_data):
    cfg = oracle_config(synth_data)
    model = build_model(cfg, read_meta(synth_data)).eval()
    oracle = Oracle(synth_data)
    encoded = encode_split(model, synth_data, "query", oracle=oracle)
    raw = next(iter_batches(synth_data, "query", 1000))
    image, text = torch.as_tensor(raw["image"]), torch.as_tensor(raw["text"])
    with torch.no_grad():
        maps = model.net.image_maps(image)
        z = torch.as_tensor(oracle.image_masks(raw["id"].tolist(), *maps.shape[-2:]))
        img = model.net.hash_image(z * maps)
        txt = model.net.hash_text(model.net.text_feats(
            text * torch.as_tensor(oracle.word_masks(raw["id"].tolist()))))
    assert np.array_equal(encoded.ids, raw["id"])
    assert np.array_equal(encoded.image_codes, pack_codes(img))
    assert np.array_equal(encoded.text_codes, pack_codes(txt))
    share = attended_share(model, synth_data, "query", oracle=oracle)
    assert share["attended_image"] == pytest.approx(float(z.mean()), rel=1e-5)
    label_words = (torch.as_tensor(oracle.word_masks(raw["id"].tolist())) * text).sum(1)
    assert share["attended_text"] == pytest.approx(float((label_words / text.sum(1)).mean()),
                                                   rel=1e-5)
    # learned attention at its zero start attends to everything
    both = build_model(TrainConfig(bits=16, text_hidden=64, text_features=32),
                       read_meta(synth_data))
    assert attended_share(both, synth_data, "query") == {"attended_image": 1.0, "attended_text": 1.0}


def test_oracle_setting_is_checked():
    with pytest.raises(ValueError, match="attention must be one of"):
        TrainConfig(attention="truth")
    with pytest.raises(ValueError, match="'oracle' applies to method 'hashgan' only"):
        TrainConfig(attention="oracle", method="dcmh")


def test_eval_of_an_oracle_model_uses_the_true_masks(synth_data, tmp_path):
    import json

    from hashgan_ray.cli import main
    from hashgan_ray.evaluation.evaluate import retrieval_map
    from hashgan_ray.model.checkpoint import write_model_files

    cfg = oracle_config(synth_data)
    meta = read_meta(synth_data)
    model = build_model(cfg, meta).eval()
    (tmp_path / "model").mkdir()
    write_model_files(tmp_path / "model", model, vocabulary=meta.vocabulary,
                      label_names=meta.label_names, train_config=cfg.to_dict())
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(synth_data),
                 "--json", str(tmp_path / "eval.json"), "--figures", str(tmp_path / "fig")]) == 0
    oracle = Oracle(synth_data)
    query = encode_split(model, synth_data, "query", oracle=oracle)
    expected = retrieval_map(query, encode_split(model, synth_data, "database", oracle=oracle))
    # the true masks change the codes, so the comparison below tells the two apart
    assert not np.array_equal(query.text_codes,
                              encode_split(model, synth_data, "query").text_codes)
    got = json.loads((tmp_path / "eval.json").read_text())
    assert (got["map_i2t"], got["map_t2i"]) == (expected["map_i2t"], expected["map_t2i"])
