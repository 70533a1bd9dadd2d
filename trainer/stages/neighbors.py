"""Stage 2: embed every training image with the pretext model and mine its K nearest neighbors.

Writes `neighbors/neighbors_train.npy (N, K) int64` (what SCAN trains on), the features
of both splits, and reports label-dependent diagnostics where labels exist: neighbor
purity (fraction of the K neighbors sharing the anchor's class) and the pretext +
k-means baseline on the test split.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.embed import embed_images
from trainer.evaluate import cluster_metrics, neighbor_purity
from trainer.device import use_channels_last
from trainer.neighbors import assign, kmeans, knn_backend, mine_neighbors, resolve_faiss_gpu
from trainer.atomic import atomic_save_npy
from trainer.distributed import SINGLE, Distributed
from trainer.rundir import RunDir
from trainer.stages.common import load_stage_model
from trainer.stages.pretext import STAGE as PRETEXT

STAGE = "neighbors"


def run_neighbors(
    config: RunConfig, run: RunDir, device: torch.device, progress: bool = True, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Embed and mine once. Under torchrun only rank 0 calls this (the pipeline sees to it)."""
    if not dist.is_main:
        raise RuntimeError("the neighbors stage runs on rank 0 alone")
    cfg = config.neighbors
    started = time.perf_counter()
    model_path = run.stage_dir(PRETEXT) / "model.pt"
    train = load_dataset(config.data, "train", seed=config.seed)
    test = load_dataset(config.data, "test", seed=config.seed)
    model, _ = load_stage_model(model_path, expected_fingerprint=train.fingerprint())
    channels_last = use_channels_last(device, config.pretext.channels_last)  # the layout pretext trained in
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def embed(images, kind):
        return embed_images(model, images, device, kind, cfg.batch_size, config.data.num_workers, progress,
                            channels_last)

    use_gpu = resolve_faiss_gpu(cfg.faiss_gpu, device.type)
    gpu_id = device.index or 0
    backend = knn_backend(use_gpu, device)
    features = embed(train, cfg.feature)
    indices, sims = mine_neighbors(features, cfg.k, use_gpu, gpu_id, device if backend == "torch" else None)
    out = run.stage_dir(STAGE)
    atomic_save_npy(out / "neighbors_train.npy", indices)
    atomic_save_npy(out / "features_train.npy", features)

    entry: dict[str, Any] = {
        "status": "done",
        "k": cfg.k,
        "feature": cfg.feature,
        "train_images": len(train),
        "mean_neighbor_similarity": float(sims.mean()),
        "faiss_gpu": use_gpu,
        "knn": backend,
    }
    if train.has_labels:
        labels = train.labels.numpy()
        entry[f"purity@{cfg.k}"] = neighbor_purity(indices, labels)
        if cfg.k >= 5:
            entry["purity@5"] = neighbor_purity(indices[:, :5], labels)

    num_clusters = cfg.kmeans_clusters
    if num_clusters is None and train.class_names is not None:
        num_clusters = len(train.class_names)
    if test is not None:
        test_features = embed(test, cfg.feature)
        atomic_save_npy(out / "features_test.npy", test_features)
        if num_clusters and test.has_labels:
            centroids = kmeans(features, num_clusters, seed=config.seed, use_gpu=use_gpu)
            entry["kmeans_test"] = {
                "clusters": num_clusters,
                **cluster_metrics(assign(test_features, centroids), test.labels.numpy(), num_clusters,
                                  len(test.class_names) if test.class_names else None),
            }
    entry["wall_time_s"] = round(time.perf_counter() - started, 1)
    return entry
