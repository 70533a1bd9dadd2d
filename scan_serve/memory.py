"""Give the heap memory freed after a request back to the operating system.

Decoding one 4096 x 4096 image takes a few hundred MB for a moment; glibc keeps what was freed in
its per-thread arenas, so a gateway that decoded several such images at once stayed hundreds of MB
larger for good (`tests/serve/test_operations.py` fails without this). `malloc_trim(0)` returns
it; when there is nothing to return it costs microseconds. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Callable, Optional


def _malloc_trim() -> Optional[Callable[[int], int]]:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`); a no-op elsewhere."""
    if _TRIM is not None:
        _TRIM(0)
