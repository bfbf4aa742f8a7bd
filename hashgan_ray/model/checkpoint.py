"""Model directories: `model.pt` (weights) + `config.json` (everything else).

A Ray Train checkpoint directory and the exported `RUN_DIR/model/` share this
layout (a checkpoint adds `train_state.pt`), so every `--checkpoint` option
accepts either. Weights load with `torch.load(weights_only=True)`; nothing is
pickled, and loading needs no training code.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from hashgan_ray.files import move_into_place, temp_dir_for
from hashgan_ray.model.hashgan import HashGAN

WEIGHTS = "model.pt"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
FORMAT_VERSION = 1


def write_model_files(directory, model: HashGAN, *, vocabulary: list[str],
                      label_names: list[str], train_config: dict, extra: dict | None = None) -> None:
    """Write model.pt and config.json into an existing directory."""
    directory = Path(directory)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS)
    config = {"format_version": FORMAT_VERSION, "model": model.args, "vocabulary": vocabulary,
              "label_names": label_names, "train": train_config, **(extra or {})}
    (directory / CONFIG).write_text(json.dumps(config, indent=1))


def export_model(src_checkpoint, out_dir) -> Path:
    """Copy a checkpoint's model files to `out_dir`, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    tmp = temp_dir_for(out_dir)
    for name in (WEIGHTS, CONFIG):
        shutil.copy2(Path(src_checkpoint) / name, tmp / name)
    move_into_place(tmp, out_dir)
    return out_dir


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a model or checkpoint "
                                "directory (expected model.pt and config.json)")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {config.get('format_version')!r}")
    return config


def load_model(directory, device: str | torch.device = "cpu") -> tuple[HashGAN, dict]:
    """(model in eval mode, config.json contents) from a model or checkpoint dir."""
    config = read_config(directory)
    model = HashGAN(**config["model"])
    state = torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def fingerprint(directory) -> str:
    """sha256 of the weights file: identifies the model an index was built with."""
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def max_weight_difference(model_a, model_b) -> float:
    """Largest absolute difference between two model directories' weights: how
    far apart two runs of one configuration ended (tests/cluster, benchmarks)."""
    a, b = (torch.load(Path(m) / WEIGHTS, map_location="cpu", weights_only=True)
            for m in (model_a, model_b))
    if {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
        raise ValueError(f"{model_a} and {model_b} hold different parameters")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())
