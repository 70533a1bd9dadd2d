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


def configure_cpu_threads() -> int:
    """Use every core for intra-op work unless the user set OMP_NUM_THREADS; returns the count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()
