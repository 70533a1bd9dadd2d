"""What every training stage shares: epoch seeding, per-epoch checkpoints, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from trainer.config import AUTO, RunConfig
from trainer.errors import CheckpointError
from trainer.models.scan_model import ScanModel
from trainer.atomic import atomic_torch_save
from trainer.rundir import RunDir, load_checkpoint

K_SELECTION = "k_selection"  # the stage that chooses K when scan.num_clusters is "auto"


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed torch's default generators for this epoch; return the generator for its data order.

    Everything random in an epoch derives from (seed, epoch), so a resumed run repeats
    the interrupted epoch exactly. Under torchrun every rank draws the same data order
    (the generator ignores `rank`) but its own augmentations (see `augment_generator`).
    """
    torch.manual_seed(_augment_seed(seed, epoch, rank))
    return torch.Generator().manual_seed(seed * 7_919 + epoch)


def _augment_seed(seed: int, epoch: int, rank: int) -> int:
    return seed * 100_003 + epoch + rank * 1_000_003


def augment_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator every augmentation of this epoch draws from, on `device`, seeded by (seed, epoch, rank)."""
    return torch.Generator(device).manual_seed(_augment_seed(seed, epoch, rank))


def checkpoint_payload(model: ScanModel, config: RunConfig, fingerprint: str, **extra: Any) -> dict[str, Any]:
    """What every checkpoint carries so a model can be rebuilt from the file alone."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_args": model.model_args(),
        "config": config.to_dict(),
        "data_fingerprint": fingerprint,
        **extra,
    }


def load_stage_model(path: Path, expected_fingerprint: Optional[str] = None) -> tuple[ScanModel, dict[str, Any]]:
    """Rebuild a model saved by `checkpoint_payload` (weights_only load)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path} is missing: run the stage that writes it first")
    payload = load_checkpoint(path)
    if expected_fingerprint is not None and payload.get("data_fingerprint") != expected_fingerprint:
        raise CheckpointError(
            f"{path} was trained on other data (fingerprint {payload.get('data_fingerprint')}, "
            f"now {expected_fingerprint}); use a new run directory"
        )
    model = ScanModel.from_args(payload["model_args"])
    model.load_state_dict(payload["model"])
    return model, payload


def resume(
    path: Path, model: ScanModel, optimizer: torch.optim.Optimizer, fingerprint: str, stage: str,
    announce: bool = True,
) -> tuple[int, float, dict[str, Any]]:
    """Load `path` into model and optimizer if it exists: `(next epoch, elapsed seconds, state)`.

    Under torchrun every rank loads the same file, so all resume from the same epoch.
    """
    if not path.exists():
        return 0, 0.0, {}
    state = load_checkpoint(path)
    if state.get("data_fingerprint") != fingerprint:
        raise CheckpointError(f"{path} was made on other data; use a new --output")
    if state.get("model_args") != model.model_args():
        raise CheckpointError(f"{path} holds another architecture; use a new --output")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if announce:
        print(f"{stage}: resuming after epoch {state['epoch']}", flush=True)
    return state["epoch"], state["elapsed"], state


def save_epoch(
    path: Path, model: ScanModel, config: RunConfig, fingerprint: str, optimizer: torch.optim.Optimizer,
    epoch: int, elapsed: float, **extra: Any,
) -> None:
    atomic_torch_save(
        path,
        checkpoint_payload(model, config, fingerprint, optimizer=optimizer.state_dict(), epoch=epoch,
                           elapsed=elapsed, **extra),
    )


def finish(checkpoint_path: Path, model_path: Path, **extra: Any) -> dict[str, Any]:
    """Write the stage's final model from its last checkpoint (without optimizer state)."""
    final = load_checkpoint(checkpoint_path)
    payload = {k: v for k, v in final.items() if k != "optimizer"}
    payload.update(extra)
    atomic_torch_save(model_path, payload)
    return payload


def searches_k(config: RunConfig) -> bool:
    """Whether this run chooses its number of clusters (`scan.num_clusters: auto`)."""
    return config.scan.num_clusters == AUTO


def num_clusters(config: RunConfig, run: RunDir) -> int:
    """The number of clusters SCAN trains with: the configured one, or the one the K search chose."""
    if not searches_k(config):
        return int(config.scan.num_clusters)
    entry = run.read_report().get(K_SELECTION, {})
    if entry.get("status") != "done":
        raise CheckpointError(
            f"scan.num_clusters is {AUTO!r} but {run.path} has no chosen K: run the {K_SELECTION} stage first")
    return int(entry["chosen"])
