"""The run directory: the files stages hand over through, all written atomically.

```
RUN_DIR/config.yaml            resolved configuration (refuses to resume with a different one)
RUN_DIR/metrics.jsonl          one JSON line per epoch of every stage
RUN_DIR/report.json            per stage: status, results, wall time
RUN_DIR/pretext/checkpoint.pt  latest resumable state; pretext/model.pt the finished model
RUN_DIR/neighbors/             features_{train,test}.npy, neighbors_train.npy (N, K)
```
A file that others read appears whole or not at all: it is written beside its final
name, flushed to disk, then renamed into place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from trainer.atomic import atomic_write_text, remove_stale_temporaries
from trainer.config import RunConfig, config_from_dict, dump_config
from trainer.errors import CheckpointError, ConfigError


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this project (tensors and plain data only: weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # a truncated or foreign file: say which, never a pickle stack trace
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Settings that change how a run executes, not what it computes: a resume may change them.
OPERATIONAL_KEYS = frozenset({
    "data.root", "data.num_workers", "data.in_memory", "data.in_memory_max_gb", "data.download",
    "pretext.compile", "pretext.channels_last", "neighbors.batch_size", "neighbors.faiss_gpu",
})


class RunDir:
    """A run directory. Creating one writes (or checks) its resolved configuration."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def report_path(self) -> Path:
        return self.path / "report.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def bind_config(self, config: RunConfig) -> None:
        """Write the resolved config, or check an existing run was made with the same one."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--output {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--output {self.path}: cannot create the run directory ({exc.strerror})") from exc
        if self.config_path.exists():
            stored = config_from_dict(yaml.safe_load(self.config_path.read_text()) or {})
            differences = [
                d for d in _differences(stored.to_dict(), config.to_dict()) if d[0] not in OPERATIONAL_KEYS
            ]
            if differences:
                shown = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, a, b in differences[:5])
                raise CheckpointError(
                    f"{self.path} was started with a different configuration ({shown}). "
                    "Resume with the same configuration, or choose a new --output."
                )
        atomic_write_text(self.config_path, dump_config(config))
        remove_stale_temporaries(self.path)  # left by a kill -9 mid-write; this run is the only writer now

    def load_config(self) -> RunConfig:
        if not self.config_path.exists():
            raise CheckpointError(f"{self.path} is not a run directory (no config.yaml)")
        return config_from_dict(yaml.safe_load(self.config_path.read_text()) or {})

    # ------------------------------------------------------------------ metrics and report

    def log_metrics(self, stage: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Append one JSON line; a line is written with one call and flushed to disk."""
        record = {"stage": stage, "epoch": epoch, "time": round(time.time(), 3), **metrics}
        line = json.dumps(record, default=_json_default) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self, stage: str | None = None) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the epoch it described is re-run
            if stage is None or record.get("stage") == stage:
                records.append(record)
        return records

    def read_report(self) -> dict[str, Any]:
        if not self.report_path.exists():
            return {}
        return json.loads(self.report_path.read_text())

    def update_report(self, stage: str, entry: dict[str, Any]) -> None:
        report = self.read_report()
        report[stage] = {**report.get(stage, {}), **entry}
        atomic_write_text(self.report_path, json.dumps(report, indent=2, default=_json_default) + "\n")

    def stage_done(self, stage: str) -> bool:
        return self.read_report().get(stage, {}).get("status") == "done"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [(prefix, a, b)]
