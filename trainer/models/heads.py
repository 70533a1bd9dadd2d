"""Heads on top of backbone features: the SimCLR projection MLP and SCAN's clustering heads."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLR projection MLP: Linear -> BatchNorm -> ReLU -> Linear. ``(N, in_dim) -> (N, out_dim)``.

    The output is not normalized; callers that need unit vectors normalize it.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"ProjectionHead dimensions must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)  # the BN right after makes a bias redundant
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.bn1(self.fc1(features))))


class ClusterHeads(nn.Module):
    """``num_heads`` independent linear classifiers over the same features (SCAN trains several and keeps
    the one with the lowest loss). ``forward((N, in_dim)) -> logits (num_heads, N, num_clusters)``."""

    def __init__(self, in_dim: int, num_clusters: int, num_heads: int = 1) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"ClusterHeads in_dim must be positive, got {in_dim}")
        if num_clusters < 2:
            raise ValueError(f"ClusterHeads needs at least 2 clusters, got {num_clusters}")
        if num_heads < 1:
            raise ValueError(f"ClusterHeads needs at least 1 head, got {num_heads}")
        self.in_dim, self.num_clusters, self.num_heads = in_dim, num_clusters, num_heads
        # each Linear draws its own initial weights, so the heads start (and train) independently
        self.heads = nn.ModuleList(nn.Linear(in_dim, num_clusters) for _ in range(num_heads))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.heads])
