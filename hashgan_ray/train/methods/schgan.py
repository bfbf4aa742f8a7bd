"""SCH-GAN: semi-supervised cross-modal hashing by a GAN (papers/schgan-abstract.txt).

Only the abstract is available; every formula below is this project's reading
of it (docs/methods.md, SCH-GAN).

The training split has a labelled part and a larger unlabelled part
(`labeled_fraction`); each batch carries a bool `labeled` column (missing:
all labelled). The unlabelled rows of the batch are the **pool** the generator
selects from. (Under DDP a rank sees only its own batch; the batch is the pool
that every rank has at the same moment, with codes from the current
discriminator, so nothing is stale and nothing is exchanged.)

**True positives.** The positives of a query q are the labelled rows that
share a label with q (when q is labelled) and, for every row, labelled or not,
its own counterpart: image i and text i are one pair, a true positive of each
other that needs no label. So every row is a query, and the unlabelled pairs
teach through their pairing as well as through the selection. (Measured on
synthetic data at 10% labels, in-process, 184 steps: with positives from the
labelled rows only the MAP stayed at chance, 0.17/0.18; with the pairs added
it reached 0.20/0.20. docs/methods.md.) A query's own counterpart is never
in its pool.

**Discriminative model** (the servable `FeatureHashing`, attention off): relaxed
codes h = tanh(...) per modality. For a direction A->B (image->text and
text->image), a query q of modality A, a true positive p of modality B and an
example c of modality B,

    u(q, p, c) = ε + ||h_q - h_p|| - ||h_q - h_c||      (ε: the margin)

is the argument of the triplet hinge: u > 0 means c is not yet a margin ε
further from q than p is; u = 0 means c sits exactly at the margin.
The discriminator minimises

    L_D = HashGAN's objective over the labelled rows     (losses.hashgan_losses, no attention)
        + Σ over directions, mean over q, p, k of max(0, u(q, p, c_k))
                                                          (c_k ~ p_θ(. | q), K per query)

the second term being "distinguish the selected examples from the true
positives of the query" with the selected examples as negatives. The first
term is the labelled data's own supervision (labelled negatives too); without
it a batch with an empty pool (labeled_fraction 1, or an all-labelled batch)
would teach nothing.

**Generative model** (training only): per direction an MLP g_θ(q, c) that
scores a pair from the discriminator's current codes (constants to it),
[h_q ⊙ h_c, |h_q - h_c|] -> 128 -> ReLU -> 1. It selects from the pool by

    p_θ(c | q) = softmax over the pool of q of g_θ(q, c),

sampled K times per query with replacement (Gumbel-max: exact samples of that
softmax). Its last layer starts at zero, so selection starts uniform.

**Reward** (the abstract: the generator "takes the correlation score predicted
by the discriminative model as a reward" and "selects the examples close to
the margin"). The discriminator's score of c for q is
D(c | q) = σ(u(q, p, c) / w): the probability that it confuses c with the
positive by the margin. The reward is the Bernoulli variance of that
decision, scaled to 1 at its peak,

    r(q, c) = mean over the positives p of q of 4 · D · (1 - D),   w = ε / 4,

largest (1) when c sits at the margin (u = 0), above 0.42 for |u| < ε/2,
falling towards 0 for easy negatives (u << 0) and for examples closer to q
than its positive is (u >> 0: most likely unlabelled positives, which a
negative must not be).

**Policy gradient** (REINFORCE, Williams 1992) with a baseline: the pool is the
batch, so the reward of *every* candidate is known and the baseline is the
exact expected reward b(q) = Σ_c p_θ(c | q) r(q, c) under the current policy
(held constant; unbiased because it does not depend on the sampled c):

    L_G = - mean over q, k of (r(q, c_k) - b(q)) · log p_θ(c_k | q).

Schedule: HashGAN's (steps.g_steps_after): a discriminator step on every
batch, and after every d_steps-th one g_steps generator steps on the same
batch; Adam for each, the lr following the run's schedule. Until issue 25 the
G steps took the place of D steps (a fifth of the batches trained only the
generator) and the labelled term was the two cross-modal triplet terms only,
without HashGAN's intra-modal terms and balance term: with every label
SCH-GAN then scored 0.28 on the synthetic benchmark against 0.53 for HashGAN
without attention, the method it reduces to. Now, with every label, the
pool is empty and SCH-GAN is HashGAN without attention step for step
(tests/train/test_schgan.py).

DDP: the discriminator (model.net) and the generator are wrapped separately;
a D step runs the forward of the net wrapper only (the generator, unwrapped,
samples under no_grad), a G step that of the generator wrapper only (the
codes come from the unwrapped net under no_grad). A rank whose batch has no
labelled or no unlabelled rows still runs both forwards and backwards: its
masked means are zeros that keep the graph, so every parameter gets a (zero)
gradient and the all-reduce matches the other ranks.
"""
from __future__ import annotations

