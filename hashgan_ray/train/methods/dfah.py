"""DFAH, Discrete Fusion Adversarial Hashing: a compared method, in plain PyTorch (no Ray).

Only the abstract is available (papers/dfah-abstract.txt). Each formula below
implements one of its claims with a standard technique, named beside it.
For a batch of n pairs with multi-hot labels Y (n, c), q-bit codes, and
S_ij = 1 when pairs i and j share a label (losses.label_similarity):

    F = tanh(D^I(E^I(image)))   (n, q)  image network = the servable model's image path
    G = tanh(D^T(E^T(text)))    (n, q)  text network  = its text path
    U = tanh(R(e^I, e^T))       (n, q)  fusion learner R on the pair's two features
    B ∈ {-1, +1}^(N, q)                 one code per training pair (its position in
                                        train_ids); a row of zeros until first set

1. "Modality-Specific Feature Extractor ... with pair-wise supervision":
   DCMH's negative log likelihood of S (Jiang & Li, CVPR 2017, eq. 2), as a
   mean over the n² pairs (DCMH sums):
       J(X, Y) = mean_ij [log(1 + exp Θ_ij) − S_ij Θ_ij],  Θ_ij = ½ X_i·Y_j
   on image against text codes: J(F, G).
2. "the Fusion Learner is proposed to learn the unified hash code": U is one
   code per pair, computed from both modalities' features; it preserves S too:
   J(U, U).
3. "enhances the correlation of heterogeneous modalities via the embedding
   strategy": the fused code supervises both modality networks,
       E = mean over (n, q) of (F − sg U)² + (G − sg U)²
   (sg: stop gradient; U is the teacher and is not pulled toward its students).
4. Quantization toward the discrete codes (DCMH's γ‖B − F‖² term), over the
   rows that have a code:
       Q = mean over (rows, q) of (B − F)² + (B − G)² + (B − U)²
5. "the Modality Discriminator is designed to adapt to the distribution shift
   ... in an adversarial way": M maps a code to the logit of "image"; the GAN
   binary cross-entropy (Goodfellow et al., 2014)
       L_M = BCE(M(sg F), 1) + BCE(M(sg G), 0)
   and for the extractors the non-saturating generator loss, labels flipped:
       A = BCE(M(F), 0) + BCE(M(G), 1)
   Extractors and fusion learner minimise J(F, G) + J(U, U) + λ_e E + λ_q Q + λ_a A;
   M minimises L_M. Each step does one of each, on the same batch.
6. "an efficient discrete optimization strategy to avoid the relaxing
   quantization errors": once per epoch, with P = F + G + U and Y stored for
   the rows seen in the epoch, B and a linear label classifier W (q, c)
   minimise SDH's objective (Shen et al., CVPR 2015):
       O(B, W) = ‖Y − BW‖² + ρ‖W‖² + ν Σ_i (‖B_i − F_i‖² + ‖B_i − G_i‖² + ‖B_i − U_i‖²)
   W step, closed form (ridge regression):  W = (BᵀB + ρI)⁻¹ BᵀY.
   B step, SDH's discrete cyclic coordinate descent, one bit column b_k at a time:
       b_k = sgn(T_k − B_¬k W_¬k w_kᵀ),   T = Y Wᵀ + ν P
   the exact minimiser of O over b_k with the other bits fixed, so O never
   increases and B stays in {−1, +1}: no relaxation, no quantization error.
   ALTERNATIONS W steps and B steps per epoch; rows without a code start from
   sgn(P) (DCMH's B = sign(F + G)). ν is small (0.03) so that the labels shape
   B while the networks are still weak: on the 1,500 training pairs of the
   3,000-pair synthetic set, from uninformative P, the MAP of B among the
   training codes is 0.17 (chance) at ν = 1, 0.75 at ν = 0.03 after 3
   alternations; as the networks learn B, P grows to |P| ≈ 3 and weighs in.

Under DDP: Ray Train gives each training row to one rank per epoch. BᵀB and
BᵀY are sums over rows, so W comes from their all_reduce; each rank updates
the rows it saw and an all_reduce of the new rows (zeros elsewhere) gives
every rank the same B. The extractors + fusion learner are one DDP wrapper
(one optimiser), the discriminator another; each step forwards once through
each, extractor step first (see steps.py for the rule).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashgan_ray.model.hashgan import FeatureHashing, HashGAN
from hashgan_ray.train.losses import label_similarity, pairwise_nll
from hashgan_ray.train.steps import (
    LrSchedule,
    Optimizers,
    autocast,
    frozen,
    no_all_reduce,
    single_process,
)

# Loss weights and sizes: the abstract gives none. DCMH's γ = 1 for the
# quantization term; the adversarial term is kept small so that fooling M
# never outweighs retrieval (a common choice for domain-confusion terms).
EMBED_WEIGHT = 1.0       # λ_e
QUANT_WEIGHT = 1.0       # λ_q
ADV_WEIGHT = 0.1         # λ_a
CODE_FIT = 0.03          # ν: network outputs vs label classifier in O(B, W); item 6 above
RIDGE = 1.0              # ρ
ALTERNATIONS = 3         # W steps and B steps per epoch
DCC_SWEEPS = 3           # passes over the bits per B step (SDH converges in a few)
FUSION_HIDDEN = 512
DISC_HIDDEN = 256


class FusionLearner(nn.Module):
    """R: the image and text features of a pair -> one fused code in (-1, 1)^q.
    Each modality is layer-normalised first: their scales differ by orders of
    magnitude at initialisation (the text layers start from N(0, 0.01))."""

    def __init__(self, image_width: int, text_width: int, bits: int, hidden: int = FUSION_HIDDEN):
        super().__init__()
        self.image_norm, self.text_norm = nn.LayerNorm(image_width), nn.LayerNorm(text_width)
        self.mlp = nn.Sequential(nn.Linear(image_width + text_width, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, bits))

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.image_norm(image_feats), self.text_norm(text_feats)], dim=1)
        return torch.tanh(self.mlp(x))                                  # (n, bits)


class ModalityDiscriminator(nn.Module):
    """M: a code (n, q) -> logit (n,) of "this code came from an image"."""

    def __init__(self, bits: int, hidden: int = DISC_HIDDEN):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(bits, hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.mlp(codes).squeeze(1)


class Extractors(nn.Module):
    """What the extractor step updates, as one module for one DDP wrapper: the
    modality networks (the servable model's FeatureHashing) and the fusion learner."""

    def __init__(self, net: FeatureHashing, fusion: FusionLearner):
        super().__init__()
        self.net, self.fusion = net, fusion

    def forward(self, image, text) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.net
        e_img = net.image_head(net.image_maps(image))        # (n, width): what hash_image codes
        e_txt = net.text_feats(text)                         # (n, d)
        return (torch.tanh(net.image_code(e_img)), torch.tanh(net.text_code(e_txt)),
                self.fusion(e_img, e_txt))                   # F, G, U: (n, bits) each


# -- losses (module docstring, items 1-5) ----------------------------------- #

def embedding_loss(f: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """E: both modality codes regress onto the pair's fused code (a constant)."""
    u = u.detach()
    return (f - u).pow(2).mean() + (g - u).pow(2).mean()


def quantization_loss(codes: torch.Tensor, f, g, u) -> torch.Tensor:
    """Q over the rows whose code B is set (rows of `codes` that are not all zero)."""
    has = codes.abs().sum(1) > 0
    if not has.any():
        return f.sum() * 0.0                                           # keeps the graph
    b = codes[has]
    return sum((b - x[has]).pow(2).mean() for x in (f, g, u))


def modality_loss(image_logits: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
    """BCE with image = 1, text = 0: L_M as written, and A with the arguments swapped."""
    return (F.binary_cross_entropy_with_logits(image_logits, torch.ones_like(image_logits))
            + F.binary_cross_entropy_with_logits(text_logits, torch.zeros_like(text_logits)))


# -- the discrete step (module docstring, item 6) --------------------------- #

def sgn(x: torch.Tensor) -> torch.Tensor:
    """±1, with sgn(0) = +1."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def label_classifier(gram: torch.Tensor, cross: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """W = (BᵀB + ρI)⁻¹ BᵀY from gram = BᵀB (q, q) and cross = BᵀY (q, c)."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, cross)               # (q, c)


def dcc_codes(b: torch.Tensor, w: torch.Tensor, target: torch.Tensor,
              sweeps: int = DCC_SWEEPS) -> torch.Tensor:
    """Bit-wise minimisation of ‖BW‖² − 2 tr(BᵀT) over B ∈ {±1} (SDH's DCC):
    b_k = sgn(T_k − B_¬k W_¬k w_kᵀ); where that is 0 the bit is kept."""
    b = b.clone()
    m = w @ w.T                                                        # (q, q)
    for _ in range(sweeps):
        for k in range(b.shape[1]):
            z = target[:, k] - (b @ m[:, k] - b[:, k] * m[k, k])       # (rows,)
            b[:, k] = torch.where(z > 0, 1.0, torch.where(z < 0, -1.0, b[:, k]))
    return b


def code_target(labels: torch.Tensor, w: torch.Tensor, outputs: torch.Tensor,
                nu: float = CODE_FIT) -> torch.Tensor:
    """T = Y Wᵀ + ν P, P = F + G + U."""
    return labels @ w.T + nu * outputs


def discrete_objective(b, w, labels, outputs, nu: float = CODE_FIT, ridge: float = RIDGE) -> float:
    """O(B, W) up to a constant of the network outputs: ‖Y − BW‖² + ρ‖W‖² − 2ν tr(BᵀP)
    (the ν terms are 3νnq + ν(‖F‖² + ‖G‖² + ‖U‖²) − 2ν tr(BᵀP), as B_ik² = 1)."""
    return float((labels - b @ w).pow(2).sum() + ridge * w.pow(2).sum()
                 - 2 * nu * (b * outputs).sum())


# -- one step of each player ------------------------------------------------ #

def extractor_step(extractors: nn.Module, discriminator: ModalityDiscriminator, batch: dict,
                   codes: torch.Tensor, optimizer: torch.optim.Optimizer):
    """min over the modality networks and the fusion learner; M fixed.
    `extractors` is an Extractors or its DDP wrapper; `codes` the batch's rows of B.
    Returns the logged losses and the detached (F, G, U)."""
    with autocast(batch["image"].device):
        f, g, u = (x.float() for x in extractors(batch["image"], batch["text"]))
    sim = label_similarity(batch["labels"], batch["labels"])
    with frozen(discriminator):
        logits = discriminator(torch.cat([f, g]))                      # one call: DDP-safe
        terms = {"pair": pairwise_nll(f, g, sim), "fusion": pairwise_nll(u, u, sim),
                 "embedding": embedding_loss(f, g, u),
                 "quantization": quantization_loss(codes, f, g, u),
                 "adversarial": modality_loss(*reversed(logits.split(len(f))))}   # labels flipped
        terms["full"] = (terms["pair"] + terms["fusion"] + EMBED_WEIGHT * terms["embedding"]
                         + QUANT_WEIGHT * terms["quantization"] + ADV_WEIGHT * terms["adversarial"])
        optimizer.zero_grad(set_to_none=True)
        terms["full"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}, (f.detach(), g.detach(), u.detach())


def discriminator_step(discriminator: nn.Module, f: torch.Tensor, g: torch.Tensor,
                       optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """min over M of L_M on constant codes. `discriminator` may be a DDP wrapper."""
    logits = discriminator(torch.cat([f.detach(), g.detach()]))
    loss = modality_loss(*logits.split(len(f)))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"discriminator": float(loss.detach())}


class DFAHTrainer:
    """DFAH's schedule: every step one extractor step, then one discriminator
    step on the same batch; once per epoch the discrete update of B. Adam for
    each player, the lr following `schedule` (as HashGAN). `train_ids`: the
    sorted dataset ids of the training split (a code each).
    The trainer interface is described in train/methods/__init__.py."""

    uses_unlabeled = False

    def __init__(self, model: HashGAN, *, train_ids, lr: float, betas: tuple[float, float],
                 schedule: LrSchedule, wrap=single_process, all_reduce=no_all_reduce):
        if train_ids is None:
            raise ValueError("DFAH needs train_ids: it keeps one binary code per training pair")
        net, bits = model.net, model.bits
        device = next(model.parameters()).device
        self.model, self.all_reduce = model, all_reduce
        self.fusion = FusionLearner(net.image_code.in_features, net.text_code.in_features,
                                    bits).to(device)
        self.discriminator = ModalityDiscriminator(bits).to(device)
        adam = dict(lr=lr, betas=betas)
        self.opt_extractors = torch.optim.Adam([*net.parameters(), *self.fusion.parameters()], **adam)
        self.opt_discriminator = torch.optim.Adam(self.discriminator.parameters(), **adam)
        self.optimizers = Optimizers(schedule, opt_extractors=self.opt_extractors,
                                     opt_discriminator=self.opt_discriminator)
        # Two wrappers, two optimisers: each step forwards once through each.
        self.extractors = wrap(Extractors(net, self.fusion))
        self.critic = wrap(self.discriminator)
        self.ids = torch.as_tensor(np.asarray(train_ids, dtype=np.int64), device=device)   # sorted
        self.codes = torch.zeros(len(self.ids), bits, device=device)                      # B
        # What this rank saw this epoch, for the discrete step: P = F + G + U, Y.
        self.outputs = torch.zeros_like(self.codes)
        self.labels: torch.Tensor | None = None          # (N, c), made at the first batch
        self.seen = torch.zeros(len(self.ids), dtype=torch.bool, device=device)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Positions of dataset ids in train_ids."""
        ids = ids.to(self.ids.device)
        pos = torch.searchsorted(self.ids, ids).clamp_max(len(self.ids) - 1)
        if not torch.equal(self.ids[pos], ids):
            raise ValueError("a training batch holds ids that are not in the train split")
        return pos

    def step(self, step: int, batch: dict) -> dict[str, float]:
        pos = self.rows(batch["id"])
        stats, (f, g, u) = extractor_step(self.extractors, self.discriminator, batch,
                                          self.codes[pos], self.opt_extractors)
        stats.update(discriminator_step(self.critic, f, g, self.opt_discriminator))
        if self.labels is None:
            self.labels = self.codes.new_zeros(len(self.ids), batch["labels"].shape[1])
        self.outputs[pos] = f + g + u
        self.labels[pos] = batch["labels"].float()
        self.seen[pos] = True
        return stats

    def end_epoch(self) -> None:
        self.optimizers.end_epoch()
        if self.labels is not None:          # every rank has run the same steps
            self.update_codes()
        self.seen.zero_()

    @torch.no_grad()
    def update_codes(self) -> None:
        """The discrete step (module docstring, item 6) for the rows seen this epoch."""
        own = self.seen.nonzero().squeeze(1)
        outputs, labels, b = self.outputs[own], self.labels[own], self.codes[own]
        b = torch.where(b.abs().sum(1, keepdim=True) > 0, b, sgn(outputs))   # no code yet
        for _ in range(ALTERNATIONS):                                    # W step, B step
            gram, cross = self.all_reduce(b.T @ b), self.all_reduce(b.T @ labels)
            w = label_classifier(gram, cross, RIDGE)
            b = dcc_codes(b, w, code_target(labels, w, outputs, CODE_FIT), DCC_SWEEPS)
        new, count = torch.zeros_like(self.codes), torch.zeros_like(self.codes[:, 0])
        new[own], count[own] = b, 1.0
        new, count = self.all_reduce(new), self.all_reduce(count)      # each row from its rank
        updated = count > 0
        self.codes[updated] = sgn(new[updated])

    def state_dict(self) -> dict:
        return {**self.optimizers.state_dict(),
                "fusion": self.fusion.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "codes": self.codes.to(torch.int8).cpu()}           # B: -1, +1, 0 = not set

    def load_state_dict(self, state: dict) -> None:
        self.optimizers.load_state_dict(state)
        self.fusion.load_state_dict(state["fusion"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.codes.copy_(state["codes"].to(self.codes.device, torch.float32))
