"""The one model every stage trains: input normalization -> backbone -> optional projection / cluster heads.

Inputs are float images in [0, 1], shape ``(N, C, H, W)``; the model normalizes them itself with the
``mean``/``std`` buffers, so exported models and checkpoints carry their preprocessing, and ``.to()``
moves it along with the weights.

* pretext (SimCLR): ``project(x)`` -> unit-norm projections; ``embed(x)`` -> unit-norm features;
* SCAN / self-labeling: ``add_cluster_heads(K, H)``, then ``cluster_logits(x)`` -> ``(H, N, K)``.

``model_args()`` is a plain dict that ``ScanModel.from_args`` turns back into the same architecture;
checkpoints store it next to the state dict so a model is rebuilt from the file alone.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig
from trainer.errors import CheckpointError, ConfigError
from trainer.models import build_backbone, load_backbone_weights
from trainer.models.heads import ClusterHeads, ProjectionHead


def _channel_stats(values: Sequence[float], in_channels: int, name: str) -> torch.Tensor:
    stats = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()]
    if len(stats) == 1 and in_channels > 1:
        stats = stats * in_channels
    if len(stats) != in_channels:
        raise ConfigError(f"data.{name}: expected {in_channels} values (one per input channel), got {len(stats)}")
    return torch.tensor(stats, dtype=torch.float32).view(1, in_channels, 1, 1)


class ScanModel(nn.Module):
    """Normalization + backbone + optional ``ProjectionHead`` + optional ``ClusterHeads``."""

    def __init__(
        self,
        backbone: str,
        in_channels: int,
        width: int,
        mean: Sequence[float],
        std: Sequence[float],
        projection_dim: Optional[int] = None,
        projection_hidden: Optional[int] = None,
        num_clusters: Optional[int] = None,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.in_channels = int(in_channels)
        self.width = int(width)
        mean_t = _channel_stats(mean, self.in_channels, "mean")
        std_t = _channel_stats(std, self.in_channels, "std")
        if bool((std_t <= 0).any()):
            raise ConfigError(f"data.std: every value must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        self.backbone = build_backbone(backbone, self.in_channels, self.width)
        self.feature_dim: int = int(self.backbone.out_dim)
        self.projection_head: Optional[ProjectionHead] = None
        if projection_dim is not None:
            hidden = projection_hidden if projection_hidden is not None else self.feature_dim
            self.projection_head = ProjectionHead(self.feature_dim, hidden, projection_dim)
        self.cluster_heads: Optional[ClusterHeads] = None
        # what load_backbone_weights reported when from_config loaded pretrained weights
        self.pretrained_report: Optional[dict[str, list[str]]] = None
        if num_clusters is not None:
            self.cluster_heads = ClusterHeads(self.feature_dim, num_clusters, num_heads)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        model_cfg: ModelConfig,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_clusters: Optional[int] = None,
        num_heads: int = 1,
    ) -> "ScanModel":
        """Build from the ``model`` section; loads ``model_cfg.pretrained`` backbone weights when set
        (the load report is kept in ``pretrained_report``)."""
        model = cls(
            backbone=model_cfg.backbone,
            in_channels=in_channels,
            width=model_cfg.width,
            mean=mean,
            std=std,
            projection_dim=model_cfg.projection_dim,
            projection_hidden=model_cfg.projection_hidden,
            num_clusters=num_clusters,
            num_heads=num_heads,
        )
        if model_cfg.pretrained:
            model.pretrained_report = load_backbone_weights(model.backbone, model_cfg.pretrained)
        return model

    def model_args(self) -> dict[str, Any]:
        """Plain data (ints, floats, strings, lists, None) that ``from_args`` rebuilds this architecture from."""
        head = self.projection_head
        clusters = self.cluster_heads
        return {
            "backbone": self.backbone_name,
            "width": self.width,
            "in_channels": self.in_channels,
            "projection_dim": head.out_dim if head is not None else None,
            "projection_hidden": head.hidden_dim if head is not None else None,
            "mean": [float(v) for v in self.mean.flatten().tolist()],
            "std": [float(v) for v in self.std.flatten().tolist()],
            "num_clusters": clusters.num_clusters if clusters is not None else None,
            "num_heads": clusters.num_heads if clusters is not None else 1,
        }

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ScanModel":
        """Rebuild the architecture described by ``model_args()`` (weights are loaded separately)."""
        if not isinstance(args, dict):
            raise CheckpointError(f"model_args: expected a mapping, got {type(args).__name__}")
        try:
            return cls(**args)
        except TypeError as exc:
            raise CheckpointError(f"model_args do not describe a ScanModel: {exc}") from exc

    def add_cluster_heads(self, num_clusters: int, num_heads: int = 1) -> ClusterHeads:
        """Attach fresh cluster heads (replacing any), on the backbone's device and dtype; returns them."""
        heads = ClusterHeads(self.feature_dim, num_clusters, num_heads)
        reference = next(self.backbone.parameters(), None)
        if reference is not None:
            heads = heads.to(device=reference.device, dtype=reference.dtype)
        self.cluster_heads = heads
        return heads

    def keep_head(self, index: int) -> None:
        """Keep only cluster head `index` (as head 0), e.g. the one SCAN selected."""
        if self.cluster_heads is None:
            raise RuntimeError("this ScanModel has no cluster heads")
        if not 0 <= index < self.cluster_heads.num_heads:
            raise ValueError(f"head {index} does not exist; the model has {self.cluster_heads.num_heads}")
        chosen = self.cluster_heads.heads[index]
        kept = ClusterHeads(self.feature_dim, self.cluster_heads.num_clusters, 1)
        kept.heads[0].load_state_dict(chosen.state_dict())
        self.cluster_heads = kept.to(device=chosen.weight.device, dtype=chosen.weight.dtype)

    def drop_projection_head(self) -> None:
        """Remove the SimCLR projection head (SCAN clustering works on backbone features)."""
        self.projection_head = None

    @property
    def has_projection_head(self) -> bool:
        return self.projection_head is not None

    @property
    def has_cluster_heads(self) -> bool:
        return self.cluster_heads is not None

    # ------------------------------------------------------------------ computation

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> standardized backbone input."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ScanModel expects images (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw backbone features ``(N, feature_dim)`` of [0, 1] images."""
        return self.backbone(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized backbone features ``(N, feature_dim)``."""
        return F.normalize(self.features(x), dim=1)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalized projection ``(N, projection_dim)`` of backbone features."""
        if self.projection_head is None:
            raise RuntimeError("this ScanModel has no projection head (it was dropped or never built)")
        return F.normalize(self.projection_head(features), dim=1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized projections ``(N, projection_dim)`` of [0, 1] images."""
        if self.projection_head is None:
            raise RuntimeError("this ScanModel has no projection head (it was dropped or never built)")
        return self.project_features(self.features(x))

    def cluster_logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(num_heads, N, num_clusters)`` of backbone features."""
        if self.cluster_heads is None:
            raise RuntimeError("this ScanModel has no cluster heads; call add_cluster_heads first")
        return self.cluster_heads(features)

    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(num_heads, N, num_clusters)`` of [0, 1] images."""
        if self.cluster_heads is None:
            raise RuntimeError("this ScanModel has no cluster heads; call add_cluster_heads first")
        return self.cluster_heads(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``cluster_logits(x)`` when cluster heads exist, else ``project(x)``."""
        if self.cluster_heads is not None:
            return self.cluster_logits(x)
        return self.project(x)
