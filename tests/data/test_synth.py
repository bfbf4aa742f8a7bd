import io

import numpy as np
from PIL import Image

from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.data.synth import WORDS_PER_LABEL, SynthConfig, World, generate, render_image


def test_deterministic_for_a_seed(tmp_path):
    generate(tmp_path / "a", pairs=60, seed=5)
    generate(tmp_path / "b", pairs=60, seed=5)
    generate(tmp_path / "c", pairs=60, seed=6)
    a, b, c = (read_pairs(tmp_path / x).to_pylist() for x in "abc")
    assert a == b
    assert [r["text"] for r in a] != [r["text"] for r in c]
    assert read_meta(tmp_path / "a").vocabulary == read_meta(tmp_path / "c").vocabulary


def test_standard_format_and_default_splits(synth_data):
    meta = read_meta(synth_data)
    assert meta.source == "synthetic" and meta.num_labels == 24 and meta.image_size == 64
    assert meta.counts == {"query": 24, "train": 120, "database": 96, "total": 240}
    rows = read_pairs(synth_data).to_pylist()
    for r in rows:
        assert 1 <= len(r["labels"]) <= 3
        img = Image.open(io.BytesIO(r["image"]))
        assert img.format == "PNG" and img.size == (64, 64)


def test_text_mixes_label_words_with_noise(synth_data):
    meta = read_meta(synth_data)
    n_label_words = meta.num_labels * WORDS_PER_LABEL
    rows = read_pairs(synth_data).to_pylist()
    kept = total = 0
    for r in rows:
        label_words = [w for w in r["text"] if w < n_label_words]
        # every label word belongs to one of the pair's own labels
        assert {w // WORDS_PER_LABEL for w in label_words} <= set(r["labels"])
        assert len(r["text"]) - len(label_words) >= 8            # many noise words
        kept += len(label_words)
        total += WORDS_PER_LABEL * len(r["labels"])
    assert 0.45 < kept / total < 0.75                             # ~40% of label words dropped


def test_label_patterns_are_small_and_present():
    cfg = SynthConfig()
    world = World(cfg)
    rng = np.random.default_rng(0)
    assert 3 * world.patch ** 2 < cfg.image_size ** 2 / 4       # 3 patterns < a quarter
    # the label's template, in its colour, is painted somewhere on the canvas
    img = render_image(world, [7], SynthConfig(distractors=(0, 0)), rng)
    color, mask, p = world.colors[7], world.templates[7], world.patch
    hits = [(y, x) for y in range(cfg.image_size - p + 1) for x in range(cfg.image_size - p + 1)
            if (img[y:y + p, x:x + p][mask] == color).all()]
    assert len(hits) == 1
