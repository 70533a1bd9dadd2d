"""A subset of ImageNet (or any folder-per-class image collection) laid out as `root/<split>/<wnid>/*.JPEG`.

`class_list` is a text file with one class folder name (WordNet id) per line, optionally
followed by whitespace and a human-readable name; blank lines and lines starting with '#' are
ignored. The label of an image is the line index of its class in that list, and
`class_names` are the human-readable names (the wnid where none is given). Without a class
list every non-hidden subfolder of `root/<split>` is a class, in sorted order.

Files are found and decoded by the folder reader (`trainer.data.folder`), so the same
extensions, skipping of unreadable files, in-memory/lazy choice and warning apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainer.data.base import ImageSet
from trainer.data.folder import build_image_set, scan_image_files
from trainer.errors import DataError

__all__ = ["load_imagenet_subset", "read_class_list"]

SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}


def read_class_list(path: str | Path) -> list[tuple[str, str]]:
    """Parse a class list: `[(wnid, human_readable_name), ...]` in file order. DataError naming the file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read class list {path}: {exc.strerror or exc}") from exc
    classes: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        wnid = parts[0]
        readable = parts[1].strip() if len(parts) > 1 else wnid
        if wnid in seen:
            raise DataError(f"{path}:{number}: class {wnid} is listed twice (first on line {seen[wnid]})")
        seen[wnid] = number
        classes.append((wnid, readable))
    if not classes:
        raise DataError(f"class list {path} names no class")
    return classes


def load_imagenet_subset(
    root: str | Path,
    split: str,
    class_list: Optional[str],
    image_size: int,
    channels: int,
    in_memory: Optional[bool] = None,
    in_memory_max_gb: float = 4.0,
) -> ImageSet:
    """Images of `root/<split>/<wnid>/` as `(channels, image_size, image_size)` uint8 with labels.

    `split` is 'train' or 'val' ('test' is read from `val`). Returns a `TensorImageSet`
    (`(N, C, S, S)`) or a lazily decoding `FileImageSet`, with `labels` `(N,)` int64 = index in
    the class list. DataError for a missing split folder, a listed class without a folder or
    without images, or an unreadable class list.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root = Path(root).expanduser()
    split_dir = root / SPLIT_FOLDERS[split]
    if not split_dir.is_dir():
        raise DataError(
            f"ImageNet {split} folder {split_dir} does not exist "
            f"(expected {root}/{SPLIT_FOLDERS[split]}/<wnid>/*.JPEG)"
        )
    if class_list:
        classes = read_class_list(class_list)
    else:
        wnids = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not wnids:
            raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<wnid>/*.JPEG)")
        classes = [(wnid, wnid) for wnid in wnids]

    paths: list[Path] = []
    labels: list[int] = []
    for index, (wnid, _) in enumerate(classes):
        class_dir = split_dir / wnid
        if not class_dir.is_dir():
            source = f" listed in {class_list}" if class_list else ""
            raise DataError(f"class folder {class_dir}{source} does not exist")
        files = scan_image_files(class_dir)
        if not files:
            raise DataError(f"class folder {class_dir} holds no image files")
        paths.extend(files)
        labels.extend([index] * len(files))
    return build_image_set(
        paths,
        split_dir,
        image_size,
        channels,
        in_memory,
        in_memory_max_gb,
        f"imagenet-{SPLIT_FOLDERS[split]}",
        labels=labels,
        class_names=[readable for _, readable in classes],
    )
