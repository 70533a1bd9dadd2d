"""`export_run`: take the model a training run produced and publish it as a repository version."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from export.errors import HeadError, RunNotReadyError
from export.publish import ExportInputs, TritonOptions, export_model, resolve_version
from export.prototypes import PrototypeSelection
from export.repository import ModelRepository, ModelVersion
from trainer.config import RunConfig
from trainer.data import load_dataset, resolved_image_size
from trainer.data.base import ImageSet, seeded_subset_indices
from trainer.embed import predict_images
from trainer.errors import CheckpointError
from trainer.models.scan_model import ScanModel
from trainer.rundir import RunDir
from trainer.stages.common import load_stage_model

PARITY_IMAGES = 256


def export_run(
    run_dir: str | Path,
    repository: str | Path,
    model_name: str,
    version: Optional[int] = None,
    head: str | int = "best",
    device: torch.device = torch.device("cpu"),
    triton: TritonOptions = TritonOptions(),
    threshold: Optional[float] = None,
    data_root: Optional[str] = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> ModelVersion:
    """Publish the run's model as `version` (None: next) of `model_name` in `repository`.

    head: "best" exports the run's final model (the self-labeled one when self-labeling finished
    and was kept, else SCAN's selected head); an int K exports SCAN head K (before self-labeling).
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunNotReadyError(f"run directory {run.path} does not exist")
    try:
        config = run.load_config()
    except CheckpointError as exc:
        raise RunNotReadyError(str(exc)) from exc
    if data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=data_root))
    report = run.read_report()
    repo = ModelRepository(repository)
    version = resolve_version(repo, model_name, version, log)  # fail fast, before loading data

    train = load_dataset(config.data, "train", seed=config.seed)
    model, source, selection = _choose_model(run, config, report, head, train)
    if selection is None:
        log(f"selecting prototypes of head {source['head']} on {len(train)} training images")
        model = model.to(device)
        probs, embeddings = predict_images(model, train, device, num_workers=config.data.num_workers,
                                           progress=progress)
        selection = PrototypeSelection.from_predictions(
            probs[0], embeddings, train.source, config.report.prototypes, config.report.confident_share)
    test = load_dataset(config.data, "test", seed=config.seed)
    parity_set = test if test is not None and len(test) else train
    inputs = ExportInputs(
        image_size=resolved_image_size(config.data),
        parity_images=_images(parity_set, seeded_subset_indices(len(parity_set), PARITY_IMAGES, config.seed)),
        prototypes=selection,
        prototype_images=_images(train, selection.flat_ids),
        threshold=config.selflabel.threshold if threshold is None else threshold,
        source={**source, "parity_images": f"{parity_set.name} {'test' if parity_set is test else 'train'} split"},
        training_config=config.to_dict(),
        data_fingerprint=train.fingerprint(),
    )
    return export_model(model.cpu(), inputs, repo, model_name, version, triton, log=log)


def _choose_model(
    run: RunDir, config: RunConfig, report: dict[str, Any], head: str | int, train: ImageSet
) -> tuple[ScanModel, dict[str, Any], Optional[PrototypeSelection]]:
    """The model to export (one head kept), where it came from, and its prototypes if the run has them."""
    fingerprint = train.fingerprint()
    done = [s for s in ("pretext", "neighbors", "scan", "selflabel") if report.get(s, {}).get("status") == "done"]
    resume = f"finish it with `scan-train {run.path / 'config.yaml'} --output {run.path}`"
    if "scan" not in done:
        raise RunNotReadyError(
            f"{run.path} has no clustering model yet: the scan stage has not finished (done: {', '.join(done) or 'none'}); "
            f"{resume}"
        )
    source: dict[str, Any] = {"run": str(run.path), "data": config.data.name, "train_images": len(train),
                              "data_fingerprint": fingerprint}
    if head == "best":
        if config.selflabel.enabled and "selflabel" not in done:
            raise RunNotReadyError(
                f"{run.path}: the selflabel stage has not finished; {resume}, or export a SCAN head now with --head K"
            )
        final = report.get("final")
        if not final:
            raise RunNotReadyError(f"{run.path}/report.json names no final model; {resume}")
        model, payload = load_stage_model(run.path / final["model"], expected_fingerprint=fingerprint)
        chosen = int(payload.get("chosen_head", 0))
        model.keep_head(chosen)
        source.update(stage=final["stage"], head=chosen, selected="best", kept=final.get("kept"),
                      test=final.get("test"), health=final.get("health"))
        stage_dir = (run.path / final["prototypes"]).parent if "prototypes" in final else None
    else:
        model, payload = load_stage_model(run.stage_dir("scan") / "model.pt", expected_fingerprint=fingerprint)
        heads = model.cluster_heads.num_heads
        if not 0 <= head < heads:
            raise HeadError(f"--head {head}: {run.path}/scan/model.pt has {heads} cluster heads, numbered 0..{heads - 1}")
        chosen = int(payload.get("chosen_head", -1))
        model.keep_head(head)
        per_head = report["scan"].get("test_acc_per_head")
        source.update(stage="scan", head=head, selected=f"--head {head}", kept=f"scan head {head}",
                      test={"acc": per_head[head]} if per_head else None, scan_selected_head=chosen)
        stage_dir = run.stage_dir("scan") if head == chosen else None
    selection = None
    if stage_dir is not None and (stage_dir / "prototypes.json").exists() and (stage_dir / "cluster_centers.npy").exists():
        selection = PrototypeSelection.from_run_files(stage_dir)
    return model, source, selection


def _images(images: ImageSet, indices: Any) -> np.ndarray:
    """uint8 `(M, C, H, W)` of `images` at `indices` (all of them when None)."""
    if indices is None:
        indices = range(len(images))
    picked = [images[int(i)] for i in indices]
    if not picked:
        size = images[0].shape if len(images) else (1, 1, 1)
        return np.zeros((0, *size), dtype=np.uint8)
    return torch.stack(picked).numpy()
