"""A synthetic data set in NUS-WIDE's official file layout, for `data convert
nuswide` at full scale (benchmarks/scale.py) without the real download.

    ImageList/Imagelist.txt          one Windows path per image (CRLF lines)
    NUS_WID_Tags/TagList1k.txt       1,000 tags
    NUS_WID_Tags/AllTags1k.txt       one tab-separated 0/1 row of 1,000 tags per image
    ConceptsList/Concepts81.txt      81 concepts
    Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 line per image
    Flickr/<dir>/<nnnn>_<photo id>.jpg           64x64 JPEGs (or --image-size)

Pictures and words follow the synthetic benchmark (hashgan_ray.data.synth: one
pattern per concept among distractors, label words among noise words), with 81
concepts and a 1,000-word vocabulary (81 x 4 label words + 676 noise words).
Concept frequencies are NUS-WIDE-like: `FREQUENT` concepts (21, the DCMH
protocol's top 21) are common, the other 60 rare. `pairs` images carry at least
one frequent concept and at least one tag, so the converter keeps exactly
`pairs` of them; `dropped` more carry only rare concepts (or, one in ten, no
tag) and are dropped by it, as NUS-WIDE's 269,648 images become 195,834 pairs.
That needs the frequent concepts to out-count the rare ones, which sampling
makes sure of only from about 1,000 pairs up (every one of 50 seeds at 1,000;
45 of 50 at 300, 3 of 50 at 120): below, a rare concept may take a frequent
one's place among the converter's top 21.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hashgan_ray.data.synth import SynthConfig, World, render_image, sample_text
from hashgan_ray.files import move_into_place, temp_dir_for

N_CONCEPTS, N_TAGS = 81, 1000
# Every 4th concept is frequent: the kept 21 are spread over the list, not its head,
# so the converter has to count to find them.
FREQUENT = tuple(range(0, 84, 4))[:21]
# NUS-WIDE: 269,648 images, 195,834 kept by DCMH's protocol -> dropped per kept pair.
DROPPED_PER_PAIR = (269_648 - 195_834) / 195_834


def world_config(image_size: int = 64) -> SynthConfig:
    return SynthConfig(num_labels=N_CONCEPTS, image_size=image_size,
                       noise_words=N_TAGS - N_CONCEPTS * 4)


def _concept_weights() -> tuple[np.ndarray, np.ndarray]:
    """Sampling weights of the frequent concepts (skewed, as NUS-WIDE's are) and
    of all 81 for a pair's further labels (rare ones a tenth as likely)."""
    frequent = 1.0 / np.arange(1, len(FREQUENT) + 1) ** 0.7
    frequent /= frequent.sum()
    any_concept = np.full(N_CONCEPTS, 0.1)
    any_concept[list(FREQUENT)] = 1.0
    return frequent, any_concept / any_concept.sum()


def _labels(rng: np.random.Generator, kept: bool, weights) -> list[int]:
    frequent, any_concept = weights
    rare = [c for c in range(N_CONCEPTS) if c not in FREQUENT]
    if not kept:                                   # only rare concepts: "no top concept label"
        return sorted(int(c) for c in rng.choice(rare, size=rng.integers(1, 3), replace=False))
    labels = {int(rng.choice(FREQUENT, p=frequent))}
    for _ in range(rng.integers(0, 3)):
        labels.add(int(rng.choice(N_CONCEPTS, p=any_concept)))
    return sorted(labels)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_nuswide_layout(out, *, pairs: int, dropped: int | None = None, seed: int = 0,
                         image_size: int = 64, overwrite: bool = False, progress=None) -> dict:
    """Write the layout to `out` (atomically: a hidden directory renamed into
    place when complete) -> {"images", "pairs", "dropped"}. Memory stays flat:
    every file is written row by row as the images are drawn."""
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    dropped = round(pairs * DROPPED_PER_PAIR) if dropped is None else dropped
    cfg = world_config(image_size)
    world = World(cfg)
    rng = np.random.default_rng(seed)
    weights = _concept_weights()
    # Kept and dropped images interleaved at random, as in the real list.
    is_kept = np.zeros(pairs + dropped, bool)
    is_kept[rng.choice(pairs + dropped, size=pairs, replace=False)] = True

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(out)
    try:
        for d in ("ImageList", "NUS_WID_Tags", "ConceptsList", "Groundtruth/AllLabels", "Flickr"):
            (tmp / d).mkdir(parents=True)
        (tmp / "NUS_WID_Tags/TagList1k.txt").write_text("\n".join(world.vocabulary) + "\n")
        (tmp / "ConceptsList/Concepts81.txt").write_text("\n".join(world.label_names) + "\n")
        # A tag row: "0\t" per tag ("1\t" where set), as the official file's tab-separated rows.
        blank_row = np.full(2 * N_TAGS + 1, ord("\t"), np.uint8)
        blank_row[0:-1:2], blank_row[-1] = ord("0"), ord("\n")
        with open(tmp / "ImageList/Imagelist.txt", "w", newline="") as image_list, \
                open(tmp / "NUS_WID_Tags/AllTags1k.txt", "wb") as tag_rows:
            label_files = [open(tmp / f"Groundtruth/AllLabels/Labels_{name}.txt", "wb")
                           for name in world.label_names]
            try:
                rows = range(len(is_kept)) if progress is None else progress(range(len(is_kept)))
                for i in rows:
                    labels = _labels(rng, bool(is_kept[i]), weights)
                    text = sample_text(world, labels, cfg, rng)
                    if not is_kept[i] and rng.random() < 0.1:
                        labels, text = [FREQUENT[0]], []       # "no tags"
                    folder = world.label_names[labels[0]]
                    name = f"{i % 10_000:04d}_{1_000_000_000 + i}.jpg"
                    path = tmp / "Flickr" / folder / name
                    path.parent.mkdir(exist_ok=True)
                    path.write_bytes(_jpeg(render_image(world, labels, cfg, rng)))
                    image_list.write(f"C:\\ImageData\\Flickr\\{folder}\\{name}\r\n")
                    row = blank_row.copy()
                    row[2 * np.asarray(text, dtype=np.int64)] = ord("1")
                    tag_rows.write(row.tobytes())
                    for c, f in enumerate(label_files):
                        f.write(b"1\n" if c in labels else b"0\n")
            finally:
                for f in label_files:
                    f.close()
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": int(len(is_kept)), "pairs": pairs, "dropped": dropped}
