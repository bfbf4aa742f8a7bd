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


def _content_digest(data_dir) -> str:
    """sha256 of every pair's id, words, labels, split and PNG bytes, in storage order."""
    import hashlib

    h = hashlib.sha256()
    for r in read_pairs(data_dir).to_pylist():
        h.update(repr((r["id"], r["text"], r["labels"], r["split"])).encode())
        h.update(r["image"])
    return h.hexdigest()


def test_default_output_is_what_it_was_before_the_clutter_variant(tmp_path):
    # Digest of the same call at commit 6e82128, before the clutter variant and
    # the oracle file existed: the default dataset must not change under it.
    meta = generate(tmp_path / "d", pairs=50, seed=3)
    assert _content_digest(tmp_path / "d") == \
        "deb40da6f6c9855fc871567e7a5273c50c0e34c3d82251291429fcf73c90f3f2"
    assert "clutter" not in meta.extra["synth"] and meta.name == "synthetic-50-s3"


def test_clutter_variant_is_reproducible_byte_for_byte(tmp_path):
    import json

    cfg = SynthConfig(clutter=True)
    for name in ("a", "b"):
        generate(tmp_path / name, pairs=80, seed=4, cfg=cfg)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert {str(f) for f in files} == {"oracle.parquet", "pairs/part-00000.parquet"}
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    metas = [json.loads((tmp_path / n / "meta.json").read_text()) for n in "ab"]
    for m in metas:
        m["extra"].pop("created_at")
    assert metas[0] == metas[1] and metas[0]["extra"]["synth"]["clutter"] is True
    assert metas[0]["name"] == "synthetic-clutter-80-s4"
    generate(tmp_path / "default", pairs=80, seed=4)
    assert _content_digest(tmp_path / "a") != _content_digest(tmp_path / "default")


def test_clutter_distractors_share_label_hues_and_texts_hold_decoys(tmp_path):
    cfg = SynthConfig(clutter=True)
    world = World(cfg)
    # No label at all: every painted pixel that is a label hue belongs to a distractor.
    img = render_image(world, [], SynthConfig(clutter=True, distractors=(6, 6)),
                       np.random.default_rng(1))
    label_hues = {tuple(c) for c in world.colors[:cfg.num_labels]}
    assert sum(tuple(px) in label_hues for px in img.reshape(-1, 3)) > 6 * 4
    # Decoys: label words of labels the pair lacks, 1-3 labels' worth per text.
    generate(tmp_path / "c", pairs=60, seed=2, cfg=cfg)
    for r in read_pairs(tmp_path / "c").to_pylist():
        foreign = {w // WORDS_PER_LABEL for w in r["text"]
                   if w < world.n_label_words and w // WORDS_PER_LABEL not in r["labels"]}
        assert 1 <= len(foreign) <= 3
