"""What every benchmark records: the command line and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).as_posix(), *map(shlex.quote, sys.argv[1:])])


def machine(device: torch.device) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, result: dict) -> None:
    """Write a benchmark result atomically (readers never see half a file) and say where."""
    from trainer.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
