"""What a clustering stage reports and draws: health, test metrics, prototypes, pictures."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainer import pictures
from trainer.config import RunConfig
from trainer.data.base import ImageSet
from trainer.evaluate import cluster_metrics, confusion_matrix
from trainer.health import Health, measure_health
from trainer.prototypes import find_prototypes, mutually_linked_clusters
from trainer.atomic import atomic_save_npy, atomic_write_text


def test_metrics(probs: np.ndarray, test: Optional[ImageSet]) -> Optional[dict[str, float]]:
    """ACC/NMI/ARI of `probs (N, C)` on a labelled test split, else None."""
    if test is None or not test.has_labels:
        return None
    num_classes = len(test.class_names) if test.class_names else None
    return cluster_metrics(probs.argmax(axis=1), test.labels.numpy(), probs.shape[1], num_classes)


ASSIGNMENT_COLUMNS = ("index", "source", "cluster", "confidence", "confident", "runner_up", "runner_up_probability",
                      "nearest_prototype", "nearest_prototype_source", "nearest_prototype_similarity")


def write_assignments(path: Path, images: ImageSet, probs: np.ndarray, embeddings: np.ndarray,
                      prototype_ids: np.ndarray, threshold: float) -> None:
    """One CSV row per image (atomically): its source, cluster (argmax), confidence and whether it passes
    `threshold`, the runner-up cluster and its probability, and the prototype of its cluster nearest to it
    (cosine of the L2-normalized embeddings; `prototype_ids` is `(clusters, P)`, -1 padded)."""
    order = np.argsort(-probs, axis=1)
    rows = np.arange(len(probs))
    cluster, runner_up = order[:, 0], order[:, 1] if probs.shape[1] > 1 else order[:, 0]
    nearest = np.full(len(probs), -1, dtype=np.int64)
    similarity = np.full(len(probs), np.nan, dtype=np.float32)
    for k, ids in enumerate(prototype_ids):
        ids = ids[ids >= 0]
        members = np.flatnonzero(cluster == k)
        if len(ids) == 0 or len(members) == 0:
            continue
        sims = embeddings[members] @ embeddings[ids].T  # (members, prototypes)
        best = sims.argmax(axis=1)
        nearest[members], similarity[members] = ids[best], sims[np.arange(len(members)), best]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ASSIGNMENT_COLUMNS)
    for i in rows:
        near = int(nearest[i])
        writer.writerow([i, images.source(i), int(cluster[i]), f"{probs[i, cluster[i]]:.5f}",
                         int(probs[i, cluster[i]] > threshold), int(runner_up[i]), f"{probs[i, runner_up[i]]:.5f}",
                         near, images.source(near) if near >= 0 else "",
                         f"{similarity[i]:.5f}" if near >= 0 else ""])
    atomic_write_text(path, text.getvalue())


def summarize_clustering(
    config: RunConfig,
    out_dir: Path,
    train: ImageSet,
    train_probs: np.ndarray,
    train_embeddings: np.ndarray,
    test: Optional[ImageSet],
    test_probs: Optional[np.ndarray],
    health: Health,
    title: str,
    neighbors: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Write prototypes (ids + sources), every image's assignment (`assignments.csv`) and pictures into
    `out_dir`; return the report fragment. With the training images' mined `neighbors`, also the pairs
    of clusters they link most (`merge_suggestions`, and `merge_suggestions.png`)."""
    out_dir = Path(out_dir)
    ids, centers, sims = find_prototypes(
        train_probs, train_embeddings, config.report.prototypes, config.report.confident_share
    )
    padded = np.full((len(ids), config.report.prototypes), -1, dtype=np.int64)
    for k, row in enumerate(ids):
        padded[k, : len(row)] = row
    atomic_save_npy(out_dir / "prototype_ids.npy", padded)
    atomic_save_npy(out_dir / "cluster_centers.npy", centers)
    atomic_write_text(
        out_dir / "prototypes.json",
        json.dumps(
            {
                "clusters": [
                    {"cluster": k, "size": health.sizes[k], "ids": row, "similarity": [round(s, 5) for s in sims[k]],
                     "sources": [train.source(i) for i in row]}
                    for k, row in enumerate(ids)
                ]
            },
            indent=1,
        )
        + "\n",
    )
    write_assignments(out_dir / "assignments.csv", train, train_probs, train_embeddings, padded,
                      config.selflabel.threshold)
    drawn = {
        "prototypes": pictures.prototype_grid(
            train, ids, out_dir / "prototypes.png", cluster_sizes=list(health.sizes), title=f"{title}: prototypes"
        ),
        "cluster_sizes": pictures.cluster_sizes(
            list(health.sizes), out_dir / "cluster_sizes.png", title=f"{title}: images per cluster"
        ),
    }
    pairs = [] if neighbors is None else mutually_linked_clusters(neighbors, train_probs.argmax(axis=1),
                                                                  train_probs.shape[1])
    if pairs:
        drawn["merge_suggestions"] = merge_picture(train, ids, pairs, out_dir / "merge_suggestions.png", title)
    run_dir = out_dir.parent  # paths in the report are relative to the run directory
    entry: dict[str, Any] = {"health": health.to_dict(),
                             "prototypes": str((out_dir / "prototypes.json").relative_to(run_dir)),
                             "assignments": str((out_dir / "assignments.csv").relative_to(run_dir)),
                             "merge_suggestions": [p.to_dict() for p in pairs]}
    metrics = test_metrics(test_probs, test) if test_probs is not None else None
    if metrics is not None:
        entry["test"] = metrics
        num_classes = len(test.class_names) if test.class_names else int(test.labels.max()) + 1
        known = test.labels.numpy() >= 0
        counts = confusion_matrix(test_probs.argmax(axis=1)[known], test.labels.numpy()[known],
                                  test_probs.shape[1], num_classes)
        drawn["confusion_test"] = pictures.confusion_matrix_plot(
            counts, out_dir / "confusion_test.png", class_names=test.class_names,
            title=f"{title}: test split (ACC {metrics['acc']:.3f})",
        )
    entry["pictures"] = {k: str(Path(v).relative_to(run_dir)) for k, v in drawn.items()}
    return entry


MERGE_PROTOTYPES = 5  # prototypes of each cluster shown side by side in merge_suggestions.png


def merge_picture(images: ImageSet, ids: list[list[int]], pairs: list, path: Path, title: str) -> Path:
    """One row per pair of mutually most-linked clusters: the prototypes of one, a gap, the other's,
    labelled with their link and sizes: one look says whether they are one group split in two."""
    rows = [ids[a][:MERGE_PROTOTYPES] + [None] + ids[b][:MERGE_PROTOTYPES] for a, b in (p.clusters for p in pairs)]
    labels = [f"clusters {a} + {b} (link {p.link:.2f}, n={p.sizes[0]}+{p.sizes[1]})" for p in pairs
              for a, b in [p.clusters]]
    return pictures.prototype_grid(images, rows, path, row_labels=labels,
                                   title=f"{title}: clusters most linked by nearest neighbors, side by side")


def health_of(probs: np.ndarray, config: RunConfig, reference: Optional[np.ndarray] = None) -> Health:
    return measure_health(probs, config.selflabel.threshold, reference, config.selflabel.guard_min_cluster_share)
