"""Attention module G (section 3.2, eqs. 1-3): score -> softmax -> threshold.

The mask is Z = [P >= α]. Its gradient is a straight-through estimator
(Bengio et al., the paper's [7]): forward the hard 0/1 mask, backward a
surrogate dZ/dP. Two variants (`ste`):

* identity (the paper's literal reading of [7]): dZ/dP = 1 everywhere.
* saturating: dZ/dP = 1 where α/2 <= P <= 2α, else 0 - a score (logit) within
  ln 2 of the threshold's, so a step of G can flip Z there. Why: with the
  identity, raising P of a feature already far above α changes nothing
  forward, yet through the softmax it lowers every other P, so gradient
  ascent on the adversarial loss ratchets the masks down without making
  that loss any larger (issue 15 measured text masks 43% -> 16% attended in
  60 G steps while the adversarial loss fell). Cancelling the gradient where
  the hard step is flat is the saturating STE of binarised networks
  (gradient 1 for |x| <= 1, 0 beyond); the band is taken on P/α, i.e.
  symmetric in the softmax's scores, because G moves scores, and P/α does not
  depend on H·W or d. Features far below α (P < α/2) get no gradient either:
  they can come back only as the softmax renormalises.

The scoring layers start at zero (a choice; the paper gives no initialisation
for G): every P is then exactly uniform, 1/(H·W) or 1/d, so Z starts as all
ones - the model without attention - and G departs from it as it learns. A
random start instead hides about half of every image and text from the
hashing module from the first step, label evidence included.
"""
from __future__ import annotations

import torch
from torch import nn

from hashgan_ray.config import STE

SATURATING_BAND = 2.0      # saturating: gradient where α/BAND <= P <= α·BAND


class _ThresholdST(torch.autograd.Function):
    # A Function rather than `hard + p - p.detach()`: that sum is not exactly
    # 0/1 in floating point (0.3 + 0.7 - 0.3 -> 0.99999994).
    @staticmethod
    def forward(ctx, p, alpha, saturating):
        ctx.alpha, ctx.saturating = alpha, saturating
        if saturating:
            ctx.save_for_backward(p)
        return (p >= alpha).to(p.dtype)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.saturating:
            return grad, None, None
        (p,) = ctx.saved_tensors
        near = (p >= ctx.alpha / SATURATING_BAND) & (p <= ctx.alpha * SATURATING_BAND)
        return grad * near.to(grad.dtype), None, None


def threshold_st(p: torch.Tensor, alpha: float, ste: str = "identity") -> torch.Tensor:
    """Hard mask (p >= alpha), exactly 0/1, with the straight-through gradient
    `ste` to p (module docstring)."""
    if ste not in STE:
        raise ValueError(f"ste must be one of {STE}, got {ste!r}")
    return _ThresholdST.apply(p, alpha, ste == "saturating")


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ImageAttention(nn.Module):
    """G^I: 1x1 conv scores each of the H·W positions; α = alpha_scale / (H·W)."""

    def __init__(self, channels: int, alpha_scale: float = 1.0, ste: str = "identity"):
        super().__init__()
        self.score = _zero(nn.Conv2d(channels, 1, kernel_size=1))
        self.alpha_scale, self.ste = alpha_scale, ste

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = maps.shape                                  # (N, C, H, W)
        p = torch.softmax(self.score(maps).flatten(1).float(), dim=1)   # (N, H·W)
        z = threshold_st(p, self.alpha_scale / (h * w), self.ste)
        return z.view(n, 1, h, w).to(maps.dtype), p.view(n, 1, h, w)


class TextAttention(nn.Module):
    """G^T: fc scores each of the d text features; α = alpha_scale / d."""

    def __init__(self, features: int, alpha_scale: float = 1.0, ste: str = "identity"):
        super().__init__()
        self.score = _zero(nn.Linear(features, features))
        self.alpha_scale, self.ste = alpha_scale, ste

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(self.score(feats).float(), dim=1)      # (N, d)
        z = threshold_st(p, self.alpha_scale / feats.shape[1], self.ste)
        return z.to(feats.dtype), p


class Attention(nn.Module):
    """G = (G^I, G^T); a modality without attention attends to everything
    (mask of ones, no parameters): the paper's Table 4 ablation."""

    def __init__(self, channels: int, text_features: int, *, image: bool, text: bool,
                 alpha_scale: float = 1.0, ste: str = "identity"):
        super().__init__()
        self.image = ImageAttention(channels, alpha_scale, ste) if image else None
        self.text = TextAttention(text_features, alpha_scale, ste) if text else None

    def image_mask(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) mask over the image feature maps."""
        if self.image is None:
            return maps.new_ones(maps.shape[0], 1, *maps.shape[2:])
        return self.image(maps)[0]

    def text_mask(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, d) mask over the text features."""
        return self.text(feats)[0] if self.text is not None else torch.ones_like(feats)

    def forward(self, maps: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_mask(maps), self.text_mask(feats)
