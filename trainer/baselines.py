"""Label-free baselines in every run: is the trained model better than the trivial clusterings?

After the SCAN stage (and again after self-labeling) the training images are clustered by

* k-means on raw pixels (Euclidean, faiss, 3 restarts; pixels at the training size, or
  downsampled until a vector has at most `MAX_PIXEL_DIM` values),
* k-means on the pretext backbone features (spherical, 3 restarts),

into the same number of clusters as the model, and every clustering (the baselines, the SCAN
model's chosen head, the self-labelled model) is scored by one label-free criterion:

**HOG neighbor agreement.** Each image's `K` nearest neighbors (cosine) are mined in a space
none of the methods clusters in: histograms of oriented gradients (`trainer.hog`), an untrained,
fixed descriptor. The score is the share of (image, neighbor) pairs that a clustering puts in
the same cluster, corrected for chance like Cohen's kappa: `(observed - expected) / (1 - expected)`
with `expected = sum_k (n_k / N)^2`, the share a random assignment with the same cluster sizes
would get. 1 means every neighbor shares its image's cluster; 0 is chance; putting everything in
one cluster scores 0, not 1. The model's own loss on its own neighbors would favour SCAN by
construction, pixel-space inertia would favour pixel k-means; this space is neither. Which
criterion and why (measurements on Fashion-MNIST and on folders with hidden labels):
`benchmarks/results/baseline_criterion_cpu.md`; the folder comparison itself is in
`benchmarks/results/folder_preset_cpu.md`.

When a baseline scores more than `MARGIN` above the model, the entry says so plainly and
recommends the baseline; otherwise it recommends the model. Where the training set has labels,
each method's ACC/NMI/ARI on the same training images are added (evaluation only). Sets larger
than `report.baselines_max_images` are measured on a seeded subset (the entry says so).
`baselines/assignments.csv` holds every measured image's cluster under each method.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from trainer.atomic import atomic_write_text
from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.data.base import ImageSet, TensorImageSet, iterate_batches, seeded_subset_indices
from trainer.embed import embed_images, predict_images
from trainer.evaluate import cluster_metrics
from trainer.hog import hog_features
from trainer.neighbors import _faiss, mine_neighbors
from trainer.rundir import RunDir
from trainer.stages.common import load_stage_model

ENTRY = "baselines"  # report["baselines"] and the run's baselines/ folder
CRITERION = "hog_neighbor_agreement"
CRITERION_TEXT = "HOG neighbor agreement"
NEIGHBORS = 10  # K of the HOG neighbors
MARGIN = 0.01  # a baseline is recommended only when it beats the model by more than this
MAX_PIXEL_DIM = 4096  # pixel vectors longer than this are downsampled for k-means (64 x 64 grey)
RESTARTS = 3
LABELS = {
    "kmeans_pixels": "k-means on pixels",
    "kmeans_pretext": "k-means on pretext features",
    "scan": "the SCAN model",
    "selflabel": "the self-labelled model",
}
MODELS = ("scan", "selflabel")


def neighbor_agreement(assignment: np.ndarray, neighbors: np.ndarray) -> float:
    """Chance-corrected share of (image, neighbor) pairs in the same cluster.

    assignment `(N,)` cluster ids, neighbors `(N, K)` indices. `(observed - expected) / (1 - expected)`
    with `expected = sum_k (n_k / N)^2`; 0 when every image is in one cluster.
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    observed = float((assignment[neighbors] == assignment[:, None]).mean())
    shares = np.bincount(assignment) / len(assignment)
    expected = float((shares**2).sum())
    if expected >= 1.0:
        return 0.0
    return (observed - expected) / (1.0 - expected)


def pixel_vectors(images: torch.Tensor, max_dim: int = MAX_PIXEL_DIM) -> np.ndarray:
    """uint8 `(N, C, S, S)` -> `(N, C * s * s)` float32 in [0, 1], `s` the largest side <= S with at most
    `max_dim` values (antialiased bilinear downsampling when s < S)."""
    n, c, size, _ = images.shape
    side = size
    while c * side * side > max_dim:
        side -= 1
    x = images.float().div_(255)
    if side != size:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x.reshape(n, -1).numpy()


