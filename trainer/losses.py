"""Losses. Each returns a scalar tensor; no device is stored, everything follows the inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over a batch of positive pairs.

    z1, z2: `(N, D)` projections of two views of the same N images (normalized here).
    Each of the 2N views must pick its partner among the other 2N - 1 views; the loss is
    the mean cross entropy of that choice with cosine similarity / temperature as logits.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("nt_xent needs at least 2 pairs: with one pair there are no negatives")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is never its own candidate
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)
