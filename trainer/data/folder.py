"""An unlabelled folder of images (searched recursively), decoded with `trainer.data.preprocess`.

`scan_image_files` and `build_image_set` are shared with the ImageNet-subset reader.

* Files: extensions in `IMAGE_EXTENSIONS`, any letter case; hidden files and folders (name
  starting with '.') are skipped; symbolic links are followed, each real folder is visited once
  (no loops); the order is the sorted relative POSIX path, so it is the same on every machine.
* In memory (`TensorImageSet`) when asked, or, with `in_memory=None`, when
  `N * C * size * size` bytes fit in `in_memory_max_gb` (10^9 bytes). Files are decoded by a
  thread pool: PIL releases the GIL while decoding and resizing, so threads use all cores
  without pickling images between processes.
* Otherwise lazily (`FileImageSet` whose loader is a picklable `functools.partial` of
  `load_image_file`); headers are checked up front so unreadable files are left out there too.
* Unreadable, corrupt or empty files are skipped; one `SkippedImagesWarning` reports how many,
  with up to 5 example paths and reasons.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import torch
from tqdm import tqdm

from trainer.data.base import FileImageSet, ImageSet, TensorImageSet
from trainer.data.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image_file, probe_image_file
from trainer.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SkippedImagesWarning",
    "build_image_set",
    "fits_in_memory",
    "load_image_folder",
    "scan_image_files",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_EXAMPLES = 5

T = TypeVar("T")


class SkippedImagesWarning(UserWarning):
    """Some files of an image folder could not be read and were left out."""


def _extensions_text() -> str:
    return ", ".join(IMAGE_EXTENSIONS) + " (any case)"


def scan_image_files(folder: str | Path) -> list[Path]:
    """All image files under `folder`, recursively, sorted by relative POSIX path.

    Raises DataError when `folder` does not exist or is not a folder. Returns `folder / rel`
    paths (absolute when `folder` is).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    found: list[str] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            stat = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in visited:  # reached again through a symbolic link: a loop or a duplicate
            dirnames[:] = []
            continue
        visited.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for filename in filenames:
            if filename.startswith(".") or os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            found.append((rel_dir / filename).as_posix())
    return [folder / rel for rel in sorted(found)]


def fits_in_memory(count: int, channels: int, image_size: int, max_gb: float) -> bool:
    """Whether `count` decoded `(channels, image_size, image_size)` uint8 images fit in `max_gb` * 10^9 bytes."""
    return count * channels * image_size * image_size <= max_gb * 1e9


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _iter_files(
    fn: Callable[[Path], T], paths: Sequence[Path], desc: str
) -> Iterator[tuple[Optional[T], Optional[str]]]:
    """Apply `fn` to every path in a thread pool; yields `(result, None)` or `(None, reason)` in order."""

    def guarded(path: Path) -> tuple[Optional[T], Optional[str]]:
        try:
            return fn(path), None
        except ImageDecodeError as exc:
            return None, str(exc)

    show = sys.stderr.isatty() and len(paths) > 1
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        yield from tqdm(pool.map(guarded, paths), total=len(paths), desc=desc, disable=not show, unit="img")


def _warn_skipped(name: str, folder: Path, failures: list[str], total: int) -> None:
    examples = "; ".join(failures[:MAX_EXAMPLES])
    more = f"; and {len(failures) - MAX_EXAMPLES} more" if len(failures) > MAX_EXAMPLES else ""
    warnings.warn(
        f"{name}: skipped {len(failures)} of {total} image files in {folder} that could not be read: {examples}{more}",
        SkippedImagesWarning,
        stacklevel=3,
    )


def build_image_set(
    paths: Sequence[Path],
    base: Path,
    image_size: int,
    channels: int,
    in_memory: Optional[bool],
    in_memory_max_gb: float,
    name: str,
    labels: Optional[Sequence[int]] = None,
    class_names: Optional[list[str]] = None,
) -> ImageSet:
    """Decode (or check, for lazy sets) `paths` into an image set of `(channels, image_size, image_size)` images.

    Unreadable files are dropped together with their labels and reported in one
    `SkippedImagesWarning`. `sources` of an in-memory set are paths relative to `base`.
    Raises DataError when no file is readable.
    """
    base = Path(base)
    if not paths:
        raise DataError(f"no image files ({_extensions_text()}) found in {base}")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} files")
    if in_memory is None:
        in_memory = fits_in_memory(len(paths), channels, image_size, in_memory_max_gb)
    load = functools.partial(load_image_file, size=image_size, channels=channels, max_pixels=DEFAULT_MAX_PIXELS)

    keep: list[int] = []
    failures: list[str] = []
    images: Optional[torch.Tensor] = None
    if in_memory:
        # Decoded images go straight into one preallocated tensor, packed to the front.
        images = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)
        for i, (image, error) in enumerate(_iter_files(load, paths, f"decoding {name}")):
            if error is not None:
                failures.append(error)
                continue
            images[len(keep)] = image
            keep.append(i)
    else:
        probe = functools.partial(probe_image_file, max_pixels=DEFAULT_MAX_PIXELS)
        for i, (_, error) in enumerate(_iter_files(probe, paths, f"checking {name}")):
            if error is not None:
                failures.append(error)
            else:
                keep.append(i)
    if not keep:
        raise DataError(
            f"none of the {len(paths)} image files ({_extensions_text()}) in {base} could be read, e.g. {failures[0]}"
        )
    if failures:
        _warn_skipped(name, base, failures, len(paths))
    kept_labels = None if labels is None else torch.tensor([labels[i] for i in keep], dtype=torch.int64)
    if images is None:
        return FileImageSet([paths[i] for i in keep], load, image_size, channels, kept_labels, class_names, name,
                            base=base)
    if len(keep) < len(paths):
        images = images[: len(keep)].clone()
    sources = [_relative(paths[i], base) for i in keep]
    return TensorImageSet(images, kept_labels, class_names, name, sources)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def load_image_folder(
    root: str | Path,
    image_size: int,
    channels: int,
    in_memory: Optional[bool] = None,
    in_memory_max_gb: float = 4.0,
    name: str = "folder",
) -> ImageSet:
    """All images under `root` as `(channels, image_size, image_size)` uint8, without labels.

    Returns a `TensorImageSet` (`(N, C, S, S)` in memory, `sources` relative to `root`) or a
    lazily decoding `FileImageSet`; see the module docstring. DataError for a missing folder,
    a folder without image files, or one where no image can be read.
    """
    folder = Path(root).expanduser()
    paths = scan_image_files(folder)
    if not paths:
        raise DataError(f"no image files ({_extensions_text()}) found in {folder}")
    return build_image_set(paths, folder, image_size, channels, in_memory, in_memory_max_gb, name)
