"""Backbones, heads and the SCAN model; building a backbone by name and loading pretrained weights into it.

>>> backbone = build_backbone("resnet18_cifar", in_channels=3, width=64)
>>> report = load_backbone_weights(backbone, "simclr_cifar-10.pth.tar")  # doctest: +SKIP
>>> report["missing"], report["unexpected"], report["dropped"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Union

import torch
from torch import nn

from trainer.errors import CheckpointError, ConfigError
from trainer.models.convnet import ConvNet, convnet
from trainer.models.heads import ClusterHeads, ProjectionHead
from trainer.models.resnet import ResNet, resnet18, resnet50

# name -> builder(in_channels, width, **options) -> module with an `out_dim` attribute
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": partial(resnet18, stem="cifar"),
    "resnet18": partial(resnet18, stem="imagenet"),
    "resnet50": partial(resnet50, stem="imagenet"),
    "convnet": convnet,
}


def build_backbone(name: str, in_channels: int, width: int, **options: Any) -> nn.Module:
    """Build a registered backbone. Options (e.g. ``zero_init_residual=True``) go to its builder."""
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        ) from None
    return builder(in_channels=in_channels, width=width, **options)


# Where checkpoints keep the weights, wrappers whose names prefix the keys, and heads that are not backbone.
_CONTAINER_KEYS = ("state_dict", "model", "backbone")
_STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_DROP_PREFIXES = (
    "fc.",
    "contrastive_head.",
    "cluster_head.",
    "cluster_heads.",
    "projection_head.",
    "projector.",
    "head.",
)
# SCAN's CIFAR ResNet calls the projection shortcut `shortcut`, torchvision calls it `downsample`.
_RENAMES = ((".shortcut.", ".downsample."),)

StateDictOrPath = Union[str, "os.PathLike[str]", Mapping]


def _read_checkpoint(path: Union[str, os.PathLike]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"pretrained weights {os.fspath(path)!r}: no such file") from None
    except Exception as exc:  # unpickling refused (not weights only), truncated file, not a checkpoint...
        raise CheckpointError(f"pretrained weights {os.fspath(path)!r}: cannot read as weights: {exc}") from exc


def _unwrap(checkpoint: Any, source: str) -> Mapping:
    """Descend into 'state_dict' / 'model' / 'backbone' entries until a mapping of tensors remains."""
    node = checkpoint
    for _ in range(4):  # nesting deeper than this is not a checkpoint layout we know
        if not isinstance(node, Mapping):
            break
        inner = next((node[k] for k in _CONTAINER_KEYS if isinstance(node.get(k), Mapping)), None)
        if inner is None:
            break
        node = inner
    if not isinstance(node, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, got {type(node).__name__}")
    return node


def _clean_key(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def load_backbone_weights(backbone: nn.Module, state_dict_or_path: StateDictOrPath) -> dict[str, list[str]]:
    """Load backbone weights from a state dict or a checkpoint file, tolerating the usual layouts.

    Accepts a plain state dict or a checkpoint dict holding one under ``state_dict``, ``model`` or
    ``backbone``; strips ``module.``/``backbone.``/``encoder.``/``model.`` prefixes; drops classifier and
    head weights (``fc.*``, ``contrastive_head.*``, ``cluster_head.*``, ...). Loads non-strictly and returns
    ``{"missing": [...], "unexpected": [...], "dropped": [...]}`` with keys as named after cleaning.

    Raises CheckpointError when no key matches the backbone, or when a matching key has another shape.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = f"pretrained weights {os.fspath(state_dict_or_path)!r}"
        checkpoint = _read_checkpoint(state_dict_or_path)
    else:
        source = "pretrained weights"
        checkpoint = state_dict_or_path
    raw = _unwrap(checkpoint, source)

    cleaned: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        name = _clean_key(key)
        if name.startswith(_DROP_PREFIXES):
            dropped.append(name)
        else:
            cleaned[name] = value

    own = backbone.state_dict()
    matched = [k for k in cleaned if k in own]
    if not matched:
        sample = ", ".join(list(cleaned)[:5]) or "(no tensors)"
        raise CheckpointError(
            f"{source}: no key matches the {type(backbone).__name__} backbone "
            f"(found e.g. {sample}; expected e.g. {', '.join(list(own)[:3])})"
        )
    for key in matched:
        if cleaned[key].shape != own[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(cleaned[key].shape)} in the checkpoint "
                f"but {tuple(own[key].shape)} in the model (wrong backbone, width or input channels?)"
            )
    backbone.load_state_dict({k: cleaned[k] for k in matched}, strict=False)
    return {
        "missing": [k for k in own if k not in cleaned],
        "unexpected": [k for k in cleaned if k not in own],
        "dropped": dropped,
    }


from trainer.models.scan_model import ScanModel  # noqa: E402  (needs build_backbone defined above)

__all__ = [
    "BACKBONES",
    "ClusterHeads",
    "ConvNet",
    "ProjectionHead",
    "ResNet",
    "ScanModel",
    "build_backbone",
    "load_backbone_weights",
]
