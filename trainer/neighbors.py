"""Exact cosine nearest neighbors with faiss (inner product on L2-normalized features)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from trainer.errors import TrainerError


def _faiss():
    try:
        import faiss  # noqa: PLC0415 - heavy optional dependency, imported where used
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise TrainerError("faiss is not installed: pip install faiss-cpu (or faiss-gpu on CUDA machines)") from exc
    return faiss


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(features: np.ndarray, use_gpu: bool = False, gpu_id: int = 0):
    """A flat inner-product index over `(N, D)` float32 features (on a GPU when asked and possible)."""
    faiss = _faiss()
    features = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(features.shape[1])
    if use_gpu:
        if not faiss_has_gpu():
            raise TrainerError("neighbors.faiss_gpu is true but this faiss build has no GPU support (pip install faiss-gpu)")
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu_id, index)
    index.add(features)
    return index


def mine_neighbors(
    features: np.ndarray, k: int, use_gpu: bool = False, gpu_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest other samples of every sample: `(indices (N, k) int64, similarities (N, k) float32)`.

    Exact search. A sample is never its own neighbor, even when duplicates tie with it.
    """
    n = len(features)
    if not 1 <= k < n:
        raise TrainerError(f"neighbors.k={k} needs at least k + 1 = {k + 1} images, the set has {n}")
    index = build_index(features, use_gpu, gpu_id)
    sims, idx = index.search(np.ascontiguousarray(features, dtype=np.float32), k + 1)
    is_self = idx == np.arange(n)[:, None]
    # Move the sample itself (if found) to the end of its row; otherwise the last hit drops.
    order = np.argsort(is_self, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)[:, :k]
    sims = np.take_along_axis(sims, order, axis=1)[:, :k]
    return idx.astype(np.int64), sims.astype(np.float32)


def kmeans(features: np.ndarray, num_clusters: int, seed: int = 0, iterations: int = 50, use_gpu: bool = False) -> np.ndarray:
    """k-means centroids `(num_clusters, D)` of `(N, D)` features (faiss, spherical for normalized features)."""
    faiss = _faiss()
    km = faiss.Kmeans(
        features.shape[1], num_clusters, niter=iterations, seed=seed, spherical=True, gpu=use_gpu, verbose=False,
        max_points_per_centroid=100_000,
    )
    km.train(np.ascontiguousarray(features, dtype=np.float32))
    return km.centroids


def assign(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (inner product) of each row: `(N,)` int64."""
    _, idx = build_index(centroids).search(np.ascontiguousarray(features, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def resolve_faiss_gpu(setting: Optional[bool], device_type: str) -> bool:
    if setting is not None:
        return setting
    return device_type == "cuda" and faiss_has_gpu()
