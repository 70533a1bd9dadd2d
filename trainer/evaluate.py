"""Clustering metrics against ground-truth labels (evaluation only: labels never train).

ACC maps clusters to classes one-to-one with the Hungarian algorithm when there are no
more clusters than classes, and many-to-one by majority vote when there are more
(over-clustering). NMI and ARI come from scikit-learn. Samples labelled -1 (unknown, e.g.
STL-10's unlabeled split) are ignored.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """`(num_clusters, num_classes)` int64 counts: row = predicted cluster, column = true class."""
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (pred, labels), 1)
    return counts


def cluster_to_class(counts: np.ndarray) -> np.ndarray:
    """Map each cluster to a class: Hungarian (one-to-one) if clusters <= classes, else majority."""
    num_clusters, num_classes = counts.shape
    if num_clusters <= num_classes:
        rows, cols = linear_sum_assignment(-counts)
        mapping = np.full(num_clusters, -1, dtype=np.int64)
        mapping[rows] = cols
        return mapping
    return counts.argmax(axis=1).astype(np.int64)


def _clean(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.int64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.size} predictions for {labels.size} labels")
    keep = labels >= 0
    return pred[keep], labels[keep]


def clustering_accuracy(
    pred: np.ndarray, labels: np.ndarray, num_clusters: Optional[int] = None, num_classes: Optional[int] = None
) -> float:
    """Fraction of samples whose cluster maps to their class under the best mapping."""
    pred, labels = _clean(pred, labels)
    if labels.size == 0:
        raise ValueError("no labelled samples to evaluate")
    num_clusters = num_clusters or int(pred.max()) + 1
    num_classes = num_classes or int(labels.max()) + 1
    counts = confusion_matrix(pred, labels, num_clusters, num_classes)
    mapping = cluster_to_class(counts)
    return float((mapping[pred] == labels).mean())


def cluster_metrics(
    pred: np.ndarray, labels: np.ndarray, num_clusters: Optional[int] = None, num_classes: Optional[int] = None
) -> dict[str, float]:
    """`{"acc", "nmi", "ari"}` of cluster ids `pred` against `labels` (both `(N,)` ints)."""
    pred_c, labels_c = _clean(pred, labels)
    return {
        "acc": clustering_accuracy(pred_c, labels_c, num_clusters, num_classes),
        "nmi": float(normalized_mutual_info_score(labels_c, pred_c)),
        "ari": float(adjusted_rand_score(labels_c, pred_c)),
    }


def neighbor_purity(neighbors: np.ndarray, labels: np.ndarray) -> float:
    """Mean fraction of each anchor's neighbors `(N, K)` that share its label; unlabelled anchors/neighbors ignored."""
    neighbors = np.asarray(neighbors)
    labels = np.asarray(labels, dtype=np.int64)
    anchor = labels[:, None]
    neigh = labels[neighbors]
    known = (anchor >= 0) & (neigh >= 0)
    if not known.any():
        raise ValueError("no labelled anchor/neighbor pairs to measure purity on")
    return float(((neigh == anchor) & known).sum() / known.sum())
