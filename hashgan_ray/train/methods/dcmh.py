"""DCMH, the deep cross-modal hashing baseline (Jiang & Li, CVPR 2017), in plain
PyTorch (no Ray): HashGAN's feature networks without attention, trained on

    J = -Σ_ij (S_ij θ_ij - log(1 + e^θ_ij)) + γ (‖B - F‖² + ‖B - G‖²) + η (‖F·1‖² + ‖G·1‖²)

with θ_ij = ½ F_i·G_j, F and G the real-valued outputs of the image and text
networks (n_train x bits), S_ij = "pairs i and j share a label", and the codes
of the training set B ∈ {-1, +1} updated in closed form, B = sign(γ (F + G)).

Choices (docs/methods.md):

* F and G are the pre-activations of the model's hashing layers
  (`image_code`, `text_code` of FeatureHashing). The servable model encodes with
  tanh of them, and sign(tanh x) = sign x, so its codes are DCMH's sign(F), sign(G).
* Buffers F, G hold every training row's latest output, indexed by the row's
  position in `train_ids`; a step refreshes the rows of its batch. The
  likelihood term is over the batch queries against every buffered row of the
  other modality, as DCMH's is over all training points (a batch of 64 alone
  would see few of the pairs; the (batch x n) product is cheap next to the CNN).
  Rows the trainer has not yet seen (their label unknown, their buffer still
  the random start) take no part in the likelihood.
* The balance term η‖F·1‖² = η (Σ_i ‖F_i‖² + Σ_{i≠j} F_i·F_j) is estimated
  without bias from the batch: its share of the whole (b/n, as for the
  likelihood) is η (Σ_batch ‖F_i‖² + ((n-1)/(b-1)) Σ_{i≠j in batch} F_i·F_j),
  whose gradient for a batch row is 2η (F_i + (n-1)/(b-1) Σ_{j≠i} F_j), DCMH's
  2η F·1 with the rest of the batch standing for the training set. The plain
  estimate (b/n) η ‖(n/b) Σ_batch F_i‖² (used until issue 25) weighs each row's
  own ‖F_i‖² n/b times more than DCMH's term does: a penalty on the spread of
  the outputs (its expectation exceeds DCMH's by η n tr Cov(F) / b; on the
  emoji set, n/b = 16, the image outputs' mean |F| fell from 0.50 to 0.08 in
  3 epochs, 0.14-0.19 with this estimate; tests/train/test_dcmh.py). It is
  off by default all the same (η = 0, below). DCMH's own form (the
  buffered rows plus the fresh batch) lets every batch of an epoch correct
  against the same stale sum under Adam, and the corrections add up: each
  bit's mean swung from one sign to the other epoch after epoch (1,200
  synthetic pairs, 5 epochs: mean |column mean| of F 0.11 -> 0.29).
* DCMH alternates the two networks (a pass of image updates, then of text
  updates). Here each batch makes one image step, then one text step against
  the F rows just refreshed: both networks learn from every batch, and every
  DDP rank runs the same two forwards per step.
* B is updated once per epoch (DCMH: once per outer iteration), after the
  buffers are summed over the workers: within an epoch each row is refreshed
  by exactly one rank, so zeros-elsewhere copies add up to the whole buffer.
* Two departures from DCMH, each one option away (TrainConfig.dcmh_balance,
  dcmh_prior; docs/methods.md has what was measured). η = 0 rather than DCMH's
  1: DCMH chose γ and η by cross-validation on its data, and here the batch
  estimate above is unbounded below (a batch whose outputs cancel has a negative
  estimate, growing with ‖F‖²), and the image network drives it down: its term
  fell to -126 per pair by epoch 15 on the synthetic set (its BatchNorm, which
  ties a batch's outputs together, the likely means; not isolated). And a
  prior on S: σ(θ_ij + logit s), s the share of similar pairs, so that at θ = 0
  the likelihood predicts the base rate; without it, with 3% similar pairs,
  its gradient pulled every pair towards "dissimilar" and shrank the outputs.
* Adam (the run's lr and betas) and the lr schedule of HashGAN rather than DCMH's
  SGD, so both methods run under the same optimiser settings. γ = 1 as in
  DCMH (TrainConfig.dcmh_quantization); HashNet's equal weighting of similar
  and dissimilar pairs, the usual remedy for rare similar pairs, is an option
  (dcmh_pair_weights, off as in DCMH; docs/methods.md has what was measured).
  The logged terms are per pair (J's share divided by batch x n_train); the
  gradient is J's share per batch row (divided by the batch only). The
  factor n is not free under Adam: with it, the text network's gradients sat
  at Adam's eps and its steps were damped (tests/train/test_dcmh.py).
"""
from __future__ import annotations