def kmeans_assign(features: np.ndarray, num_clusters: int, seed: int, spherical: bool) -> np.ndarray:
    """k-means (faiss, `RESTARTS` restarts, every point used) fitted on `features (N, D)`; `(N,)` cluster ids."""
    faiss = _faiss()
    x = np.ascontiguousarray(features, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], num_clusters, niter=50, nredo=RESTARTS, seed=seed, spherical=spherical,
                      verbose=False, max_points_per_centroid=max(256, len(x)))
    km.train(x)
    _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64)


@contextlib.contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """faiss's OpenMP threads set to `threads` for the duration (torch's count: `--threads` holds for k-means too)."""
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def stack_images(images: ImageSet, num_workers: int) -> torch.Tensor:
    """Every image of the set as one uint8 `(N, C, S, S)` tensor on the CPU (decoding a file set)."""
    if isinstance(images, TensorImageSet):
        return images.images.cpu()
    return torch.cat([batch for _, batch in iterate_batches(images, 512, num_workers=num_workers)])


def _done(report: dict[str, Any], stage: str) -> bool:
    return report.get(stage, {}).get("status") == "done"


def compare_baselines(config: RunConfig, run: RunDir, device: torch.device) -> dict[str, Any]:
    """Cluster the training images with the baselines, score every clustering; the report entry.

    Measures every model stage that is done (`scan`, and `selflabel` when it kept a model file).
    Writes `baselines/assignments.csv`.
    """
    with faiss_threads(torch.get_num_threads()):
        return _compare(config, run, device)


