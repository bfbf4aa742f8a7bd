"""Image augmentation of training batches, plain PyTorch (no Ray).

A random shift is the usual first remedy for a small image set learned from
scratch (issue 25: 1,000 emoji glyphs). No flips: the synthetic set's label
templates and many emoji (arrows, hands) are not mirror-symmetric.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (N, 3, S, S) -> the same images, each moved by its own random
    whole number of pixels in [-max_shift, max_shift] along each axis, the
    uncovered border filled by replicating the edge (the white around a glyph
    stays white). `generator` (a CPU one) draws the shifts."""
    if max_shift == 0:
        return images
    n, channels, height, width = images.shape
    padded = F.pad(images.float(), (max_shift,) * 4, mode="replicate")    # (N, 3, S+2k, S+2k)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)     # (N, S)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)      # (N, S)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(channels, device=images.device)[None, :, None, None]
    moved = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return moved.to(torch.uint8)
