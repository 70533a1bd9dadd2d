"""Exact cosine nearest neighbors (inner product on L2-normalized features).

Three ways to the same exact search: faiss's flat index on the CPU; the same index on a GPU
when faiss was built with GPU support; and, on a CUDA device when it was not (faiss-cpu, the
usual wheel), an fp32 matrix product and top-k in torch, in row chunks (`torch_knn`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch

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
    features: np.ndarray, k: int, use_gpu: bool = False, gpu_id: int = 0, device: Optional[torch.device] = None
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest other samples of every sample: `(indices (N, k) int64, similarities (N, k) float32)`.

    Exact search. A sample is never its own neighbor, even when duplicates tie with it.
    `use_gpu`: faiss's GPU index on `gpu_id`; else, with a `device`, `torch_knn` on it; else
    faiss on the CPU. The three agree up to the order of equally similar neighbors.
    """
    n = len(features)
    if not 1 <= k < n:
        raise TrainerError(f"neighbors.k={k} needs at least k + 1 = {k + 1} images, the set has {n}")
    if not use_gpu and device is not None:
        idx_t, sims_t = torch_knn(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), k, device)
        return idx_t.numpy(), sims_t.numpy()
    index = build_index(features, use_gpu, gpu_id)
    sims, idx = index.search(np.ascontiguousarray(features, dtype=np.float32), k + 1)
    is_self = idx == np.arange(n)[:, None]
    # Move the sample itself (if found) to the end of its row; otherwise the last hit drops.
    order = np.argsort(is_self, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)[:, :k]
    sims = np.take_along_axis(sims, order, axis=1)[:, :k]
    return idx.astype(np.int64), sims.astype(np.float32)


@contextlib.contextmanager
def _exact_fp32_matmul() -> Iterator[None]:
    """fp32 products in full precision (no TF32) for the duration, as faiss computes them."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def torch_knn(
    features: torch.Tensor, k: int, device: torch.device, chunk_bytes: int = 1 << 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product kNN of every row of `features (N, D)` among the others, by fp32 matrix
    products and top-k on `device`: `(indices (N, k) int64, similarities (N, k) float32)` on the CPU.

    Rows are taken in chunks whose `(chunk, N)` similarity block takes about `chunk_bytes`; the
    results stay on the device until one copy at the end. A row's own column is set to -inf, so a
    sample is never its own neighbor (its duplicates still are). Equal similarities may come out
    in another order than faiss's.
    """
    n = features.shape[0]
    if not 1 <= k < n:
        raise TrainerError(f"neighbors.k={k} needs at least k + 1 = {k + 1} images, the set has {n}")
    x = features.to(device=device, dtype=torch.float32)
    rows = max(1, min(n, chunk_bytes // (4 * n)))
    indices = torch.empty((n, k), dtype=torch.int64, device=device)
    sims = torch.empty((n, k), dtype=torch.float32, device=device)
    with torch.no_grad(), _exact_fp32_matmul():
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            block = x[start:stop] @ x.T  # (rows, N)
            block.diagonal(offset=start).fill_(float("-inf"))  # entries (i, start + i): each row's own column
            sims[start:stop], indices[start:stop] = block.topk(k, dim=1)
    return indices.cpu(), sims.cpu()


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


def knn_backend(use_faiss_gpu: bool, device: torch.device) -> str:
    """How `mine_neighbors` searches: "faiss-gpu", "torch" (a CUDA device, faiss without GPU use) or "faiss-cpu"."""
    if use_faiss_gpu:
        return "faiss-gpu"
    return "torch" if device.type == "cuda" else "faiss-cpu"
