"""Embedding whole image sets with a trained model (no augmentation, eval mode)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from trainer.data.base import ImageSet, iterate_batches
from trainer.device import autocast, fits_on_device
from trainer.models.scan_model import ScanModel

FEATURE_KINDS = ("projection", "backbone", "raw")


class _Rows:
    """A result of `n` rows along `dim`, written batch by batch into one preallocated tensor: on the
    device when all of it fits there (a quarter of the free memory at most), so the host waits for
    nothing until the single copy at the end; on the CPU otherwise (then each batch's copy waits)."""

    def __init__(self, n: int, device: torch.device, dim: int = 0) -> None:
        self.n, self.device, self.dim = n, device, dim
        self.out: torch.Tensor | None = None
        self.filled = 0

    def put(self, rows: torch.Tensor) -> None:
        if self.out is None:
            shape = list(rows.shape)
            shape[self.dim] = self.n
            nbytes = rows.element_size() * rows.numel() // max(1, rows.shape[self.dim]) * self.n
            where = self.device if fits_on_device(nbytes, self.device) else torch.device("cpu")
            self.out = torch.empty(shape, dtype=rows.dtype, device=where)
        count = rows.shape[self.dim]
        self.out.narrow(self.dim, self.filled, count).copy_(rows)
        self.filled += count

    def tensor(self) -> torch.Tensor:
        if self.out is None or self.filled != self.n:
            raise RuntimeError(f"{self.filled} of {self.n} rows were written")
        return self.out


def _inputs(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 `(B, C, H, W)` -> float [0, 1] on `device` (channels-last when the model is)."""
    x = batch.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def embed_tensor(
    model: ScanModel,
    images: ImageSet,
    device: torch.device,
    kind: str = "backbone",
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """`(N, D)` float32 features of every image, in data set order, as a tensor: on `device` when
    they fit there (see `_Rows`), else on the CPU.

    kind: "backbone" (`model.embed`, what the exported model returns), "projection"
    (`model.project`, the SimCLR head output the pretext loss was computed on), both
    L2-normalized; or "raw" (`model.features`, what the cluster heads take). The model runs on
    `device` under its autocast; `channels_last` feeds it channels-last inputs (as pretext trained).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    model.eval()
    fn = {"backbone": model.embed, "projection": model.project, "raw": model.features}[kind]
    out = _Rows(len(images), device)
    with tqdm(total=len(images), desc=f"embed {images.name}", unit="img", disable=not progress, leave=False) as bar:
        for _, batch in iterate_batches(images, batch_size, num_workers=num_workers):
            with autocast(device):
                z = fn(_inputs(batch, device, channels_last))
            z = z.float() if kind == "raw" else torch.nn.functional.normalize(z.float(), dim=1)  # exact unit norm in fp32
            out.put(z)
            bar.update(len(batch))
    return out.tensor()


def embed_images(
    model: ScanModel,
    images: ImageSet,
    device: torch.device,
    kind: str = "backbone",
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """`embed_tensor` as a `(N, D)` float32 array."""
    features = embed_tensor(model, images, device, kind, batch_size, num_workers, progress, channels_last)
    return features.cpu().numpy()


@torch.no_grad()
def predict_images(
    model: ScanModel,
    images: ImageSet,
    device: torch.device,
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: `(probs (H, N, C) float32 per cluster head, embeddings (N, D) float32 L2-normalized)`.

    Both are collected on `device` when they fit and copied to the host once at the end.
    """
    model.eval()
    probs, embeddings = _Rows(len(images), device, dim=1), _Rows(len(images), device)
    with tqdm(total=len(images), desc=f"predict {images.name}", unit="img", disable=not progress, leave=False) as bar:
        for _, batch in iterate_batches(images, batch_size, num_workers=num_workers):
            with autocast(device):
                features = model.features(_inputs(batch, device, channels_last))
                logits = model.cluster_logits_from_features(features)
            probs.put(torch.softmax(logits.float(), dim=-1))
            embeddings.put(torch.nn.functional.normalize(features.float(), dim=1))
            bar.update(len(batch))
    return probs.tensor().cpu().numpy(), embeddings.tensor().cpu().numpy()