import torch
from torch import nn

from hashgan_ray.model.hashgan import FeatureHashing, HashGAN
from hashgan_ray.train.losses import (balanced_pair_weights, base_rate_logit, label_similarity,
                                      pairwise_nll)
from hashgan_ray.train.steps import LrSchedule, Optimizers, autocast, no_all_reduce, single_process

GAMMA = 1.0   # quantization weight γ (DCMH, section 4.1)
ETA = 1.0     # balance weight η, DCMH's (section 4.1); a run's is TrainConfig.dcmh_balance


def dcmh_loss(out: torch.Tensor, rows: torch.Tensor, other: torch.Tensor, known: torch.Tensor,
              sim: torch.Tensor, codes: torch.Tensor, *, gamma: float = GAMMA,
              eta: float = ETA, prior: bool = False,
              pair_weights: bool = False) -> dict[str, torch.Tensor]:
    """The terms of J that depend on one modality's batch outputs, per pair.

    out (b, q): this modality's outputs for the training rows `rows` (b,);
    other (n, q): the other modality's buffer; known (n,) bool: its rows that
    hold network outputs; sim (b, n): S between the batch and every row;
    codes (n, q): B. The balance term is estimated from the batch's pairs of
    distinct rows (module docstring). prior: θ_ij + logit s, s the share of
    similar pairs among them (losses.base_rate_logit; DCMH: none). pair_weights:
    similar and dissimilar pairs weigh half the likelihood each
    (losses.balanced_pair_weights; DCMH: off).
    """
    out = out.float()
    b, n, seen = out.shape[0], other.shape[0], int(known.sum())
    pairs = sim[:, known]
    bias = base_rate_logit(pairs) if prior and seen else 0.0
    weight = balanced_pair_weights(pairs) if pair_weights and seen else None
    # mean over the (b, seen) pairs -> sum over them / (b n)
    nll = (pairwise_nll(out, other[known], pairs, bias, weight) * (seen / n) if seen
           else out.sum() * 0)
    quantization = gamma * (codes[rows] - out).pow(2).sum()
    # the batch's share of η‖F·1‖², without bias (module docstring)
    balance = eta * (out.pow(2).sum() + (n - 1) / max(b - 1, 1) * balance_pairs(out))
    terms = {"nll": nll, "quantization": quantization / (b * n), "balance": balance / (b * n)}
    terms["total"] = terms["nll"] + terms["quantization"] + terms["balance"]
    return terms


def balance_pairs(out: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} out_i·out_j over the rows of `out` (b, q): ‖Σ_i out_i‖² without
    the rows' own ‖out_i‖²."""
    return out.sum(0).pow(2).sum() - out.pow(2).sum()


