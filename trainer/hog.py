"""Histograms of oriented gradients (Dalal and Triggs, 2005): a fixed, untrained image descriptor.

The label-free comparison of clusterings (`trainer.baselines`) mines neighbors in this space
because none of the compared methods clusters in it: not k-means on pixels, not k-means on the
pretext features, not SCAN (whose neighbors come from the pretext features).

Recipe (per image, no learned parameter): resize to `size x size` (antialiased bilinear);
centred gradients [-1, 0, 1]; for RGB the channel with the largest gradient magnitude at each
pixel; unsigned orientation (0-180 degrees) into `bins` bins with linear interpolation between
neighbouring bins, weighted by the magnitude; sums over `cell x cell` pixel cells; blocks of
2 x 2 cells at a stride of one cell, each L2-normalized, clipped at 0.2 and normalized again
(L2-Hys); the blocks concatenated and L2-normalized. At the defaults (32 px, 8 px cells, 9
bins) that is 3 x 3 blocks x 36 = 324 values per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def hog_features(
    images: torch.Tensor, size: int = 32, cell: int = 8, bins: int = 9, batch_size: int = 2048
) -> np.ndarray:
    """HOG descriptors of uint8 images `(N, C, H, W)` (C = 1 or 3): `(N, D)` float32, unit L2 norm.

    `size` must be a multiple of `cell` with at least 2 cells per side.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    if size % cell or size // cell < 2:
        raise ValueError(f"size {size} must be a multiple of cell {cell} with at least 2 cells per side")
    out = [_hog_batch(images[start : start + batch_size], size, cell, bins)
           for start in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, _dim(size, cell, bins)), dtype=np.float32)


def _dim(size: int, cell: int, bins: int) -> int:
    blocks = size // cell - 1
    return blocks * blocks * 4 * bins


@torch.no_grad()
def _hog_batch(images: torch.Tensor, size: int, cell: int, bins: int) -> torch.Tensor:
    x = images.float().div_(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    gx = F.pad(x, (1, 1, 0, 0), mode="replicate")
    gx = gx[..., 2:] - gx[..., :-2]
    gy = F.pad(x, (0, 0, 1, 1), mode="replicate")
    gy = gy[..., 2:, :] - gy[..., :-2, :]
    magnitude = torch.sqrt(gx * gx + gy * gy)
    if x.shape[1] > 1:  # the strongest channel at each pixel
        strongest = magnitude.argmax(dim=1, keepdim=True)
        gx, gy, magnitude = gx.gather(1, strongest), gy.gather(1, strongest), magnitude.gather(1, strongest)
    angle = torch.atan2(gy, gx).remainder(math.pi)  # unsigned orientation in [0, pi)
    position = angle * (bins / math.pi) - 0.5  # bin centres at (b + 0.5) * pi / bins
    low = torch.floor(position)
    weight = position - low
    low = low.long().remainder(bins)
    histogram = torch.zeros((x.shape[0], bins, size, size))
    histogram.scatter_add_(1, low, magnitude * (1 - weight))
    histogram.scatter_add_(1, (low + 1).remainder(bins), magnitude * weight)
    cells = F.avg_pool2d(histogram, cell) * (cell * cell)  # (N, bins, size / cell, size / cell)
    # 2 x 2-cell blocks at a stride of one cell: (N, bins, 4 cells, b, b) -> (N, b * b blocks, bins * 4 cells)
    blocks = torch.stack([cells[..., :-1, :-1], cells[..., :-1, 1:], cells[..., 1:, :-1], cells[..., 1:, 1:]], dim=2)
    blocks = blocks.flatten(3).permute(0, 3, 1, 2).flatten(2)
    blocks = F.normalize(blocks, dim=2).clamp_(max=0.2)
    blocks = F.normalize(blocks, dim=2)
    return F.normalize(blocks.flatten(1), dim=1)
