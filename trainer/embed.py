"""Embedding whole image sets with a trained model (no augmentation, eval mode)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from trainer.data.base import ImageSet, iterate_batches
from trainer.device import autocast
from trainer.models.scan_model import ScanModel

FEATURE_KINDS = ("projection", "backbone", "raw")


@torch.no_grad()
def embed_images(
    model: ScanModel,
    images: ImageSet,
    device: torch.device,
    kind: str = "backbone",
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """`(N, D)` float32 features of every image, in data set order.

    kind: "backbone" (`model.embed`, what the exported model returns), "projection"
    (`model.project`, the SimCLR head output the pretext loss was computed on), both
    L2-normalized; or "raw" (`model.features`, what the cluster heads take).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    model.eval()
    fn = {"backbone": model.embed, "projection": model.project, "raw": model.features}[kind]
    out: list[np.ndarray] = []
    with tqdm(total=len(images), desc=f"embed {images.name}", unit="img", disable=not progress, leave=False) as bar:
        for _, batch in iterate_batches(images, batch_size, num_workers=num_workers):
            x = batch.to(device, non_blocking=True).float().div_(255)
            with autocast(device):
                z = fn(x)
            z = z.float() if kind == "raw" else torch.nn.functional.normalize(z.float(), dim=1)  # exact unit norm in fp32
            out.append(z.cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.no_grad()
def predict_images(
    model: ScanModel,
    images: ImageSet,
    device: torch.device,
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: `(probs (H, N, C) float32 per cluster head, embeddings (N, D) float32 L2-normalized)`."""
    model.eval()
    probs: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    with tqdm(total=len(images), desc=f"predict {images.name}", unit="img", disable=not progress, leave=False) as bar:
        for _, batch in iterate_batches(images, batch_size, num_workers=num_workers):
            x = batch.to(device, non_blocking=True).float().div_(255)
            with autocast(device):
                features = model.features(x)
                logits = model.cluster_logits_from_features(features)
            probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
            embeddings.append(torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(probs, axis=1), np.concatenate(embeddings)
