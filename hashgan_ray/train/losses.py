"""HashGAN's objective (section 3.3, eqs. 4-9): triplet ranking losses.

Triplet rule (mined in the batch): for a query i of modality A and items j, k of
modality B in the same batch, <i, j, k> is a triplet when S(i, j) = 1 and
S(i, k) = 0, where S = "shares at least one label"; for the intra-modal terms
(A = B) the query itself is not its own positive. Distances are Euclidean, as
eq. 5. The paper sums over every triplet and says no more; which triplets count,
and how they are weighed, is `mining`:

* "all" (the paper's reading): the mean over every valid triplet of the batch
  (a mean rather than a sum so the scale does not grow with the batch, B³).
* "active": the mean over the triplets that still violate the margin. Late in
  training most triplets are satisfied and a mean over all of them shrinks
  and turns the few informative ones into noise (Hermans et al., 2017).
* "hardest": per query, its farthest positive against its nearest negative,
  averaged over queries that have both (batch-hard).

A batch with no valid triplet contributes 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hashgan_ray.config import MINING


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """(Na, Nb) bool: S(i, j) = pair i and pair j share at least one label."""
    return (labels_a.float() @ labels_b.float().T) > 0


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, Nb) Euclidean distances; safe gradient at 0 (cdist's is NaN there)."""
    sq = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()




def triplet_ranking_loss(query: torch.Tensor, database: torch.Tensor, sim: torch.Tensor,
                         margin: float, same_modality: bool = False,
                         mining: str = "all") -> torch.Tensor:
    """F_{A->B} (eq. 5) over triplets <i, j, k> of
    max(0, ε + ||H^A_i - H^B_j|| - ||H^A_i - H^B_k||), S(i, j) = 1 > S(i, k) = 0,
    reduced as `mining` says (module docstring)."""
    d = pairwise_distance(query.float(), database.float())               # (B, B)
    pos = sim.clone()
    if same_modality:
        pos.fill_diagonal_(False)
    neg = ~sim
    if mining == "hardest":
        usable = pos.any(1) & neg.any(1)                                  # (B,)
        if not usable.any():
            return d.sum() * 0.0                                          # keeps the graph
        far_pos = d.masked_fill(~pos, float("-inf")).amax(1)
        near_neg = d.masked_fill(~neg, float("inf")).amin(1)
        return torch.relu(margin + far_pos - near_neg)[usable].mean()
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)                           # (i, j, k)
    if not valid.any():
        return d.sum() * 0.0
    hinge = torch.relu(margin + d.unsqueeze(2) - d.unsqueeze(1))[valid]   # (triplets,)
    if mining == "all":
        return hinge.mean()
    if mining == "active":
        active = hinge > 0
        return hinge[active].mean() if active.any() else hinge.sum() * 0.0
    raise ValueError(f"mining must be one of {MINING}, got {mining!r}")


def quantization_loss(*codes: torch.Tensor) -> torch.Tensor:
    """mean (|h| - 1)² over the tanh outputs: how far codes are from ±1, which is
    what the Hamming ranking at test time sees (sign(h)). Not in the paper."""
    return torch.stack([(c.float().abs() - 1).pow(2).mean() for c in codes]).mean()


