"""Atomic file writes: a file others read appears whole or not at all.

The content is written to a temporary file beside the target, flushed to disk, made
readable (0644), then renamed over the target; the folder entry is synced too. A kill at
any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call `write(handle)` on a temporary file and rename it to `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are read by other processes and people
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temporaries(directory: str | Path, depth: int = 1) -> list[Path]:
    """Delete the temporary files `atomic_write` leaves behind when killed mid-write (`.NAME.*.tmp`),
    in `directory` and `depth` levels below it; returns what was removed. Only for a directory with
    no writer at work (a run directory when its run starts)."""
    directory, removed = Path(directory), []
    patterns = [".*.tmp"] + ["/".join(["*"] * level + [".*.tmp"]) for level in range(1, depth + 1)]
    for pattern in patterns:
        for stale in directory.glob(pattern):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda h: h.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda h: np.save(h, array))


def atomic_torch_save(path: str | Path, payload: dict[str, Any]) -> Path:
    import torch  # noqa: PLC0415 - keep this module light for callers that only write bytes

    return atomic_write(path, lambda h: torch.save(payload, h))


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