import torch
from torch import nn

from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.losses import hashgan_losses, label_similarity, pairwise_distance
from hashgan_ray.train.steps import (
    LabelHead,
    LrSchedule,
    Optimizers,
    autocast,
    build_label_head,
    build_optimizers,
    g_steps_after,
    gathered,
    single_process,
)

SAMPLES_PER_QUERY = 4      # K: selections per query and direction
GENERATOR_HIDDEN = 128     # width of each relevance MLP
REWARD_WIDTH = 0.25        # w as a fraction of the margin ε
_MASKED = -1e9             # logit of a non-pool candidate: probability exactly 0


class RelevanceScorer(nn.Module):
    """g_θ(q, c) for one direction, from codes of the query and the candidates."""

    def __init__(self, bits: int, hidden: int = GENERATOR_HIDDEN):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * bits, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)             # uniform selection at the start
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, query: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        q, c = query.unsqueeze(1), cand.unsqueeze(0)                   # (Nq, 1, b), (1, Nc, b)
        pair = torch.cat([(q * c), (q - c).abs()], dim=-1)             # (Nq, Nc, 2b)
        return self.mlp(pair).squeeze(-1)                              # (Nq, Nc)


class Generator(nn.Module):
    """Both directions in one module, so one DDP wrapper covers a G step."""

    def __init__(self, bits: int):
        super().__init__()
        self.i2t = RelevanceScorer(bits)
        self.t2i = RelevanceScorer(bits)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, B): image queries x text candidates, text queries x image candidates."""
        return self.i2t(img, txt), self.t2i(txt, img)


def margin_reward(u: torch.Tensor, width: float) -> torch.Tensor:
    """4·D·(1-D) with D = σ(u / width): 1 at the margin (u = 0), -> 0 far from it."""
    d = torch.sigmoid(u / width)
    return 4 * d * (1 - d)


def selection_log_probs(scores: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """log p_θ(c | q): log-softmax of the scores (Nq, Nc) over the pool, bool (Nq, Nc)
    or (Nc,). Non-pool candidates get probability 0 (a finite log, so no NaN)."""
    return scores.float().masked_fill(~pool, _MASKED).log_softmax(dim=1)


def sample_picks(log_probs: torch.Tensor, k: int) -> torch.Tensor:
    """(Nq, k) candidate indices, each an exact sample of softmax(log_probs) (Gumbel-max)."""
    u = torch.rand(log_probs.shape[0], k, log_probs.shape[1], device=log_probs.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
    return (log_probs.detach().unsqueeze(1) + gumbel).argmax(dim=2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x where mask; 0 (with x's graph) where mask is empty."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1)


def candidate_rewards(dist: torch.Tensor, pos: torch.Tensor, margin: float) -> torch.Tensor:
    """r(q, c) (Nq, Nc) from query-candidate distances and positives (Nq, Nc) bool."""
    u = margin + dist.unsqueeze(2) - dist.unsqueeze(1)                 # (q, p, c)
    r = margin_reward(u, REWARD_WIDTH * margin)
    w = pos.to(r.dtype).unsqueeze(2)
    return (r * w).sum(1) / w.sum(1).clamp_min(1)


def selected_triplet_loss(dist: torch.Tensor, pos: torch.Tensor, queries: torch.Tensor,
                          picks: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over queries q, positives p, picks k of max(0, ε + d(q,p) - d(q, c_k))."""
    picked = dist.gather(1, picks)                                     # (Nq, K)
    hinge = torch.relu(margin + dist.unsqueeze(2) - picked.unsqueeze(1))   # (q, p, k)
    valid = (pos & queries.unsqueeze(1)).unsqueeze(2).expand_as(hinge)
    return masked_mean(hinge, valid)