def balance_loss(*codes: torch.Tensor) -> torch.Tensor:
    """mean over bits of (batch mean of h)²: zero when every bit is +1 for half
    the batch. Without it a network can satisfy a loss with the same code for
    every input (measured: the supervised reference's text codes all saturated
    to one constant code within an epoch). DCMH's balance term, per batch."""
    return torch.stack([c.float().mean(0).pow(2).mean() for c in codes]).mean()


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of (N, L) logits against each row's labels as a
    distribution (y / Σy): with one label, the usual classifier's loss; with k
    labels, 1/k each. Per-label sigmoid BCE collapses where each pair has one
    label of many (it settles on "no label": the supervised reference on emoji
    until issue 25)."""
    labels = labels.float()
    return F.cross_entropy(logits.float(), labels / labels.sum(1, keepdim=True).clamp_min(1))


def hashgan_losses(codes: dict[str, torch.Tensor], sim: torch.Tensor, margin: float, *,
                   image_attention: bool, text_attention: bool, mining: str = "all",
                   quantization: float = 0.0, balance: float = 0.0, label_head=None,
                   labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each term of the full objective, plus `retrieval` (eq. 4), `adversarial`
    (eq. 6) and `full` (their sum, plus the quantization and balance terms
    times their weights when those are > 0, and the label term of `label_head`,
    a steps.LabelHead, on the codes of rows with `labels`, times its weight).
    Adversarial terms exist only for a modality with attention: without it the
    unattended features are all zero."""
    img, txt = codes["img"], codes["txt"]

    def triplets(q, db, same=False):
        return triplet_ranking_loss(q, db, sim, margin, same_modality=same, mining=mining)

    terms = {"t2i": triplets(txt, img), "i2t": triplets(img, txt),
             "i2i": triplets(img, img, True), "t2t": triplets(txt, txt, True)}
    zero = img.sum() * 0.0
    # F_{T->Î}: text queries against unattended image codes; F_{I->T̂} likewise.
    terms["t2i_adv"] = triplets(txt, codes["img_un"]) if image_attention else zero
    terms["i2t_adv"] = triplets(img, codes["txt_un"]) if text_attention else zero
    terms["retrieval"] = terms["t2i"] + terms["i2t"] + terms["i2i"] + terms["t2t"]
    terms["adversarial"] = terms["t2i_adv"] + terms["i2t_adv"]
    terms["full"] = terms["retrieval"] + terms["adversarial"]
    if quantization > 0:
        terms["quantization"] = quantization_loss(img, txt)
        terms["full"] = terms["full"] + quantization * terms["quantization"]
    if balance > 0:
        terms["balance"] = balance_loss(img, txt)
        terms["full"] = terms["full"] + balance * terms["balance"]
    if label_head is not None:
        terms["label"] = label_head.loss(img, txt, labels)
        terms["full"] = terms["full"] + label_head.weight * terms["label"]
    return terms


def pairwise_nll(x: torch.Tensor, y: torch.Tensor, sim: torch.Tensor,
                 bias: float | torch.Tensor = 0.0,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """J(X, Y) = mean_ij [log(1 + exp Θ_ij) − S_ij Θ_ij], Θ = ½ X Yᵀ + bias (DCMH eq. 2,
    where bias = 0): the pairwise likelihood loss of DCMH, also DFAH's pair-wise
    supervision. `bias`: a prior on S, see base_rate_logit; `weight` (n, m): each
    pair's weight in the mean, see balanced_pair_weights (None: all 1)."""
    theta = 0.5 * x @ y.T + bias                                       # (n, m)
    nll = F.softplus(theta) - sim.float() * theta
    return (nll * weight).mean() if weight is not None else nll.mean()


def balanced_pair_weights(sim: torch.Tensor) -> torch.Tensor:
    """HashNet's weighting (Cao et al., ICCV 2017) of pairwise_nll's pairs: similar
    pairs weigh 1 / 2s and dissimilar ones 1 / 2(1 − s), s the share of similar
    pairs in `sim`, so that each kind holds half the mean's weight however rare
    similar pairs are (the weights average to 1)."""
    s, share = sim.float(), similar_share(sim)
    return s / (2 * share) + (1 - s) / (2 * (1 - share))


def similar_share(sim: torch.Tensor) -> torch.Tensor:
    """The share of similar pairs in `sim`, kept off 0 and 1 (both take its log or
    divide by it)."""
    return sim.float().mean().clamp(1e-4, 1 - 1e-4)


def base_rate_logit(sim: torch.Tensor) -> torch.Tensor:
    """logit s, s = the share of similar pairs in `sim`: as the bias of
    pairwise_nll, P(S_ij = 1) = σ(½ F_i·G_j + logit s) is s where the outputs
    carry nothing yet (Θ = 0), so the likelihood's gradient on Θ sums to zero
    there instead of pushing every pair towards "dissimilar" when few are
    similar (docs/methods.md, DCMH)."""
    share = similar_share(sim)
    return torch.log(share / (1 - share))
