"""The device is resolved once at the edge and passed in; everything else is derived from it."""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from trainer.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> torch.device. Asking for CUDA without one is an error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: this torch build sees no CUDA device; use --device cpu")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA, a null context on CPU (bf16 matmuls are slower than fp32 on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device, setting: bool | None) -> bool:
    return device.type == "cuda" if setting is None else setting


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on CPU): call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.25) -> bool:
    """Whether `nbytes` more fit in `share` of `device`'s free memory (CUDA); False on CPU, where
    there is nothing to move."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def configure_cpu_threads(threads: int | None = None, processes_on_node: int = 1) -> int:
    """Set the intra-op thread count; returns it.

    `threads` when given; else, for one process, $OMP_NUM_THREADS when set and every core
    otherwise; for several processes on this node (torchrun, which sets OMP_NUM_THREADS=1
    unless told otherwise) the cores divided evenly among them.
    """
    if threads is None:
        if processes_on_node > 1:
            threads = max(1, (os.cpu_count() or 1) // processes_on_node)
        elif "OMP_NUM_THREADS" not in os.environ:
            threads = os.cpu_count() or 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