def reinforce_loss(log_probs: torch.Tensor, picks: torch.Tensor, rewards: torch.Tensor,
                   queries: torch.Tensor) -> torch.Tensor:
    """-mean over queries q, picks k of (r(q, c_k) - b(q)) · log p(c_k | q),
    b(q) = Σ_c p(c | q) r(q, c) (held constant)."""
    with torch.no_grad():
        baseline = (log_probs.exp() * rewards).sum(1, keepdim=True)    # (Nq, 1)
        advantage = rewards.gather(1, picks) - baseline                # (Nq, K)
    chosen = log_probs.gather(1, picks)
    return -masked_mean(advantage * chosen, queries.unsqueeze(1).expand_as(chosen))


def batch_masks(batch: dict) -> tuple[torch.Tensor, ...]:
    """labelled (B,); pos (B, B): row j is a true positive of query i (both labelled
    and sharing a label, or i = j: one pair); pool (B, B): the unlabelled rows
    that are not a positive of i; queries (B,): rows with a positive and a pool."""
    labels = batch["labels"]
    n = labels.shape[0]
    labeled = batch.get("labeled")
    if labeled is None:
        labeled = torch.ones(n, dtype=torch.bool, device=labels.device)
    labeled = labeled.bool()
    pos = label_similarity(labels, labels) & labeled.unsqueeze(1) & labeled.unsqueeze(0)
    pos |= torch.eye(n, dtype=torch.bool, device=labels.device)
    pool = ~labeled.unsqueeze(0) & ~pos
    return labeled, pos, pool, pos.any(1) & pool.any(1)


def labelled_loss(img: torch.Tensor, txt: torch.Tensor, batch: dict, margin: float, mining: str,
                  quantization: float, balance: float, gather=None,
                  label_head=None) -> dict[str, torch.Tensor]:
    """The labelled rows' term of L_D: HashGAN's objective without attention
    (losses.hashgan_losses: the four triplet terms, image<->text and within each
    modality, plus its quantization, balance and label terms at the run's weights),
    mined in the global batch under DDP as HashGAN's (steps.gathered); the
    generator's picks stay per worker."""
    labeled = batch.get("labeled")
    if labeled is None:
        labeled = torch.ones(len(img), dtype=torch.bool, device=img.device)
    codes, labels = gathered({"img": img, "txt": txt}, batch["labels"], gather)
    if gather is not None:
        labeled = gather(labeled.to(torch.uint8))
    labeled = labeled.bool()
    if not labeled.any():       # the same on every rank (gathered): zeros that keep the graph
        zero = (codes["img"].sum() + codes["txt"].sum()) * 0.0
        return {"full": zero, "i2t": zero, "t2i": zero}
    sim = label_similarity(labels[labeled], labels[labeled])
    return hashgan_losses({"img": codes["img"][labeled], "txt": codes["txt"][labeled]}, sim,
                          margin, image_attention=False, text_attention=False, mining=mining,
                          quantization=quantization, balance=balance, label_head=label_head,
                          labels=labels[labeled])


