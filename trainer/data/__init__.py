"""Data sets: one `load_dataset(cfg, split)` entry point over the readers in this package.

Every reader returns an `ImageSet` of uint8 `(C, H, W)` images (see `trainer.data.base`).
`load_dataset` then brings in-memory sets to the configured channel count and size and applies
the configured seeded subset. Normalisation statistics come from `dataset_stats`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from trainer.config import DataConfig
from trainer.data.base import FileImageSet, ImageSet, TensorImageSet, iterate_batches, seeded_subset_indices
from trainer.data.cifar import load_cifar10, load_cifar100_20
from trainer.data.fashion_mnist import load_fashion_mnist
from trainer.data.folder import SkippedImagesWarning, load_image_folder
from trainer.data.imagenet import load_imagenet_subset
from trainer.data.preprocess import (
    ImageDecodeError,
    convert_channels,
    decode_image,
    load_image_file,
    resize_tensor_images,
    to_uint8_chw,
)
from trainer.data.stl10 import load_stl10
from trainer.errors import ConfigError, DataError

__all__ = [
    "FileImageSet",
    "ImageDecodeError",
    "ImageSet",
    "SkippedImagesWarning",
    "TensorImageSet",
    "convert_channels",
    "dataset_stats",
    "decode_image",
    "iterate_batches",
    "load_dataset",
    "load_image_file",
    "native_channels",
    "native_size",
    "resize_tensor_images",
    "resolved_channels",
    "resolved_image_size",
    "seeded_subset_indices",
    "to_uint8_chw",
]

_NATIVE_SIZE: dict[str, Optional[int]] = {
    "fashion_mnist": 28,
    "cifar10": 32,
    "cifar100_20": 32,
    "stl10": 96,
    "folder": None,
    "imagenet": None,
}
_NATIVE_CHANNELS = {"fashion_mnist": 1}

_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100_20": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": _IMAGENET_STATS,
    "imagenet": _IMAGENET_STATS,
    "folder": _IMAGENET_STATS,
}


def native_size(cfg: DataConfig) -> Optional[int]:
    """The side of the images as the data set stores them (28, 32, 96); None for folder/imagenet."""
    return _NATIVE_SIZE[cfg.name]


def native_channels(cfg: DataConfig) -> int:
    """1 for Fashion-MNIST, 3 for every other data set (folders are decoded to RGB by default)."""
    return _NATIVE_CHANNELS.get(cfg.name, 3)


def resolved_image_size(cfg: DataConfig) -> int:
    """The side of the images `load_dataset` returns: `cfg.image_size`, else the native size.

    Raises DataError for folder/imagenet without `data.image_size`.
    """
    if cfg.image_size is not None:
        return cfg.image_size
    size = native_size(cfg)
    if size is None:
        raise DataError(
            f"the {cfg.name!r} data set has no native image size; choose one with --set data.image_size=N (e.g. 96)"
        )
    return size


def resolved_channels(cfg: DataConfig) -> int:
    """The channel count `load_dataset` returns: `cfg.channels`, else the native count."""
    return cfg.channels if cfg.channels is not None else native_channels(cfg)


def _adapt_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(float(v) for v in values)
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if channels == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"cannot adapt {len(values)} statistics to {channels} channels")


def dataset_stats(cfg: DataConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel `(mean, std)` in 0..1 units for normalising `channels`-channel images.

    `cfg.mean`/`cfg.std` when set (one value is repeated; otherwise it must have `channels`
    values), else the data set's usual statistics: a single grey value is repeated for RGB
    and RGB statistics are averaged for grey.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if cfg.mean is not None and cfg.std is not None:
        for key, values in (("mean", cfg.mean), ("std", cfg.std)):
            if len(values) not in (1, channels):
                allowed = "1 value" if channels == 1 else f"1 or {channels} values"
                raise ConfigError(f"data.{key}: {len(values)} values for {channels}-channel images; give {allowed}")
        return _adapt_stats(cfg.mean, channels), _adapt_stats(cfg.std, channels)
    mean, std = _STATS[cfg.name]
    return _adapt_stats(mean, channels), _adapt_stats(std, channels)


def _load_raw(cfg: DataConfig, split: str, size: Optional[int], channels: int) -> Optional[ImageSet]:
    if cfg.name == "fashion_mnist":
        return load_fashion_mnist(cfg.root, split, cfg.download)
    if cfg.name == "cifar10":
        return load_cifar10(cfg.root, split, cfg.download)
    if cfg.name == "cifar100_20":
        return load_cifar100_20(cfg.root, split, cfg.download)
    if cfg.name == "stl10":
        return load_stl10(cfg.root, split, cfg.download, include_unlabeled=split == "train" and cfg.stl10_unlabeled)
    assert size is not None
    if cfg.name == "folder":
        root = cfg.root if split == "train" else cfg.test_root
        if root is None:
            return None
        return load_image_folder(root, size, channels, cfg.in_memory, cfg.in_memory_max_gb, name="folder")
    if cfg.name == "imagenet":
        if split == "train":
            root = cfg.root
        elif cfg.test_root is not None:
            root = cfg.test_root
        else:
            root = cfg.root
            if not (Path(root).expanduser() / "val").is_dir():
                return None
        return load_imagenet_subset(
            root,
            "train" if split == "train" else "val",
            cfg.class_list,
            size,
            channels,
            cfg.in_memory,
            cfg.in_memory_max_gb,
        )
    raise DataError(f"unknown data set {cfg.name!r}")  # pragma: no cover - DataConfig validates names


@functools.lru_cache(maxsize=4)
def load_dataset(cfg: DataConfig, split: str, seed: int = 0) -> Optional[ImageSet]:
    """Load the `split` ('train' or 'test') of the configured data set, ready for training.

    Returns images of `resolved_channels(cfg)` channels and side `resolved_image_size(cfg)`,
    restricted to a seeded subset when `cfg.train_subset`/`cfg.test_subset` is set (the same
    seed always picks the same images). Returns None for a split that does not exist: the
    test split of a folder without `data.test_root`, or of an ImageNet subset without a `val`
    folder (test images come from `<test_root or root>/val`).

    The subset is taken before channel conversion and resizing; both act per image, so the
    result is the same as converting first, only cheaper.

    Results are memoised per process (the stages of one run share one decoded copy of a
    folder instead of decoding it four times); treat the returned set as read-only, and
    call `load_dataset.cache_clear()` after changing files on disk.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = resolved_image_size(cfg)
    channels = resolved_channels(cfg)
    images = _load_raw(cfg, split, size, channels)
    if images is None:
        return None
    wanted = cfg.train_subset if split == "train" else cfg.test_subset
    indices = seeded_subset_indices(len(images), wanted, seed)
    if indices is not None:
        images = images.subset(indices)
    if isinstance(images, TensorImageSet):
        pixels = images.images
        if images.channels != channels:
            pixels = convert_channels(pixels, channels)
        if images.image_size != size:
            pixels = resize_tensor_images(pixels, size)
        if pixels is not images.images:
            images = TensorImageSet(pixels, images.labels, images.class_names, images.name, images.sources)
    return images
