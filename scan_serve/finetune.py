"""A fine-tuning job, run in its own process: `python -m scan_serve.finetune --store S --job ID ...`.

Starts from the base version's PyTorch weights (`finetune.pt`) and self-labels on the stored
images through the selflabel stage's loop (trainer.stages.selflabel.GuardedSelfLabeling:
class-balanced cross entropy on augmented views), which checks every epoch and the result with the
collapse guard (trainer.health.CollapseGuard) against the base model on the same images, label-free:
  clusters not emptied (populated and non-empty counts), cluster-size entropy not collapsed,
  agreement with the base model above a floor, confident fraction not lower.
A passing job publishes a new version through export.publish.export_model (atomic, with new
prototypes chosen among the stored images) and ends SUCCEEDED; a failing one ends REJECTED with
the numbers; an error ends FAILED. Progress and the outcome are written to the job record.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.prototypes import PrototypeSelection
from export.publish import ExportInputs, export_model, triton_options_of
from export.repository import ModelRepository
from scan_serve.finetune_options import MIN_IMAGES_PER_CLUSTER, finetune_options
from scan_serve.store import FINAL_STATES, ImageStore
from trainer.config import config_from_dict
from trainer.data.base import TensorImageSet, seeded_subset_indices
from trainer.data.preprocess import ImageDecodeError, decode_image
from trainer.device import configure_cpu_threads, resolve_device
from trainer.health import Health
from trainer.stages.common import load_stage_model
from trainer.stages.selflabel import GuardedSelfLabeling


def load_stored_images(store: ImageStore, limit: int, channels: int, size: int) -> TensorImageSet:
    """The stored images (most recent first, at most `limit`; 0: all) preprocessed for the model."""
    rows = store.images(limit or None)
    tensors, sources = [], []
    for row in rows:
        try:
            tensors.append(decode_image(store.read(row), size, channels))
        except (OSError, ImageDecodeError) as exc:  # cannot happen for checked submissions; say so if it does
            print(f"skipping stored image {row.sha256}: {exc}", file=sys.stderr)
            continue
        sources.append(f"store:{row.sha256}")
    if not tensors:
        raise ValueError("the image store holds no readable image")
    return TensorImageSet(torch.stack(tensors), name="store", sources=sources)


def run_job(store_root: Path, job_id: str, repository: Path, model_name: str, device_name: str = "cpu") -> str:
    """Run the job: it ends FAILED or REJECTED here, or "published" (the gateway then switches and marks it
    SUCCEEDED); returns that word."""
    store = ImageStore(store_root)
    job = store.update_job(job_id, unless_final=True, pid=os.getpid())
    if job["state"] in FINAL_STATES:  # cancelled before this process got going
        return job["state"]
    device = resolve_device(device_name)
    if device.type == "cpu":
        configure_cpu_threads()
    repo = ModelRepository(repository)
    base = repo.load(model_name, job["base_version"], verify=True)
    model, payload = load_stage_model(base.finetune_path)
    config = config_from_dict(payload["config"])
    options = finetune_options(job["options"], config.selflabel)
    channels, size = int(base.metadata["input"]["channels"]), int(base.metadata["input"]["height"])
    images = load_stored_images(store, options.max_images, channels, size)
    clusters = int(base.metadata["num_clusters"])
    if len(images) < MIN_IMAGES_PER_CLUSTER * clusters:
        return store.finish_job(job_id, "failed", f"{len(images)} stored images; fine-tuning needs at least "
                                f"{MIN_IMAGES_PER_CLUSTER * clusters} ({MIN_IMAGES_PER_CLUSTER} per cluster)")["state"]
    store.update_job(job_id, images=len(images), progress=0.02)

    cfg = dataclasses.replace(config.selflabel, epochs=options.epochs, lr=options.lr, threshold=options.threshold,
                              class_balance=options.class_balance, augment=options.augment, ema=None,
                              guard_min_agreement=options.min_agreement)
    model.to(device)
    loop = GuardedSelfLabeling(model, images, device, cfg, config.augment, config.seed)
    history: list[dict[str, Any]] = []

    def report_epoch(epoch: int, metrics: dict[str, Any], health: Health, problems: list[str]) -> None:
        history.append({"epoch": epoch, "loss": round(metrics["loss"], 5), "health": health.to_dict(),
                        "problems": problems})
        store.update_job(job_id, progress=0.05 + 0.85 * epoch / cfg.epochs)
        print(f"job {job_id} epoch {epoch}/{cfg.epochs}: confident {health.confident_fraction:.3f}, "
              f"agreement {health.agreement:.3f}, populated {health.populated}/{health.clusters}"
              + (f" -- guard: {'; '.join(problems)}" if problems else ""), flush=True)

    loop.run(report_epoch)
    result = loop.finish()
    baseline, final = loop.baseline, result.health
    failures = result.refusal
    if loop.best["epoch"] == 0:
        stopped = [f"epoch {h['epoch']}: {problem}" for h in history for problem in h["problems"]]
        unimproved = ("no epoch raised the confident fraction above the served model's "
                      f"{baseline.confident_fraction:.3f}")
        failures = (stopped or [unimproved]) + failures
    gate = {"baseline": baseline.to_dict(), "candidate": final.to_dict(), "kept_epoch": result.kept_epoch,
            "min_agreement": options.min_agreement, "entropy_drop": cfg.guard_entropy_drop, "history": history}
    if failures:
        return store.finish_job(job_id, "rejected", "the safety gate refused the fine-tuned model: "
                                + "; ".join(failures), gate_failures=failures, gate=gate, progress=1.0)["state"]

    store.update_job(job_id, progress=0.92, gate=gate)
    parity = seeded_subset_indices(len(images), 256, config.seed)
    parity_indices = range(len(images)) if parity is None else parity
    selection = PrototypeSelection.from_predictions(result.probs, result.embeddings, images.source,
                                                    config.report.prototypes, config.report.confident_share)
    stacked = images.images.numpy()
    inputs = ExportInputs(
        image_size=size,
        parity_images=stacked[np.asarray(list(parity_indices))],
        prototypes=selection,
        prototype_images=stacked[np.asarray(selection.flat_ids, dtype=np.int64)],
        threshold=float(base.metadata["confidence_threshold"]),
        source={"run": base.metadata.get("source", {}).get("run"), "stage": "finetune", "head": 0,
                "fine_tune_job": job_id, "base_version": base.version, "images": len(images),
                "kept": f"fine-tune epoch {result.kept_epoch}", "health": final.to_dict(),
                "options": dataclasses.asdict(options), "data": "image store", "train_images": len(images)},
        training_config=config.to_dict(),
        data_fingerprint=images.fingerprint(),
        cluster_names=base.metadata.get("cluster_names"),
    )
    published = export_model(model.cpu(), inputs, repo, model_name, None, triton_options_of(base.metadata))
    # The gateway marks the job SUCCEEDED once it serves the new version, so a client that sees
    # SUCCEEDED gets answers from it.
    store.update_job(job_id, unless_final=True, new_version=published.version, progress=1.0,
                     message=f"published {model_name} version {published.version} (epoch {result.kept_epoch}: "
                             f"confident {final.confident_fraction:.3f} vs {baseline.confident_fraction:.3f}, "
                             f"agreement {final.agreement:.3f})")
    return "published"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one fine-tuning job of scan-serve's image store.")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        state = run_job(args.store, args.job, args.repository, args.model_name, args.device)
    except Exception as exc:  # noqa: BLE001 - every error ends the job FAILED with its reason
        traceback.print_exc()
        ImageStore(args.store).finish_job(args.job, "failed", f"{type(exc).__name__}: {exc}")
        return 1
    print(f"job {args.job}: {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
