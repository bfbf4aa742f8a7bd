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

Every dataset also gets `oracle.parquet` (data/oracle.py): where each label
pattern lies and which words are label words, for the oracle-mask bound.

The clutter variant (`clutter=True`, `data synth --clutter`), written before
any measurement on it and not to be tuned after: on the default one colour
alone separates label patterns (saturated hues) from distractors (near-greys),
and the noise words never carry a label, so a network can ignore the clutter
with one colour channel and zero weights for 400 words - attention has
nothing left to do. In the clutter variant

* every distractor is painted in a label hue (of any label, the pair's own
  included), half of them other shapes (the distractor templates), half of
  them pieces of label patterns (one half - top, bottom, left or right - of a
  label's template, in that label's own hue): neither colour nor a local
  fragment tells a label, only the whole pattern does;
* each text also holds one word of each of 1-3 labels the pair does not
  have (decoys): the same word is evidence in one pair and noise in the
  next, so the first text layer cannot zero the noise - which words to
  trust depends on the words around them.

Label patterns are still drawn last (never hidden); counts, sizes, the drop
rate of label words and the noise words are those of the default.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hashgan_ray.data.format import DatasetMeta, DatasetWriter
from hashgan_ray.data.images import encode_png
from hashgan_ray.data.oracle import write_oracle

log = logging.getLogger(__name__)

WORLD_SEED = 20181008   # ECCV 2018; any constant works, it only has to stay put
DECOY_LABELS = (1, 3)   # clutter: labels the pair lacks that lend one word to its text
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
    clutter: bool = False           # the clutter variant (module docstring)


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
    return render_pair_image(world, labels, cfg, rng)[0]


def render_pair_image(world: World, labels: list[int], cfg: SynthConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(canvas, boxes): boxes are y0, x0, y1, x1 of each label pattern, flattened."""
    s, p = cfg.image_size, world.patch
    # Smooth random background + low-amplitude noise: clutter, but no pattern.
    base = rng.integers(0, 90, size=3, dtype=np.uint8)
    ramp = (np.arange(s, dtype=np.uint16)[:, None, None] * rng.integers(0, 60, size=3) // s)
    img = (rng.integers(0, 30, size=(s, s, 3), dtype=np.uint8) + base + ramp.astype(np.uint8))
    n_distract = rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)
    if cfg.clutter:
        return _clutter_canvas(img, world, labels, cfg, rng, n_distract)
    kinds = np.concatenate([labels, cfg.num_labels + rng.integers(0, cfg.distractor_kinds, n_distract)])
    corners = rng.integers(0, s - p + 1, size=(len(kinds), 2))
    # Distractors first, label patterns last: clutter never hides a label, though
    # label patterns may overlap each other.
    boxes: list[int] = []
    for kind, (y, x) in zip(kinds[::-1], corners):
        np.copyto(img[y:y + p, x:x + p], world.colors[kind], where=world.masks[kind])
        if kind < cfg.num_labels:
            boxes += [int(y), int(x), int(y + p), int(x + p)]
    return img, boxes


def _clutter_canvas(img: np.ndarray, world: World, labels: list[int], cfg: SynthConfig,
                    rng: np.random.Generator, n_distract: int) -> tuple[np.ndarray, list[int]]:
    """The clutter variant's distractors (module docstring), then the label patterns."""
    s, p, half = cfg.image_size, world.patch, world.patch // 2
    for _ in range(n_distract):
        hue = rng.integers(0, cfg.num_labels)                   # a label's colour
        if rng.random() < 0.5:                                  # another shape in that colour
            shape = world.templates[cfg.num_labels + rng.integers(0, cfg.distractor_kinds)]
        else:                                                   # half of that label's pattern
            shape = world.templates[hue].copy()
            side = rng.integers(0, 4)                           # keep top, bottom, left, right
            if side == 0:
                shape[half:] = False
            elif side == 1:
                shape[:half] = False
            elif side == 2:
                shape[:, half:] = False
            else:
                shape[:, :half] = False
        y, x = rng.integers(0, s - p + 1, size=2)
        np.copyto(img[y:y + p, x:x + p], world.colors[hue], where=shape[..., None])
    boxes: list[int] = []
    for label in labels:
        y, x = (int(v) for v in rng.integers(0, s - p + 1, size=2))
        np.copyto(img[y:y + p, x:x + p], world.colors[label], where=world.masks[label])
        boxes += [y, x, y + p, x + p]
    return img, boxes


def sample_text(world: World, labels: list[int], cfg: SynthConfig,
                rng: np.random.Generator) -> list[int]:
    """Sorted word ids: surviving label words plus noise words."""
    words = [lab * WORDS_PER_LABEL + k for lab in labels for k in range(WORDS_PER_LABEL)
             if rng.random() >= cfg.word_drop]
    n_noise = rng.integers(cfg.words_per_text[0], cfg.words_per_text[1] + 1)
    noise = world.n_label_words + rng.choice(cfg.noise_words, size=n_noise, replace=False)
    if cfg.clutter:                  # one word of each of a few labels the pair lacks
        others = [lab for lab in range(cfg.num_labels) if lab not in labels]
        n_decoys = rng.integers(DECOY_LABELS[0], DECOY_LABELS[1] + 1)
        decoys = rng.choice(others, size=min(n_decoys, len(others)), replace=False)
        noise = np.concatenate([noise, [d * WORDS_PER_LABEL + rng.integers(0, WORDS_PER_LABEL)
                                        for d in decoys]]).astype(np.int64)
    return sorted(set(words) | set(int(w) for w in noise))


def label_words_of(world: World, text: list[int], labels: list[int]) -> list[int]:
    """The words of `text` that name one of the pair's `labels` (decoys excluded):
    what the text oracle keeps."""
    return [w for w in text if w < world.n_label_words and w // WORDS_PER_LABEL in labels]


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
    boxes, label_words = [], []
    with DatasetWriter(out, world.vocabulary, world.label_names, overwrite=overwrite) as writer:
        for i in ids:
            n_labels = rng.integers(1, 4)
            labels = sorted(int(v) for v in rng.choice(cfg.num_labels, size=n_labels, replace=False))
            canvas, pattern_boxes = render_pair_image(world, labels, cfg, rng)
            image = encode_png(canvas, level=0)              # noisy pixels do not compress
            text = sample_text(world, labels, cfg, rng)
            writer.add(i, text, labels, image=image)
            boxes.append(pattern_boxes)
            label_words.append(label_words_of(world, text, labels))
        write_oracle(writer.tmp_dir, range(pairs), boxes, label_words)   # moves in with the rest
        # The default's meta.json keeps the keys it had before the clutter variant.
        settings = {k: v for k, v in cfg.__dict__.items() if k != "clutter" or v}
        return writer.finish(name=f"synthetic{'-clutter' if cfg.clutter else ''}-{pairs}-s{seed}",
                             source="synthetic", image_size=cfg.image_size, n_query=n_query,
                             n_train=n_train, seed=seed, extra={"synth": {"pairs": pairs, **settings}})