def _compare(config: RunConfig, run: RunDir, device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    report = run.read_report()
    train = load_dataset(config.data, "train", seed=config.seed)
    workers, batch = config.data.num_workers, config.neighbors.batch_size
    indices = seeded_subset_indices(len(train), config.report.baselines_max_images, config.seed)
    measured = train if indices is None else train.subset(indices)
    rows = np.arange(len(train)) if indices is None else indices

    # the candidates' assignments of the measured images
    assignments: dict[str, np.ndarray] = {}
    model_path = run.stage_dir("scan") / "model.pt"
    scan_model, scan_state = load_stage_model(model_path, expected_fingerprint=train.fingerprint())
    num_clusters = scan_model.cluster_heads.num_clusters
    images = stack_images(measured, workers)
    assignments["kmeans_pixels"] = kmeans_assign(pixel_vectors(images), num_clusters, config.seed, spherical=False)
    assignments["kmeans_pretext"] = kmeans_assign(
        pretext_features(config, run, measured, rows, device), num_clusters, config.seed, spherical=True)
    scan_model.to(device)
    probs, _ = predict_images(scan_model, measured, device, batch, workers)
    assignments["scan"] = probs[scan_state["chosen_head"]].argmax(axis=1)
    selflabel_path = run.stage_dir("selflabel") / "model.pt"
    if _done(report, "selflabel") and selflabel_path.exists():
        model, _ = load_stage_model(selflabel_path, expected_fingerprint=train.fingerprint())
        probs, _ = predict_images(model.to(device), measured, device, batch, workers)
        assignments["selflabel"] = probs[0].argmax(axis=1)

    # the criterion, in a space none of them clustered in
    hog_neighbors, _ = mine_neighbors(hog_features(images), min(NEIGHBORS, len(images) - 1))
    methods: dict[str, dict[str, Any]] = {}
    labels = measured.labels.numpy() if measured.has_labels else None
    if labels is not None and not (labels >= 0).any():  # e.g. STL-10's unlabeled images only
        labels = None
    num_classes = len(train.class_names) if train.class_names else None
    for name, assignment in assignments.items():
        entry: dict[str, Any] = {CRITERION: round(neighbor_agreement(assignment, hog_neighbors), 4),
                                 "sizes": np.bincount(assignment, minlength=num_clusters).tolist()}
        if labels is not None:
            entry["train"] = {k: round(v, 4) for k, v in
                              cluster_metrics(assignment, labels, num_clusters, num_classes).items()}
        methods[name] = entry

    model = "selflabel" if "selflabel" in assignments else "scan"
    kept_scan = model == "selflabel" and str(report["selflabel"].get("kept", "")).startswith("scan model")
    verdict = recommend(methods, model, "the final model (the SCAN model self-labeling kept)" if kept_scan else None)
    _write_assignments(run.stage_dir(ENTRY) / "assignments.csv", measured, assignments)
    return {
        "criterion": {"name": CRITERION, "neighbors": NEIGHBORS, "higher_is_better": True,
                      "space": "HOG, 32 px, 8 px cells, 9 bins, 2x2-cell blocks (trainer/hog.py)"},
        "clusters": num_clusters,
        "images": len(measured),
        "train_images": len(train),
        "subsampled": indices is not None,
        "methods": methods,
        "model": model,
        **verdict,
        "assignments": f"{ENTRY}/assignments.csv",
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def recommend(methods: dict[str, dict[str, Any]], model: str, model_label: Optional[str] = None) -> dict[str, Any]:
    """`{"recommended", "message"}`: the model, unless a baseline beats it by more than `MARGIN`.

    `model_label` names the model in the message (default: `LABELS[model]`).
    """
    score = {name: entry[CRITERION] for name, entry in methods.items()}
    labels = {**LABELS, model: model_label or LABELS[model]}
    baselines = [name for name in score if name not in MODELS]
    best = max(baselines, key=score.__getitem__)
    if score[best] > score[model] + MARGIN:
        hint = ("a longer pretext stage (--set pretext.epochs=N) and more images"
                if best == "kmeans_pixels" else "other SCAN settings (scan.entropy_weight, scan.epochs)")
        message = (f"{labels[best]} looks better than {labels[model]} on these images by {CRITERION_TEXT} "
                   f"({score[best]:.3f} vs {score[model]:.3f}); consider its clusters "
                   f"({ENTRY}/assignments.csv, column {best}), or {hint}")
        return {"recommended": best, "message": message}
    ranked = ", ".join(f"{labels[n]} {score[n]:.3f}" for n in sorted(score, key=score.__getitem__, reverse=True))
    return {"recommended": model, "message": f"{CRITERION_TEXT} (higher is better): {ranked}"}


def pretext_features(config: RunConfig, run: RunDir, measured: ImageSet, rows: np.ndarray,
                     device: torch.device) -> np.ndarray:
    """`(N, D)` L2-normalized backbone features of the pretext model for the training images `rows`
    (`measured`): the neighbors stage's file when it holds backbone features, else embedded now."""
    saved = run.stage_dir("neighbors") / "features_train.npy"
    if config.neighbors.feature == "backbone" and saved.exists():
        return np.load(saved, mmap_mode="r")[rows]
    model, _ = load_stage_model(run.stage_dir("pretext") / "model.pt")
    return embed_images(model.to(device), measured, device, "backbone", config.neighbors.batch_size,
                        config.data.num_workers)


def _write_assignments(path: Path, images: ImageSet, assignments: dict[str, np.ndarray]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", *assignments])
    for i in range(len(images)):
        writer.writerow([images.source(i), *(int(a[i]) for a in assignments.values())])
    atomic_write_text(path, buffer.getvalue())


def baselines_line(entry: Optional[dict[str, Any]]) -> Optional[str]:
    """One plain line for people from `report["baselines"]`, or None."""
    if not entry:
        return None
    prefix = f"baselines on {entry['images']}{' (a subset)' if entry['subsampled'] else ''} training images: "
    return prefix + entry["message"] + f"; recommended: {entry['recommended']}"