def relaxed_codes(net: nn.Module, model: HashGAN, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(img, txt) tanh codes (B, bits), float32. `net` is model.net or its wrapper."""
    with autocast(batch["image"].device):
        codes = net(batch["image"], batch["text"], model.attention)    # attention off: all ones
    return codes["img"].float(), codes["txt"].float()


def directions(img: torch.Tensor, txt: torch.Tensor, scores: tuple):
    """(query codes, candidate codes, generator scores) of image->text and text->image."""
    return (("i2t", img, txt, scores[0]), ("t2i", txt, img, scores[1]))


class SCHGANTrainer:
    """SCH-GAN's schedule (module docstring); interface in train/methods/__init__.py.
    margin, mining: of the triplet terms (train/losses.py)."""

    uses_unlabeled = True

    def __init__(self, model: HashGAN, *, lr: float, betas: tuple[float, float],
                 schedule: LrSchedule, margin: float, mining: str = "all",
                 quantization: float = 0.0, balance: float = 0.0, d_steps: int = 4,
                 g_steps: int = 1, wrap=single_process, gather=None, label_head: float = 0.0,
                 num_labels: int | None = None):
        self.model = model
        self.margin, self.mining = margin, mining
        self.quantization, self.balance = quantization, balance
        self.d_steps, self.g_steps = d_steps, g_steps
        self.gather = gather                    # labelled triplets over every worker's batch
        device = next(model.parameters()).device
        self.generator = Generator(model.bits).to(device)
        self.opt_d, _ = build_optimizers(model, lr, betas)     # attention off: no G
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.label_head = build_label_head(label_head, model, num_labels, self.opt_d, wrap)
        self.optimizers = Optimizers(schedule, opt_d=self.opt_d, opt_g=self.opt_g)
        # Two wrappers: discriminator and generator are updated in alternation.
        self.net = wrap(model.net)
        self.gen = wrap(self.generator)

    def step(self, step: int, batch: dict) -> dict[str, float]:
        # HashGAN's schedule: every batch a D step, and every d_steps-th batch then
        # g_steps G steps too, so that with every label (an empty pool, nothing to
        # select) SCH-GAN is exactly HashGAN without attention, step for step.
        stats = self.d_step(batch)
        for _ in range(g_steps_after(step, self.d_steps, self.g_steps)):
            stats.update(self.g_step(batch))
        return stats

    def d_step(self, batch: dict) -> dict[str, float]:
        """min over the discriminator of L_D, examples selected by the fixed generator."""
        margin = self.margin
        labeled, pos, pool, queries = batch_masks(batch)
        img, txt = relaxed_codes(self.net, self.model, batch)
        with torch.no_grad():
            scores = self.generator(img.detach(), txt.detach())
        labelled = labelled_loss(img, txt, batch, margin, self.mining, self.quantization,
                                 self.balance, self.gather, self.label_head)
        losses = {"d_labelled": labelled["full"], "d_i2t": labelled["i2t"],
                  "d_t2i": labelled["t2i"]}
        total = labelled["full"]
        for name, q, c, s in directions(img, txt, scores):
            picks = sample_picks(selection_log_probs(s, pool), SAMPLES_PER_QUERY)
            dist = pairwise_distance(q, c)                             # (B, B)
            losses[f"d_{name}_selected"] = selected_triplet_loss(dist, pos, queries, picks, margin)
            total = total + losses[f"d_{name}_selected"]
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        self.opt_d.step()
        return {"d_total": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}

    def g_step(self, batch: dict) -> dict[str, float]:
        """max over the generator of the expected reward, by REINFORCE."""
        _, pos, pool, queries = batch_masks(batch)
        with torch.no_grad():
            img, txt = relaxed_codes(self.model.net, self.model, batch)
        scores = self.gen(img, txt)
        loss, reward = img.new_zeros(()), img.new_zeros(())
        for _, q, c, s in directions(img, txt, scores):
            log_probs = selection_log_probs(s, pool)
            picks = sample_picks(log_probs, SAMPLES_PER_QUERY)
            with torch.no_grad():
                rewards = candidate_rewards(pairwise_distance(q, c), pos, self.margin)
                reward = reward + masked_mean(rewards.gather(1, picks),
                                              queries.unsqueeze(1).expand_as(picks))
            loss = loss + reinforce_loss(log_probs, picks, rewards, queries)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"g_reinforce": float(loss.detach()), "g_reward": float(reward) / 2}

    def end_epoch(self) -> None:
        self.optimizers.end_epoch()

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), **self.optimizers.state_dict(),
                **LabelHead.state_of(self.label_head)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        LabelHead.restore(self.label_head, state)
        self.optimizers.load_state_dict(state)