def update_codes(f: torch.Tensor, g: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """B = sign(γ (F + G)), the minimiser of J over B for fixed F, G; +1/-1 as
    the model's codes are (a bit is 1 where the output is > 0)."""
    return torch.where(gamma * (f + g) > 0, 1.0, -1.0)


class Branch(nn.Module):
    """One modality of FeatureHashing, input -> pre-activation code, as a module
    of its own so that each network gets its own DDP wrapper. Only that
    modality's layers are registered (the shared `net` is held outside the
    module tree)."""

    def __init__(self, net: FeatureHashing, modality: str):
        super().__init__()
        self.modality = modality
        self.layers = (nn.ModuleList([net.image_trunk, net.image_head, net.image_code])
                       if modality == "image" else nn.ModuleList([net.text_net, net.text_code]))
        self._net = (net,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self._net[0]
        if self.modality == "image":
            return net.image_code(net.image_head(net.image_maps(x)))        # (b, bits)
        return net.text_code(net.text_feats(x))                             # (b, bits)


class DCMHTrainer:
    """DCMH (module docstring). The trainer interface is described in train/methods/__init__.py."""

    uses_unlabeled = False

    def __init__(self, model: HashGAN, *, train_ids, lr: float, betas: tuple[float, float],
                 schedule: LrSchedule, eta: float, prior: bool, gamma: float,
                 pair_weights: bool, seed: int = 0,
                 wrap=single_process, all_reduce=no_all_reduce):
        """train_ids: the sorted dataset ids of the training split (a buffer row
        each); eta, prior, gamma, pair_weights: dcmh_loss's, with no default here
        (TrainConfig's dcmh_balance, dcmh_prior, dcmh_quantization and
        dcmh_pair_weights hold the run's); seed: of the random start
        of the buffers, the same on every rank."""
        if train_ids is None:
            raise ValueError("DCMH needs the training ids (its buffers have a row per training pair)")
        self.model = model
        self.all_reduce = all_reduce
        self.eta, self.prior, self.gamma, self.pair_weights = eta, prior, gamma, pair_weights
        device = next(model.parameters()).device
        self.train_ids = torch.as_tensor(train_ids, dtype=torch.int64, device=device)
        self.branches = {m: Branch(model.net, m) for m in ("image", "text")}
        self.nets = {m: wrap(b) for m, b in self.branches.items()}
        self.optimizers = Optimizers(schedule, **{
            f"opt_{m}": torch.optim.Adam(b.parameters(), lr=lr, betas=betas)
            for m, b in self.branches.items()})
        n, bits = len(self.train_ids), model.bits
        # DCMH's start: random F, G and B = sign(F + G); the same on every rank (seeded).
        gen = torch.Generator().manual_seed(seed)
        self.buffers = {m: torch.randn(n, bits, generator=gen).to(device) for m in ("image", "text")}
        self.codes = update_codes(self.buffers["image"], self.buffers["text"])
        self.known = {m: torch.zeros(n, dtype=torch.bool, device=device) for m in ("image", "text")}
        self.labels: torch.Tensor | None = None        # (n, L) multi-hot, made at the first batch
        self.fresh = torch.zeros(n, dtype=torch.bool, device=device)   # rows refreshed this epoch

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.searchsorted(self.train_ids, ids.to(self.train_ids.device))
        if (rows >= len(self.train_ids)).any() or not torch.equal(self.train_ids[rows], ids.to(rows.device)):
            raise ValueError("a batch holds ids that are not in train_ids")
        return rows

    def step(self, step: int, batch: dict) -> dict[str, float]:
        rows = self.rows_of(batch["id"])
        labels = batch["labels"].float()
        if self.labels is None:
            self.labels = torch.zeros(len(self.train_ids), labels.shape[1], device=labels.device)
        self.labels[rows] = labels
        self.fresh[rows] = True
        sim = label_similarity(labels, self.labels)                         # (b, n)
        stats = {}
        for modality, other, x in (("image", "text", batch["image"]), ("text", "image", batch["text"])):
            with autocast(x.device):
                out = self.nets[modality](x)
            terms = dcmh_loss(out, rows, self.buffers[other], self.known[other], sim, self.codes,
                              gamma=self.gamma, eta=self.eta, prior=self.prior,
                              pair_weights=self.pair_weights)
            opt = self.optimizers[f"opt_{modality}"]
            opt.zero_grad(set_to_none=True)
            # Backpropagate J's share per batch row (DCMH's gradient / b), not per pair:
            # divided by n too, the text network's gradients (its N(0, 0.01) layers)
            # fall to 1e-8..1e-7 on emoji, where Adam's eps (1e-8) damps its steps.
            (terms["total"] * len(self.train_ids)).backward()
            opt.step()
            self.buffers[modality][rows] = out.detach().float()
            self.known[modality][rows] = True
            stats.update({f"{modality}_{k}": float(v.detach()) for k, v in terms.items()})
        return stats

    def end_epoch(self) -> None:
        """Sum this epoch's refreshed rows over the workers, then B = sign(γ(F + G))."""
        count = self.fresh.float()
        self.all_reduce(count)
        mine = self.fresh.float().unsqueeze(1)
        done = count > 0
        tables = [self.buffers["image"], self.buffers["text"]]
        if self.labels is not None:      # None on every rank alike (equal shards, no batch yet)
            tables.append(self.labels)
        for table in tables:
            summed = table * mine
            self.all_reduce(summed)
            table[done] = summed[done] / count[done].unsqueeze(1)
        for known in self.known.values():
            known |= done
        self.codes = update_codes(self.buffers["image"], self.buffers["text"])
        self.fresh.zero_()
        self.optimizers.end_epoch()

    def state_dict(self) -> dict:
        cpu = {m: b.cpu() for m, b in self.buffers.items()}
        return {**self.optimizers.state_dict(),
                "buffers": cpu, "known": {m: k.cpu() for m, k in self.known.items()},
                "codes": self.codes.cpu(),
                "labels": self.labels.cpu() if self.labels is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if "optimizers" in state:       # an older checkpoint: {"optimizers": {modality: ...}}
            state = {**state, **{f"opt_{m}": o for m, o in state["optimizers"].items()}}
        self.optimizers.load_state_dict(state)
        device = self.train_ids.device
        self.buffers = {m: b.to(device) for m, b in state["buffers"].items()}
        self.known = {m: k.to(device) for m, k in state["known"].items()}
        self.codes = state["codes"].to(device)
        self.labels = state["labels"].to(device) if state["labels"] is not None else None
