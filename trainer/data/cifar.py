"""CIFAR-10 and CIFAR-100 (20 superclasses) from the official "python version" pickles.

Layout under `root` (default `~/.cache/scan`):

* `cifar-10-batches-py/`: `data_batch_1` .. `data_batch_5`, `test_batch`, `batches.meta`
* `cifar-100-python/`: `train`, `test`, `meta`

Each batch is a pickled dict with bytes keys: `b'data'` is an `(N, 3072)` uint8 array whose rows
hold the red, green and blue 32x32 planes one after the other, each plane row-major, so a row
reshapes to `(3, 32, 32)` directly.

The pickles are read with `RestrictedUnpickler`, which resolves only the globals numpy needs to
rebuild an array (see `ALLOWED_GLOBALS`); any other global (e.g. `os.system`) is refused, so a
tampered file cannot run code. Containers (dict, list, tuple), numbers and strings need no
globals at all.

This module also holds the small download helpers the other readers share.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

from trainer.atomic import file_digest
from trainer.data.base import TensorImageSet
from trainer.errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

__all__ = [
    "ALLOWED_GLOBALS",
    "CIFAR10_CLASS_NAMES",
    "RestrictedUnpickler",
    "default_cache_root",
    "download_and_extract",
    "download_file",
    "load_cifar10",
    "load_cifar100_20",
    "restricted_load",
]

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_DIR = "cifar-100-python"

CIFAR10_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

DOWNLOAD_TIMEOUT_S = 15.0

# Globals a CIFAR pickle may name. Python 2 pickles (the official files) and Python 3 protocol
# 2-4 pickles rebuild arrays with `_reconstruct(ndarray, shape, dtype)` + `__setstate__`;
# protocol 5 uses `numeric._frombuffer`; Python 3 protocol <= 2 writes `bytes` as
# `_codecs.encode(str, 'latin1')`. Both spellings of numpy's private module are accepted
# (files written under numpy 1.x say `numpy.core`, numpy 2.x says `numpy._core`).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves `ALLOWED_GLOBALS` (numpy array reconstruction)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def restricted_load(path: Path) -> Any:
    """Unpickle `path` with `encoding='bytes'` through `RestrictedUnpickler`; DataError naming it."""
    try:
        with open(path, "rb") as fp:
            return RestrictedUnpickler(fp, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise DataError(f"missing file {path}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # UnpicklingError, EOFError (truncated), ValueError, ...
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc


# ------------------------------------------------------------------ downloads (shared)


def default_cache_root() -> Path:
    """`~/.cache/scan`: where standard data sets go when `data.root` is not set."""
    return Path("~/.cache/scan").expanduser()


def download_file(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S, md5: Optional[str] = None) -> Path:
    """Download `url` to `dest` atomically (temporary file in the same folder, then rename).

    Raises DataError naming the URL when the transfer fails or the MD5 does not match; no
    partial file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.md5()
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    digest.update(block)
                    out.write(block)
        except Exception as exc:
            raise DataError(f"cannot download {url}: {exc}") from exc
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"download of {url} is corrupt: MD5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return dest


def _file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        for member in tar.getmembers():  # pragma: no cover - Pythons without extraction filters
            target = (dest / member.name).resolve()
            if member.issym() or member.islnk() or not str(target).startswith(str(dest.resolve())):
                raise DataError(f"{archive}: refusing unsafe archive member {member.name!r}")
        tar.extractall(dest)  # pragma: no cover


