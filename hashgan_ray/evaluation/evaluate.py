"""Measure retrieval of encoded dataset splits (no Ray; the encoding is model/encode.py).

Used by the per-epoch validation of training; `evaluate_model` is the one
evaluation of a trained model, for `hashgan-ray eval` and the experiment's cells.
Functions that decode pairs take the dataset's `meta` (read once by the caller;
read here when not given).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from hashgan_ray.data.format import DatasetMeta, iter_pairs, read_pairs
from hashgan_ray.data.loading import decode_batch
from hashgan_ray.evaluation import metrics
from hashgan_ray.files import save_figure
from hashgan_ray.model.encode import Encoded, batch_spec, encode_split
from hashgan_ray.model.hashgan import HashGAN

log = logging.getLogger(__name__)


def sample_ids(data_dir, split: str, size: int | None, seed: int) -> np.ndarray | None:
    """A fixed random sample of `size` ids of `split` (None: the whole split)."""
    ids = read_pairs(data_dir, split, columns=["id"]).column("id").to_numpy()
    if not size or size >= len(ids):
        return None
    return np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))


@torch.no_grad()
def attended_share(model: HashGAN, data_dir, split: str = "query", *, oracle=None,
                   device="cpu", batch_size: int = 256,
                   meta: DatasetMeta | None = None) -> dict[str, float]:
    """Mean share of attended image positions and of attended text features
    over `split` (1.0 for a modality without attention). With an `oracle`: its
    image masks, and for text the share of the words that are label words."""
    spec = batch_spec(model, data_dir, meta)
    model.eval()
    image_sum = text_sum = 0.0
    n = 0
    for rb in iter_pairs(data_dir, split, columns=spec.columns, batch_size=batch_size):
        batch = decode_batch(rb.to_pydict(), spec)
        maps = model.net.image_maps(torch.as_tensor(batch["image"], device=device))
        text = torch.as_tensor(batch["text"], device=device)
        if oracle is not None:
            ids = torch.as_tensor(batch["id"])
            z_img = oracle.image_masks_like(ids, maps)
            z_txt = ((oracle.word_masks_like(ids, text) * text).sum(1)
                     / text.sum(1).clamp_min(1))[:, None]
        else:
            z_img, z_txt = model.attention(maps, model.net.text_feats(text))
        image_sum += float(z_img.float().mean(dim=(1, 2, 3)).sum())
        text_sum += float(z_txt.float().mean(dim=1).sum())
        n += len(batch["id"])
    return {"attended_image": image_sum / n, "attended_text": text_sum / n}


def retrieval_map(query: Encoded, database: Encoded, top_k: int | None = None) -> dict[str, float]:
    """MAP of Hamming ranking: image queries -> texts and text queries -> images."""
    return {
        "map_i2t": _map(query.image_codes, database.text_codes, query.labels, database.labels, top_k),
        "map_t2i": _map(query.text_codes, database.image_codes, query.labels, database.labels, top_k),
    }


def _map(query_codes, db_codes, query_labels, db_labels, top_k: int | None) -> float:
    """MAP@top_k from an exact GPU index when FAISS can (index/gpu.py: the same
    ranking, ties included), else, and for the whole database, from metrics."""
    ranking = None
    if top_k and top_k > 0:
        try:
            from hashgan_ray.index.gpu import gpu_ranking
        except ImportError:     # no FAISS (the plain core on a torch-only GPU machine)
            gpu_ranking = None
        if gpu_ranking is not None:
            ranking = gpu_ranking(query_codes, db_codes, top_k)
    if ranking is None:
        return metrics.mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                                              top_k=top_k)
    return metrics.mean_average_precision_of_ranking(ranking, query_labels, db_labels)


def pr_curves(query: Encoded, database: Encoded) -> dict[str, dict]:
    return {
        "I->T": metrics.pr_curve(query.image_codes, database.text_codes, query.labels, database.labels),
        "T->I": metrics.pr_curve(query.text_codes, database.image_codes, query.labels, database.labels),
    }


@torch.no_grad()
def plot_attention_masks(model: HashGAN, data_dir, path, *, n: int = 8, split: str = "query",
                         meta: DatasetMeta | None = None) -> None:
    """The paper's Figure 6: images, their learned masks, and the attended and
    unattended parts (mask upsampled to the image)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = batch_spec(model, data_dir, meta)
    rb = next(iter_pairs(data_dir, split, columns=spec.columns, batch_size=n))
    images = decode_batch(rb.to_pydict(), spec)["image"]                 # (n, 3, S, S) uint8
    model.eval()
    device = next(model.parameters()).device
    maps = model.net.image_maps(torch.as_tensor(images, device=device))
    mask = model.attention.image_mask(maps).float()                     # (n, 1, H, W), 0/1
    mask = torch.nn.functional.interpolate(mask, size=images.shape[-2:], mode="nearest")
    mask = mask[:, 0].cpu().numpy()                                     # (n, S, S)
    pictures = images.transpose(0, 2, 3, 1) / 255.0                     # (n, S, S, 3)
    rows = [("image", pictures), ("mask", mask),
            ("attended", pictures * mask[..., None]),
            ("unattended", pictures * (1 - mask[..., None]))]
    fig, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images), 1.7 * len(rows)),
                             squeeze=False)
    for r, (title, pics) in enumerate(rows):
        for c in range(len(images)):
            ax = axes[r][c]
            ax.imshow(pics[c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title)
    fig.suptitle("learned image attention (mask = P >= α)")
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _json_curve(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]      # NaN: undefined (metrics.pr_curve)


def evaluate_model(model: HashGAN, data_dir, meta: DatasetMeta, *, oracle=None,
                   top_k: int | None = None, also_top_k: int | None = None,
                   attended: bool = False, pr: bool = False, masks_path=None) -> dict:
    """Encode the query and database splits with `model` (on its device) and
    measure retrieval; the one evaluation of `hashgan-ray eval` and of an
    experiment's cell. `oracle` (data/oracle.py): encode with the true masks, as
    the oracle setting trains. Returns, JSON-ready:

    map_i2t, map_t2i   MAP over the `top_k` nearest (None: the whole database)
    top{k}_map_i2t, top{k}_map_t2i   with `also_top_k` k (Table 2: top-500)
    attended_image, attended_text    with `attended`: shares over the queries (attended_share)
    n_query, n_database
    pr                 with `pr`: {"I->T"|"T->I": {"precision": [...], "recall": [...]}},
                       None where a Hamming radius is undefined (metrics.pr_curve)

    `masks_path`: also draw the paper's Figure 6 there (plot_attention_masks)."""
    device = next(model.parameters()).device
    query = encode_split(model, data_dir, "query", oracle=oracle, device=device, meta=meta)
    database = encode_split(model, data_dir, "database", oracle=oracle, device=device, meta=meta)
    result = retrieval_map(query, database, top_k=top_k)
    if also_top_k:
        result.update({f"top{also_top_k}_{k}": v
                       for k, v in retrieval_map(query, database, top_k=also_top_k).items()})
    if attended:
        result.update(attended_share(model, data_dir, "query", oracle=oracle, device=device,
                                     meta=meta))
    result.update(n_query=len(query.ids), n_database=len(database.ids))
    if pr:
        result["pr"] = {name: {"precision": _json_curve(c["precision"]),
                               "recall": _json_curve(c["recall"])}
                        for name, c in pr_curves(query, database).items()}
    if masks_path is not None:
        plot_attention_masks(model, data_dir, masks_path, meta=meta)
    return result
