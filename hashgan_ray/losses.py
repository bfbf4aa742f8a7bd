"""HashGAN's objective (section 3.3, eqs. 4-9): triplet ranking losses.

Triplet rule (mined in the batch): for a query i of modality A and items j, k of
modality B in the same batch, <i, j, k> is a triplet when S(i, j) = 1 and
S(i, k) = 0, where S = "shares at least one label". Every such triplet of the
batch is used ("batch-all"); for the intra-modal terms (A = B) the query itself
is not its own positive. The paper sums over triplets; we average over the
valid triplets so the loss scale does not grow with the batch (B³ triplets), and
a batch with no valid triplet contributes 0. Distances are Euclidean, as eq. 5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """(Na, Nb) bool: S(i, j) = pair i and pair j share at least one label."""
    return (labels_a.float() @ labels_b.float().T) > 0


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, Nb) Euclidean distances; safe gradient at 0 (cdist's is NaN there)."""
    sq = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


def triplet_ranking_loss(query: torch.Tensor, database: torch.Tensor, sim: torch.Tensor,
                         margin: float, same_modality: bool = False) -> torch.Tensor:
    """F_{A->B} (eq. 5): mean over triplets <i, j, k> of
    max(0, ε + ||H^A_i - H^B_j|| - ||H^A_i - H^B_k||), S(i, j) = 1 > S(i, k) = 0."""
    d = pairwise_distance(query.float(), database.float())               # (B, B)
    pos = sim.clone()
    if same_modality:
        pos.fill_diagonal_(False)
    valid = pos.unsqueeze(2) & ~sim.unsqueeze(1)                          # (i, j, k)
    if not valid.any():
        return d.sum() * 0.0                                              # keeps the graph
    hinge = torch.relu(margin + d.unsqueeze(2) - d.unsqueeze(1))          # (B, B, B)
    return hinge[valid].mean()


def hashgan_losses(codes: dict[str, torch.Tensor], sim: torch.Tensor, margin: float, *,
                   image_attention: bool, text_attention: bool) -> dict[str, torch.Tensor]:
    """Each term of the full objective, plus `retrieval` (eq. 4), `adversarial`
    (eq. 6) and `full` (their sum). Adversarial terms exist only for a modality
    with attention: without it the unattended features are all zero."""
    img, txt = codes["img"], codes["txt"]
    terms = {
        "t2i": triplet_ranking_loss(txt, img, sim, margin),
        "i2t": triplet_ranking_loss(img, txt, sim, margin),
        "i2i": triplet_ranking_loss(img, img, sim, margin, same_modality=True),
        "t2t": triplet_ranking_loss(txt, txt, sim, margin, same_modality=True),
    }
    zero = img.sum() * 0.0
    # F_{T->Î}: text queries against unattended image codes; F_{I->T̂} likewise.
    terms["t2i_adv"] = triplet_ranking_loss(txt, codes["img_un"], sim, margin) if image_attention else zero
    terms["i2t_adv"] = triplet_ranking_loss(img, codes["txt_un"], sim, margin) if text_attention else zero
    terms["retrieval"] = terms["t2i"] + terms["i2t"] + terms["i2i"] + terms["t2t"]
    terms["adversarial"] = terms["t2i_adv"] + terms["i2t_adv"]
    terms["full"] = terms["retrieval"] + terms["adversarial"]
    return terms


def pairwise_nll(x: torch.Tensor, y: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """J(X, Y) = mean_ij [log(1 + exp Θ_ij) − S_ij Θ_ij], Θ = ½ X Yᵀ (DCMH eq. 2):
    the pairwise likelihood loss of DCMH, also DFAH's pair-wise supervision."""
    theta = 0.5 * x @ y.T                                              # (n, n)
    return (F.softplus(theta) - sim.float() * theta).mean()
