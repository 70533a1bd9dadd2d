"""Losses. Each returns a scalar tensor; no device is stored, everything follows the inputs."""

from __future__ import annotations

from typing import Optional

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
    partner = torch.arange(2 * n, device=z.device).roll(n)  # made on the device: a host copy would wait
    return F.cross_entropy(logits, partner)


def scan_loss(
    anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN loss of a batch of anchors and one mined neighbor each: `(total, consistency, entropy)`.

    anchor_logits, neighbor_logits: `(N, C)`, or `(H, N, C)` for H heads at once (then each part
    is `(H,)`, head h's being the loss of `(anchor_logits[h], neighbor_logits[h])`: one set of
    kernels for every head). consistency = -mean log <p(anchor), p(neighbor)> (low when both are
    confidently in the same cluster); entropy = H(mean_batch p(anchor)) (high when the batch
    spreads over clusters); total = consistency - entropy_weight * entropy.
    """
    if anchor_logits.shape != neighbor_logits.shape or anchor_logits.ndim not in (2, 3):
        raise ValueError(
            f"scan_loss needs two (N, C) or (H, N, C) tensors of one shape, got {tuple(anchor_logits.shape)} "
            f"and {tuple(neighbor_logits.shape)}"
        )
    p_anchor = F.softmax(anchor_logits.float(), dim=-1)
    p_neighbor = F.softmax(neighbor_logits.float(), dim=-1)
    similarity = (p_anchor * p_neighbor).sum(dim=-1)
    consistency = -torch.log(similarity.clamp_min(1e-8)).mean(dim=-1)
    entropy = _entropy(p_anchor.mean(dim=-2))
    return consistency - entropy_weight * entropy, consistency, entropy


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of the distributions along the last dimension."""
    return -(p * torch.log(p.clamp_min(1e-8))).sum(dim=-1)


def pseudo_label_targets(
    weak_logits: torch.Tensor, threshold: float, class_balance: bool = True
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """From predictions on weak views `(N, C)`: `(mask (N,) bool, targets (N,) int64, class weights (C,) or None)`.

    A sample is pseudo-labelled when its max probability exceeds `threshold`. Class weights
    are the inverse frequency of each pseudo-label among the masked samples (zero for
    classes with none, so all zero when no sample is masked), so rare clusters are not drowned
    by large ones. Nothing here reads a value on the host (no boolean indexing, no `.any()`):
    on CUDA the training loop never waits for it.
    """
    probs = F.softmax(weak_logits.detach().float(), dim=1)
    confidence, targets = probs.max(dim=1)
    mask = confidence > threshold
    weights = None
    if class_balance:
        counts = torch.zeros(probs.shape[1], device=probs.device).index_add_(0, targets, mask.float())
        frequency = counts / counts.sum()
        weights = torch.where(counts > 0, 1.0 / frequency.clamp_min(1e-12), torch.zeros_like(frequency))
    return mask, targets, weights


def selflabel_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.99, class_balance: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy of strong views against confident pseudo-labels of weak views: `(loss, masked fraction)`.

    The (class-weighted) mean over the masked samples, `sum w_i ce_i / sum w_i`, as
    `F.cross_entropy(strong[mask], targets[mask], weight)` computes it, but with the mask as a
    zero weight instead of an index, so that no value is read on the host. With no confident
    sample in the batch the loss is a zero that still carries a graph.
    """
    mask, targets, weights = pseudo_label_targets(weak_logits, threshold, class_balance)
    fraction = mask.float().mean()
    ce = F.cross_entropy(strong_logits.float(), targets, reduction="none")
    weight = mask.float() if weights is None else weights[targets] * mask
    # A non-finite logit anywhere makes the loss NaN (0 * NaN), so a broken model fails the finiteness check.
    return (weight * ce).sum() / weight.sum().clamp_min(1e-12), fraction
