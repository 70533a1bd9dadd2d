"""Cluster prototypes: the samples closest to the mean embedding of a cluster's most confident samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class MergePair:
    """Two clusters that are each other's most-linked: of all the mined nearest neighbors of one
    cluster's images that fall outside it, most fall in the other, and the other way round.

    `link` is the share of both clusters' neighbor edges that cross between them (0: none; about
    0.5: the boundary between them is arbitrary). Such a pair is the first to look at when there
    may be more clusters than groups: measured on real folders, when K was twice the number of
    classes every such pair was one class split in two, while at the right K the pair was the two
    classes the model confuses most; the link alone does not tell those apart, a look does.
    """

    clusters: tuple[int, int]
    link: float
    sizes: tuple[int, int]

    def to_dict(self) -> dict[str, object]:
        return {"clusters": list(self.clusters), "link": round(self.link, 4), "sizes": list(self.sizes)}


def mutually_linked_clusters(neighbors: np.ndarray, pred: np.ndarray, num_clusters: int) -> list[MergePair]:
    """Every pair of populated clusters that are each other's most-linked, most linked first.

    `neighbors (N, k)`: each image's mined nearest neighbors (indices into the same N images);
    `pred (N,)`: each image's cluster. No label is used.
    """
    pred = np.asarray(pred, dtype=np.int64)
    if neighbors.ndim != 2 or len(neighbors) != len(pred):
        raise ValueError(f"neighbors must be (N, k) for the {len(pred)} clustered images, got {neighbors.shape}")
    edges = np.zeros((num_clusters, num_clusters), dtype=np.int64)
    np.add.at(edges, (np.repeat(pred, neighbors.shape[1]), pred[neighbors.ravel()]), 1)
    sizes = np.bincount(pred, minlength=num_clusters)
    outside = edges.astype(np.float64)
    np.fill_diagonal(outside, -1.0)
    outside[:, sizes == 0] = -1.0
    partner = outside.argmax(axis=1)
    pairs = []
    for a in np.flatnonzero(sizes):
        b = int(partner[a])
        if a < b and partner[b] == a and sizes[b] and edges[a, b] + edges[b, a] > 0:
            link = (edges[a, b] + edges[b, a]) / (edges[a].sum() + edges[b].sum())
            pairs.append(MergePair((int(a), b), float(link), (int(sizes[a]), int(sizes[b]))))
    return sorted(pairs, key=lambda p: -p.link)
