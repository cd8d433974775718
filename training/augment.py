"""Batched data augmentation on float NCHW tensors, done on whole batches (fast on 2 CPU cores).

Every function takes an explicit ``torch.Generator`` so a run is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``padding`` pixels each way, filling the border by reflection."""
    if padding <= 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(height)[None, :]).to(images.device)  # [N, H]
    cols = (dx[:, None] + torch.arange(width)[None, :]).to(images.device)  # [N, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 puts the channel dim last: [N, H, W, C].
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half of the images left-right (vehicles look the same either way round)."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image (centre anywhere, so it may be clipped by the border)."""
    if size <= 0:
        return images
    n, _, height, width = images.shape
    cy = torch.randint(0, height, (n,), generator=generator).to(images.device)
    cx = torch.randint(0, width, (n,), generator=generator).to(images.device)
    ys = torch.arange(height, device=images.device)[None, :]
    xs = torch.arange(width, device=images.device)[None, :]
    inside_rows = (ys >= (cy[:, None] - size // 2)) & (ys < (cy[:, None] - size // 2 + size))
    inside_cols = (xs >= (cx[:, None] - size // 2)) & (xs < (cx[:, None] - size // 2 + size))
    hole = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return images.masked_fill(hole, 0.0)


def mixup(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image and its soft target [N, C] with a partner from the same batch (one Beta weight per batch)."""
    if alpha <= 0:
        return images, targets
    weight = _beta(alpha, generator)
    partner = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return weight * images + (1 - weight) * images[partner], weight * targets + (1 - weight) * targets[partner]


def cutmix(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one random box from a partner image into each image; targets mix by the pasted area."""
    if alpha <= 0:
        return images, targets
    n, _, height, width = images.shape
    area = 1.0 - _beta(alpha, generator)
    box_h, box_w = round(height * area**0.5), round(width * area**0.5)
    top = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
    partner = torch.randperm(n, generator=generator).to(images.device)
    mixed = images.clone()
    mixed[:, :, top : top + box_h, left : left + box_w] = images[partner, :, top : top + box_h, left : left + box_w]
    kept = 1.0 - box_h * box_w / (height * width)
    return mixed, kept * targets + (1 - kept) * targets[partner]


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta sampler takes no generator; derive a numpy one from the torch stream to stay seeded.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
