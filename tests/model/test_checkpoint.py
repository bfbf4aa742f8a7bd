import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hashgan_ray.model.checkpoint import (WEIGHTS, export_model, fingerprint, load_model,
                                          max_weight_difference, write_model_files)
from hashgan_ray.model.hashgan import HashGAN, pack_codes


def test_pack_codes_sign_convention():
    h = torch.tensor([[0.5, -0.1, 0.0, 1.0, -1.0, 0.2, -0.3, 0.9]])
    assert pack_codes(h).tolist() == [[0b10010101]]
    assert pack_codes(torch.zeros(3, 16)).shape == (3, 2)


def test_model_dir_round_trip_without_training_code(tmp_path):
    torch.manual_seed(0)
    model = HashGAN(bits=16, vocab_size=10, text_hidden=8, text_features=6, image_size=32)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_model_files(ckpt, model, vocabulary=[f"w{i}" for i in range(10)], label_names=["a"],
                      train_config={"bits": 16})
    out = export_model(ckpt, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pt"]
    assert fingerprint(out) == fingerprint(ckpt)
    text = torch.zeros(2, 10)
    text[0, 3] = 1
    text[1, 7] = 2
    expected = pack_codes(model.eval().encode_text(text))
    loaded, config = load_model(out)
    assert config["vocabulary"][3] == "w3" and config["model"]["bits"] == 16
    assert np.array_equal(pack_codes(loaded.encode_text(text)), expected)
    # A fresh interpreter loads it with weights_only=True, importing neither Ray
    # nor the training code.
    script = (
        "import sys, torch\n"
        "from hashgan_ray.model.checkpoint import load_model\n"
        f"m, c = load_model({str(out)!r})\n"
        "print(sorted(k for k in sys.modules if k.startswith(('ray', 'hashgan_ray.train'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert json.loads((out / "config.json").read_text())["format_version"] == 1


def test_word_lists_encode_like_the_dense_bag_of_words():
    from hashgan_ray.data.loading import bag_of_indices
    from hashgan_ray.model.hashgan import WordListEncoder

    torch.manual_seed(0)
    model = HashGAN(bits=32, vocab_size=50, text_hidden=64, text_features=32).eval()
    words = [[3, 7, 7, 49], [], [0], list(range(50))]          # repeats count; an empty bag
    dense = model.encode_text(torch.as_tensor(bag_of_indices(words, 50)))
    sparse = WordListEncoder(model)(words)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    assert (pack_codes(sparse) == pack_codes(dense)).all()


def test_max_weight_difference_is_the_largest_change_of_any_weight(tmp_path):
    torch.manual_seed(0)
    dirs = []
    for name, bits in (("a", 16), ("b", 16), ("c", 8)):
        model = HashGAN(bits=bits, vocab_size=10, text_hidden=8, text_features=6, image_size=32)
        if name == "b":
            with torch.no_grad():
                model.load_state_dict(torch.load(dirs[0] / WEIGHTS, weights_only=True))
                next(model.parameters()).view(-1)[3] += 0.25
        (tmp_path / name).mkdir()
        write_model_files(tmp_path / name, model, vocabulary=[f"w{i}" for i in range(10)],
                          label_names=["a"], train_config={})
        dirs.append(tmp_path / name)
    assert max_weight_difference(dirs[0], dirs[0]) == 0.0
    assert max_weight_difference(dirs[0], dirs[1]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="different parameters"):
        max_weight_difference(dirs[0], dirs[2])