def download_and_extract(url: str, md5: Optional[str], root: Path, folder: str) -> Path:
    """Download a tar archive into `root` and extract its top folder `folder` to `root/folder`.

    The archive is extracted into a temporary folder inside `root` and moved into place, so an
    interrupted run never leaves a half-extracted `root/folder`; files already present there
    are kept. The archive itself is kept next to it. Returns `root/folder`.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root}: {exc.strerror or exc}") from exc
    archive = root / Path(urlparse(url).path).name
    if not archive.exists() or (md5 is not None and _file_md5(archive) != md5):
        log.info("downloading %s to %s", url, archive)
        download_file(url, archive, md5=md5)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            _safe_extract(archive, staging)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot extract {archive}: {exc}") from exc
        source = staging / folder
        if not source.is_dir():
            raise DataError(f"{archive} does not contain the folder {folder}/")
        target = root / folder
        if not target.exists():
            os.replace(source, target)
        else:
            for item in source.iterdir():
                if not (target / item.name).exists():
                    os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / folder


# ------------------------------------------------------------------ CIFAR


def _resolve_root(root: Optional[str]) -> Path:
    return Path(root).expanduser() if root else default_cache_root()


def _ensure_files(
    base: Path, names: Sequence[str], download: bool, url: str, md5: str, root: Path, what: str
) -> None:
    missing = [name for name in names if not (base / name).is_file()]
    if not missing:
        return
    where = base / missing[0]
    if not download:
        raise DataError(
            f"{what} not found: missing {where}. Put the extracted '{base.name}' folder under "
            f"{root} (or set data.root), or allow data.download=true"
        )
    try:
        download_and_extract(url, md5, root, base.name)
    except DataError as exc:
        raise DataError(
            f"{what} not found at {where} and the download failed ({exc}). Download {url} "
            f"yourself and extract it into {root} (or set data.root)"
        ) from exc
    still = [name for name in names if not (base / name).is_file()]
    if still:
        raise DataError(f"{what}: {base / still[0]} is missing even after downloading {url}")


def _batch_arrays(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch: `(N, 3, 32, 32)` uint8 images and `(N,)` int64 labels."""
    batch = restricted_load(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with b'data' and {label_key!r}, got {keys}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        kind = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: b'data' must be an (N, 3072) uint8 array, got {shape} {kind}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _label_names(path: Path, key: bytes, expected: int) -> list[str]:
    meta = restricted_load(path)
    if not isinstance(meta, dict) or key not in meta:
        raise DataError(f"{path}: no {key!r} entry")
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]
    if len(names) != expected:
        raise DataError(f"{path}: {len(names)} class names, expected {expected}")
    return names


def _to_set(images: np.ndarray, labels: np.ndarray, names: list[str], name: str, source: Path) -> TensorImageSet:
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"{source}: labels outside 0..{len(names) - 1}")
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:
        images = images.copy()
    return TensorImageSet(torch.from_numpy(images), torch.from_numpy(labels), names, name)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_cifar10(root: Optional[str], split: str, download: bool) -> TensorImageSet:
    """CIFAR-10: images `(N, 3, 32, 32)` uint8 (N = 50000 train / 10000 test), labels 0..9.

    Reads `root/cifar-10-batches-py/` (root defaults to `~/.cache/scan`); downloads and
    extracts the official archive there when files are missing and `download` is true.
    """
    _check_split(split)
    base_root = _resolve_root(root)
    base = base_root / CIFAR10_DIR
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    _ensure_files(base, batches + ["batches.meta"], download, CIFAR10_URL, CIFAR10_MD5, base_root, "CIFAR-10")
    names = _label_names(base / "batches.meta", b"label_names", 10)
    parts = [_batch_arrays(base / b, b"labels") for b in batches]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return _to_set(images, labels, names, "cifar10", base)


def load_cifar100_20(root: Optional[str], split: str, download: bool) -> TensorImageSet:
    """CIFAR-100 with its 20 coarse superclasses as labels: `(N, 3, 32, 32)` uint8, labels 0..19.

    Reads `root/cifar-100-python/{train,test,meta}` (root defaults to `~/.cache/scan`).
    """
    _check_split(split)
    base_root = _resolve_root(root)
    base = base_root / CIFAR100_DIR
    _ensure_files(base, [split, "meta"], download, CIFAR100_URL, CIFAR100_MD5, base_root, "CIFAR-100")
    names = _label_names(base / "meta", b"coarse_label_names", 20)
    images, labels = _batch_arrays(base / split, b"coarse_labels")
    return _to_set(images, labels, names, "cifar100_20", base)
