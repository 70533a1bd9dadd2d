"""Cluster prototypes: the samples closest to the mean embedding of a cluster's most confident samples."""

from __future__ import annotations

import math

import numpy as np


def find_prototypes(
    probs: np.ndarray, embeddings: np.ndarray, per_cluster: int = 8, confident_share: float = 0.2
) -> tuple[list[list[int]], np.ndarray, list[list[float]]]:
    """Prototypes of each cluster, most central first.

    probs `(N, C)`, embeddings `(N, D)` L2-normalized. For cluster k: its members (argmax k),
    the `confident_share` of them with the highest p(k) (at least one), their mean embedding
    normalized to the center, then the `per_cluster` members most similar to that center.
    Returns `(ids per cluster, centers (C, D) with zero rows for empty clusters, cosine
    similarities per cluster)`.
    """
    if not 0 < confident_share <= 1:
        raise ValueError(f"confident_share must be within (0, 1], got {confident_share}")
    pred = probs.argmax(axis=1)
    num_clusters = probs.shape[1]
    centers = np.zeros((num_clusters, embeddings.shape[1]), dtype=np.float32)
    ids: list[list[int]] = []
    sims: list[list[float]] = []
    for k in range(num_clusters):
        members = np.flatnonzero(pred == k)
        if members.size == 0:
            ids.append([])
            sims.append([])
            continue
        top = max(1, math.ceil(confident_share * members.size))
        confident = members[np.argsort(-probs[members, k], kind="stable")[:top]]
        center = embeddings[confident].mean(axis=0)
        center /= max(float(np.linalg.norm(center)), 1e-12)
        centers[k] = center
        similarity = embeddings[members] @ center
        order = np.argsort(-similarity, kind="stable")[:per_cluster]
        ids.append([int(i) for i in members[order]])
        sims.append([float(s) for s in similarity[order]])
    return ids, centers, sims
