"""STL-10 from the official binary release (`root/stl10_binary/`, root defaults to `~/.cache/scan`).

Files: `train_X.bin`/`train_y.bin` (5000), `test_X.bin`/`test_y.bin` (8000), `unlabeled_X.bin`
(100000), `class_names.txt`. An X file is raw uint8, 27648 bytes per image: the red, green and
blue 96x96 planes one after the other, each stored COLUMN-major (the format was written from
MATLAB), so pixel `(channel c, row y, column x)` of image `n` is at byte
`n * 27648 + c * 9216 + x * 96 + y`. A y file holds one uint8 label 1..10 per image; labels are
returned as 0..9.

With `include_unlabeled` the training split is the 5000 labelled images followed by the 100000
unlabelled ones, whose labels are -1: evaluation code must ignore samples labelled -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer.data.base import TensorImageSet
from trainer.data.cifar import default_cache_root, download_and_extract
from trainer.errors import DataError

__all__ = ["IMAGE_BYTES", "UNLABELED", "load_stl10"]

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
STL10_DIR = "stl10_binary"
IMAGE_SHAPE = (3, 96, 96)
IMAGE_BYTES = 3 * 96 * 96  # 27648
UNLABELED = -1
_CHUNK = 2048  # images converted at a time (about 57 MB)


def _count_images(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"{path}: size {size} bytes is not a positive multiple of {IMAGE_BYTES} (3x96x96 images)")
    return size // IMAGE_BYTES


def _read_images_into(path: Path, out: torch.Tensor) -> None:
    """Fill `out` `(N, 3, 96, 96)` uint8 from the column-major X file `path`, a chunk at a time."""
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(len(out), 3, 96, 96))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for start in range(0, len(out), _CHUNK):
        block = np.ascontiguousarray(raw[start : start + _CHUNK].transpose(0, 1, 3, 2))
        out[start : start + len(block)] = torch.from_numpy(block)
    del raw


def _read_labels(path: Path, count: int, x_path: Path) -> torch.Tensor:
    try:
        labels = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(labels) != count:
        raise DataError(f"{path} holds {len(labels)} labels but {x_path} holds {count} images")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: labels must be 1..10, found {int(labels.min())}..{int(labels.max())}")
    return torch.from_numpy(labels.astype(np.int64) - 1)


def _read_class_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(names) != 10:
        raise DataError(f"{path}: expected 10 class names, found {len(names)}")
    return names


def load_stl10(root: Optional[str], split: str, download: bool, include_unlabeled: bool = False) -> TensorImageSet:
    """STL-10: images `(N, 3, 96, 96)` uint8 with labels `(N,)` int64 in 0..9 (-1: unlabelled).

    N is 5000 for train (105000 with `include_unlabeled`) and 8000 for test.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base_root = Path(root).expanduser() if root else default_cache_root()
    base = base_root / STL10_DIR
    x_name, y_name = f"{split}_X.bin", f"{split}_y.bin"
    needed = [x_name, y_name, "class_names.txt"]
    if split == "train" and include_unlabeled:
        needed.append("unlabeled_X.bin")
    missing = [name for name in needed if not (base / name).is_file()]
    if missing:
        if not download:
            raise DataError(
                f"STL-10 not found: missing {base / missing[0]}. Put the extracted '{STL10_DIR}' "
                f"folder under {base_root} (or set data.root), or allow data.download=true"
            )
        try:
            download_and_extract(STL10_URL, STL10_MD5, base_root, STL10_DIR)
        except DataError as exc:
            raise DataError(
                f"STL-10 not found at {base / missing[0]} and the download failed ({exc}). "
                f"Download {STL10_URL} yourself and extract it into {base_root} (or set data.root)"
            ) from exc
        still = [name for name in needed if not (base / name).is_file()]
        if still:
            raise DataError(f"STL-10: {base / still[0]} is missing even after downloading {STL10_URL}")

    names = _read_class_names(base / "class_names.txt")
    x_path = base / x_name
    n_labeled = _count_images(x_path)
    labels = _read_labels(base / y_name, n_labeled, x_path)
    n_unlabeled = 0
    if split == "train" and include_unlabeled:
        n_unlabeled = _count_images(base / "unlabeled_X.bin")
    images = torch.empty((n_labeled + n_unlabeled, *IMAGE_SHAPE), dtype=torch.uint8)
    _read_images_into(x_path, images[:n_labeled])
    if n_unlabeled:
        _read_images_into(base / "unlabeled_X.bin", images[n_labeled:])
        labels = torch.cat([labels, torch.full((n_unlabeled,), UNLABELED, dtype=torch.int64)])
    return TensorImageSet(images, labels, names, "stl10")
