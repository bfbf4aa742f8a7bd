import json

import pytest
import torch

from hashgan_ray.cli import build_parser, main
from hashgan_ray.cli.train import train_config
from hashgan_ray.config import TrainConfig
from hashgan_ray.data.format import read_meta
from hashgan_ray.model.checkpoint import write_model_files
from hashgan_ray.model.hashgan import HashGAN


def test_train_options_precedence(tmp_path):
    cfg_file = tmp_path / "best.json"
    cfg_file.write_text(json.dumps({"margin": 3.5, "lr": 0.001, "bits": 64}))
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--config",
                                      str(cfg_file), "--bits", "16", "--no-cache-train"])
    cfg = train_config(args)
    assert (cfg.margin, cfg.lr, cfg.bits) == (3.5, 0.001, 16)     # file, file, flag
    assert cfg.cache_train is False and cfg.epochs == TrainConfig().epochs
    with pytest.raises(ValueError, match="bits must be a positive multiple of 8"):
        train_config(build_parser().parse_args(["train", "--data", "d", "--out", "o", "--bits", "12"]))
    cfg_file.write_text(json.dumps({"margn": 1}))
    with pytest.raises(ValueError, match="unknown config keys: margn"):
        TrainConfig.from_file(cfg_file)


def test_eval_prints_map_and_writes_json_and_figures(synth_data, tmp_path, capsys):
    meta = read_meta(synth_data)
    torch.manual_seed(0)
    model = HashGAN(bits=16, vocab_size=meta.vocab_size, text_hidden=32, text_features=16)
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    write_model_files(ckpt, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config={})
    out_json, figures = tmp_path / "eval.json", tmp_path / "figures"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(synth_data),
                 "--json", str(out_json), "--figures", str(figures), "--top-k", "50"]) == 0
    result = json.loads(out_json.read_text())
    assert set(result) == {"map_i2t", "map_t2i", "bits", "n_query", "n_database", "top_k"}
    assert result["bits"] == 16 and result["n_query"] == 24 and result["n_database"] == 216
    assert 0 < result["map_i2t"] <= 1 and 0 < result["map_t2i"] <= 1 and result["top_k"] == 50
    for png in ("pr_curves.png", "attention_masks.png"):
        assert (figures / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MAP i->t" in capsys.readouterr().out


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err
