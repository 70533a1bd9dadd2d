"""The one shape every data set takes: uint8 images `(C, H, W)` plus optional evaluation labels.

Small sets live in memory as one `(N, C, H, W)` uint8 tensor (`TensorImageSet`); large ones
keep a list of files and decode them lazily in DataLoader workers (`FileImageSet`).
Training code never needs to know which: it asks `iterate_batches` for uint8 batches and
augments them on the training device.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.device import fits_on_device


class ImageSet(Dataset):
    """Abstract image set. Subclasses set the attributes below and implement `__getitem__`."""

    name: str
    channels: int
    image_size: int
    labels: Optional[torch.Tensor]  # (N,) int64; evaluation only, never used to train
    class_names: Optional[list[str]]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        """One image, `(C, H, W)` uint8."""
        raise NotImplementedError

    def source(self, index: int) -> str:
        """Where sample `index` came from, for people: a file path or `name[index]`."""
        return f"{self.name}[{index}]"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ImageSet":
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short content hash; checkpoints record it so a resume on other data is refused."""
        raise NotImplementedError

    @property
    def has_labels(self) -> bool:
        return self.labels is not None


class TensorImageSet(ImageSet):
    """All images in memory as one `(N, C, H, W)` uint8 tensor."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        class_names: Optional[list[str]] = None,
        name: str = "images",
        sources: Optional[list[str]] = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, got {images.shape[2]}x{images.shape[3]}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if sources is not None and len(sources) != len(images):
            raise ValueError(f"{len(sources)} sources for {len(images)} images")
        self.images = images.contiguous()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        self.class_names = class_names
        self.name = name
        self.sources = sources
        self.channels = int(images.shape[1])
        self.image_size = int(images.shape[2])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    def source(self, index: int) -> str:
        return self.sources[index] if self.sources is not None else f"{self.name}[{index}]"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "TensorImageSet":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageSet(
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            self.class_names,
            self.name,
            None if self.sources is None else [self.source(int(i)) for i in idx],
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.name}:{tuple(self.images.shape)}".encode())
        stride = max(1, len(self.images) // 512)
        digest.update(self.images[::stride].cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def to(self, device: torch.device) -> "TensorImageSet":
        """The same set with its images tensor on `device` (labels stay where they are: evaluation only)."""
        if self.images.device == torch.device(device):
            return self
        return TensorImageSet(self.images.to(device), self.labels, self.class_names, self.name, self.sources)


class FileImageSet(ImageSet):
    """Images decoded from files on demand by `load(path) -> (C, H, W) uint8` (picklable for workers)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        load: Callable[[str], torch.Tensor],
        image_size: int,
        channels: int,
        labels: Optional[torch.Tensor] = None,
        class_names: Optional[list[str]] = None,
        name: str = "files",
        base: Optional[str | Path] = None,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} files")
        self.paths = [str(p) for p in paths]
        self.base = None if base is None else str(base)  # `source` gives paths relative to it
        self.load = load
        self.image_size = image_size
        self.channels = channels
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        self.class_names = class_names
        self.name = name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(self.paths[index])

    def source(self, index: int) -> str:
        path = self.paths[index]
        if self.base is not None:
            try:
                return Path(path).relative_to(self.base).as_posix()
            except ValueError:
                pass
        return path

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "FileImageSet":
        idx = [int(i) for i in torch.as_tensor(indices, dtype=torch.int64)]
        return FileImageSet(
            [self.paths[i] for i in idx],
            self.load,
            self.image_size,
            self.channels,
            None if self.labels is None else self.labels[idx],
            self.class_names,
            self.name,
            self.base,
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.name}:{self.image_size}:{self.channels}".encode())
        for path in self.paths:
            digest.update(path.encode())
        return digest.hexdigest()[:16]


class _Indexed(Dataset):
    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.images[index]


def on_device(images: ImageSet, device: torch.device, share: float = 0.25) -> ImageSet:
    """`images` with its uint8 tensor moved to `device` once, so that batches are sliced there with no
    copy per step: when it is an in-memory set, `device` is CUDA and the tensor takes at most `share`
    of the free device memory. Otherwise (CPU, files, too large) `images` itself.
    """
    if isinstance(images, TensorImageSet) and fits_on_device(images.images.nbytes, device, share):
        return images.to(device)
    return images


def iterate_batches(
    images: ImageSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    num_workers: int = 0,
    order: Optional[torch.Tensor] = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(indices (B,) int64, images (B, C, H, W) uint8)`: on the CPU, or on the device an
    in-memory set's tensor lives on (`on_device`), where they are sliced without a host sync.

    In-memory sets are sliced directly (no per-sample Python work); file sets decode in
    `num_workers` DataLoader workers. `order` fixes the visiting order (used to resume an
    epoch); otherwise `shuffle` draws one from `generator` (on the CPU, so the order does not
    depend on the device).
    """
    n = len(images)
    if order is None:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    if isinstance(images, TensorImageSet):
        order = order.to(images.images.device)  # indices where the images are: slicing needs no sync
        for start in range(0, stop, batch_size):
            idx = order[start : min(start + batch_size, stop)]
            yield idx, images.images[idx]
        return
    batches = [order[s : min(s + batch_size, stop)].tolist() for s in range(0, stop, batch_size)]
    loader = DataLoader(
        _Indexed(images),
        batch_sampler=batches,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=False,
    )
    for idx, batch in loader:
        yield idx, batch


def seeded_subset_indices(n: int, size: Optional[int], seed: int) -> Optional[np.ndarray]:
    """Sorted indices of a seeded random subset of `size` out of `n`, or None for all."""
    if size is None or size >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))
