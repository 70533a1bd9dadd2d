"""Fashion-MNIST from the original idx files (gzip-compressed or not).

Files: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
`t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`.

Where they are looked for: `root` when given (only there); otherwise
`/usr/share/datasets/fashion-mnist` (Debian package `dataset-fashion-mnist`), then
`~/.cache/scan/fashion-mnist`. When they are missing and `download` is true the four files
are downloaded (atomically) into `root`, or into the cache folder when no root was given.

idx format: a big-endian uint32 magic number `0x000008NN` (0x08 = unsigned bytes, NN = number
of dimensions), then NN big-endian uint32 sizes, then the data. Images are `0x00000803`
`(N, rows, cols)`, labels `0x00000801` `(N,)`.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer.data.base import TensorImageSet
from trainer.data.cifar import default_cache_root, download_file
from trainer.errors import DataError

__all__ = ["CLASS_NAMES", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "load_fashion_mnist", "read_idx"]

log = logging.getLogger(__name__)

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> Path:
    """`~/.cache/scan/fashion-mnist`."""
    return default_cache_root() / "fashion-mnist"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file (gzip when the name ends in .gz) whose magic number must be `magic`.

    Returns a uint8 array shaped by the header dimensions. DataError naming `path` for a bad
    magic number, a truncated file or trailing bytes.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fp:
                data = fp.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"missing file {path}") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOFError: truncated gzip
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header < expected:
        raise DataError(
            f"{path}: truncated idx file: {len(data) - header} data bytes, dimensions {dims} need {expected}"
        )
    if len(data) - header > expected:
        raise DataError(f"{path}: {len(data) - header - expected} unexpected bytes after the data of dimensions {dims}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def _find(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_split(folder: Path, split: str) -> Optional[tuple[Path, Path]]:
    images, labels = (_find(folder, stem) for stem in FILE_STEMS[split])
    return (images, labels) if images is not None and labels is not None else None


def _download_all(target: Path) -> None:
    errors = []
    for stems in FILE_STEMS.values():
        for stem in stems:
            if _find(target, stem) is not None:
                continue
            for base in DOWNLOAD_URLS:
                try:
                    download_file(base + stem + ".gz", target / (stem + ".gz"))
                    break
                except DataError as exc:
                    errors.append(str(exc))
            else:
                raise DataError("; ".join(errors[-len(DOWNLOAD_URLS):]))


def load_fashion_mnist(root: Optional[str], split: str, download: bool) -> TensorImageSet:
    """Fashion-MNIST: images `(N, 1, 28, 28)` uint8 (N = 60000 train / 10000 test), labels 0..9."""
    if split not in FILE_STEMS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folders = [Path(root).expanduser()] if root else [SYSTEM_DIR, cache_dir()]
    found = next((f for f in (_find_split(d, split) for d in folders) if f is not None), None)
    if found is None:
        searched = ", ".join(str(d) for d in folders)
        hint = (
            "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
            "or put the four idx .gz files in a folder and pass --set data.root=PATH"
        )
        if not download:
            raise DataError(f"Fashion-MNIST {split} files not found in {searched}; {hint}")
        target = folders[0] if root else cache_dir()
        log.info("downloading Fashion-MNIST to %s", target)
        try:
            _download_all(target)
        except DataError as exc:
            raise DataError(
                f"Fashion-MNIST {split} files not found in {searched} and the download into {target} "
                f"failed ({exc}); {hint}"
            ) from exc
        found = _find_split(target, split)
        if found is None:  # pragma: no cover - download_file either succeeds or raises
            raise DataError(f"Fashion-MNIST {split} files still missing in {target} after downloading; {hint}")
    images_path, labels_path = found
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1] != images.shape[2]:
        raise DataError(f"{images_path}: images must be square, got {images.shape[1]}x{images.shape[2]}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{len(CLASS_NAMES) - 1}")
    return TensorImageSet(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(CLASS_NAMES),
        "fashion_mnist",
    )
