"""A synthetic image-text benchmark on which attention matters.

Each pair carries 1-3 labels out of L. Its image is a cluttered canvas: every
label appears once as a small class-specific pattern (a fixed binary template in
the class's own saturated hue), among more near-grey distractor patterns that
carry no label, on a noisy background; together the label patterns cover well under a quarter of
the image (3 patterns of (S/8)^2 pixels = 4.7% at most). Its text mixes a few
label-specific words (each dropped with some probability) with many noise words.
So most of each modality is clutter, which is what the attention module is
meant to learn to ignore.

The "world" (templates, colours, words) is fixed by WORLD_SEED, so datasets
generated with different seeds share the same meaning; `seed` drives only
the sampling of pairs and the split.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hashgan_ray.data.format import DatasetMeta, DatasetWriter
from hashgan_ray.data.images import encode_png

log = logging.getLogger(__name__)

WORLD_SEED = 20181008   # ECCV 2018; any constant works, it only has to stay put
CONCEPTS = ["animals", "baby", "bird", "car", "clouds", "dog", "female", "flower",
            "food", "indoor", "lake", "male", "night", "people", "plant", "portrait",
            "river", "sea", "sky", "structures", "sunset", "transport", "tree", "water"]
WORDS_PER_LABEL = 4
SYLLABLES = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "pe", "da", "gu", "zo", "fi", "ba", "ne", "to"]


@dataclass(frozen=True)
class SynthConfig:
    num_labels: int = 24
    image_size: int = 64
    noise_words: int = 400          # vocabulary words that carry no label
    words_per_text: tuple = (8, 16) # noise words per text (min, max)
    word_drop: float = 0.4          # chance each label word is left out of a text
    distractors: tuple = (4, 8)     # distractor patterns per image (min, max)
    distractor_kinds: int = 32      # distinct distractor templates


class World:
    """Templates, colours and vocabulary shared by every synthetic dataset."""

    def __init__(self, cfg: SynthConfig):
        rng = np.random.default_rng(WORLD_SEED)
        n_templates = cfg.num_labels + cfg.distractor_kinds
        p = max(4, cfg.image_size // 8)                       # pattern side in pixels
        self.patch = p
        # (n_templates, p, p) binary shapes, about half the pixels on
        self.templates = rng.random((n_templates, p, p)) < 0.5
        self.masks = self.templates[..., None]                # (n_templates, p, p, 1) for copyto
        # Label patterns in saturated colours of evenly spaced hues; distractors in
        # near-greys. Colour says "this may matter", the shape says which label:
        # learnable from a few thousand images, yet most of the canvas is clutter.
        hues = np.arange(cfg.num_labels) / cfg.num_labels
        label_colors = np.stack([_hue_to_rgb(h) for h in hues])
        grey = rng.integers(70, 230, size=(cfg.distractor_kinds, 1))
        tint = rng.integers(-20, 21, size=(cfg.distractor_kinds, 3))
        self.colors = np.concatenate([label_colors, np.clip(grey + tint, 0, 255)]).astype(np.uint8)
        self.label_names = [CONCEPTS[i] if i < len(CONCEPTS) else f"concept{i}"
                            for i in range(cfg.num_labels)]
        label_words = [w if k == 0 else f"{w}{k + 1}" for w in self.label_names
                       for k in range(WORDS_PER_LABEL)]
        noise = sorted(self._pseudo_words(rng, cfg.noise_words, set(label_words)))
        self.vocabulary = label_words + noise
        self.n_label_words = len(label_words)

    @staticmethod
    def _pseudo_words(rng, n: int, taken: set) -> set:
        words: set = set()
        while len(words) < n:
            w = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4)))
            if w not in taken:
                words.add(w)
        return words


def _hue_to_rgb(hue: float) -> np.ndarray:
    """Fully saturated, full-value colour of `hue` in [0, 1), as 0..255 RGB."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return 255 * (1 - np.clip(np.minimum(k, 4 - k), 0, 1))


def render_image(world: World, labels: list[int], cfg: SynthConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) uint8 canvas with one pattern per label plus distractors."""
    s, p = cfg.image_size, world.patch
    # Smooth random background + low-amplitude noise: clutter, but no pattern.
    base = rng.integers(0, 90, size=3, dtype=np.uint8)
    ramp = (np.arange(s, dtype=np.uint16)[:, None, None] * rng.integers(0, 60, size=3) // s)
    img = (rng.integers(0, 30, size=(s, s, 3), dtype=np.uint8) + base + ramp.astype(np.uint8))
    n_distract = rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)
    kinds = np.concatenate([labels, cfg.num_labels + rng.integers(0, cfg.distractor_kinds, n_distract)])
    corners = rng.integers(0, s - p + 1, size=(len(kinds), 2))
    # Distractors first, label patterns last: clutter never hides a label, though
    # label patterns may overlap each other.
    for kind, (y, x) in zip(kinds[::-1], corners):
        np.copyto(img[y:y + p, x:x + p], world.colors[kind], where=world.masks[kind])
    return img


def sample_text(world: World, labels: list[int], cfg: SynthConfig,
                rng: np.random.Generator) -> list[int]:
    """Sorted word ids: surviving label words plus noise words."""
    words = [lab * WORDS_PER_LABEL + k for lab in labels for k in range(WORDS_PER_LABEL)
             if rng.random() >= cfg.word_drop]
    n_noise = rng.integers(cfg.words_per_text[0], cfg.words_per_text[1] + 1)
    noise = world.n_label_words + rng.choice(cfg.noise_words, size=n_noise, replace=False)
    return sorted(set(words) | set(int(w) for w in noise))


def generate(out, *, pairs: int, seed: int = 0, n_query: int | None = None,
             n_train: int | None = None, cfg: SynthConfig = SynthConfig(),
             overwrite: bool = False, progress=None) -> DatasetMeta:
    """Write a synthetic dataset of `pairs` pairs to `out` in the standard format.

    Defaults for the split scale the DCMH protocol down: 10% queries (at most
    2,000) and half the pairs for training (at most 10,000).
    """
    if pairs < 3:
        raise ValueError("--pairs must be at least 3")
    n_query = min(2000, max(1, pairs // 10)) if n_query is None else n_query
    n_train = min(10000, pairs // 2) if n_train is None else n_train
    world = World(cfg)
    rng = np.random.default_rng(seed)
    ids = range(pairs) if progress is None else progress(range(pairs))
    with DatasetWriter(out, world.vocabulary, world.label_names, overwrite=overwrite) as writer:
        for i in ids:
            n_labels = rng.integers(1, 4)
            labels = sorted(int(v) for v in rng.choice(cfg.num_labels, size=n_labels, replace=False))
            image = encode_png(render_image(world, labels, cfg, rng), level=0)  # noisy pixels do not compress
            writer.add(i, sample_text(world, labels, cfg, rng), labels, image=image)
        return writer.finish(name=f"synthetic-{pairs}-s{seed}", source="synthetic",
                             image_size=cfg.image_size, n_query=n_query, n_train=n_train,
                             seed=seed, extra={"synth": {"pairs": pairs, **cfg.__dict__}})
