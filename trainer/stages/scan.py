"""Stage 3: SCAN clustering. Several linear heads on the pretext backbone learn to put each
image and its mined neighbors in the same confident cluster while keeping the clusters in
use (entropy term); the head with the lowest SCAN loss on the training images is kept.

`scan/model.pt` holds every head and `chosen_head`; the report gives each head's loss and,
where labels exist, each head's test ACC (for diagnosis only: selection never sees labels).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from trainer.augment import build_augment
from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.data.base import ImageSet, TensorImageSet, on_device
from trainer.device import autocast, synchronize
from trainer.distributed import SINGLE, Distributed
from trainer.embed import embed_tensor, predict_images
from trainer.errors import CheckpointError, TrainerError
from trainer.losses import scan_loss
from trainer.models.scan_model import ScanModel
from trainer.rundir import RunDir, load_checkpoint
from trainer.stages.common import (augment_generator, finish, load_stage_model, num_clusters, resume, save_epoch,
                                   seed_epoch)
from trainer.stages.neighbors import STAGE as NEIGHBORS
from trainer.stages.pretext import STAGE as PRETEXT
from trainer.stages.sums import EpochSums
from trainer.summary import health_of, summarize_clustering, test_metrics

STAGE = "scan"


# ---------------------------------------------------------------- data: anchors and neighbors


class _Pairs(Dataset):
    def __init__(self, images: ImageSet, partner: torch.Tensor) -> None:
        self.images, self.partner = images, partner

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.images[int(self.partner[index])]


def pair_batches(
    source: torch.Tensor | ImageSet,
    neighbors: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int = 0,
    dist: Distributed = SINGLE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `(anchors, one random mined neighbor of each)`, in a random order.

    `source` is an in-memory tensor indexed by sample (uint8 images or cached features), sliced
    on whatever device it lives on (order and partners move there once, so slicing a CUDA tensor
    needs no host sync), or a lazily decoded ImageSet (decoded in `num_workers` DataLoader workers).
    The order and partners are drawn on the CPU from `generator`, so they do not depend on the
    device. Under torchrun every rank draws the same order and partners and yields its share of
    each global batch.
    """
    n, k = neighbors.shape
    order = torch.randperm(n, generator=generator)
    partner = neighbors.cpu()[torch.arange(n), torch.randint(k, (n,), generator=generator)]
    if dist.enabled:
        order, batch_size = dist.shard(order, batch_size), dist.local_batch(batch_size, "scan.batch_size")
        stop = len(order)
    else:
        stop = (n // batch_size) * batch_size if n >= batch_size else n
    if isinstance(source, torch.Tensor):
        order, partner = order.to(source.device), partner.to(source.device)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield source[idx], source[partner[idx]]
        return
    batches = [order[s : s + batch_size].tolist() for s in range(0, stop, batch_size)]
    yield from DataLoader(_Pairs(source, partner), batch_sampler=batches, num_workers=num_workers)


# ---------------------------------------------------------------- one epoch


def scan_logits(model: ScanModel, x: torch.Tensor, head_only: bool = False, cached: bool = False) -> torch.Tensor:
    """Cluster logits `(H, N, C)` of [0, 1] images `x`, or of backbone features `x (N, D)` when `cached`.

    With `head_only` the backbone runs without gradient (it is frozen).
    """
    if cached:
        features = x.float()
    else:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not head_only), autocast(x.device):
            features = model.features(x)
    with autocast(x.device):
        return model.cluster_logits_from_features(features.detach() if head_only else features)


def train_scan_epoch(
    model: ScanModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    entropy_weight: float,
    augment: Optional[torch.nn.Module] = None,
    head_only: bool = False,
    cached_features: bool = False,
    progress: Optional[tqdm] = None,
    logits_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    dist: Distributed = SINGLE,
    generator: Optional[torch.Generator] = None,
) -> dict[str, Any]:
    """One pass of SCAN over anchor/neighbor batches; returns averaged metrics, per head too.

    Batches hold uint8 images `(B, C, H, W)` (augmented by `augment`, or just scaled when it
    is None), or backbone features `(B, D)` when `cached_features`. Every head's loss is
    summed into one backward pass: the heads share the backbone and train independently.
    `logits_of` replaces `scan_logits` on `model` (under torchrun, its DistributedDataParallel
    form); the loss then covers the gathered global batch, so the entropy term is the entropy
    of the global batch's mean prediction.
    """
    if logits_of is None:
        logits_of = functools.partial(scan_logits, model, head_only=head_only, cached=cached_features)
    model.train()
    if head_only:
        model.backbone.eval()  # frozen backbone: BatchNorm statistics stay as pretext left them
    num_heads = model.cluster_heads.num_heads
    sums = EpochSums(STAGE, "lower scan.lr and restart", device, shape=(3, num_heads))
    started = time.perf_counter()
    for anchors, neighbors in batches:
        b = anchors.shape[0]
        anchors, neighbors = anchors.to(device, non_blocking=True), neighbors.to(device, non_blocking=True)
        with torch.no_grad():
            if cached_features:
                x = torch.cat([anchors, neighbors])
            elif augment is not None:
                x = torch.cat([augment(anchors, generator=generator), augment(neighbors, generator=generator)])
            else:
                x = torch.cat([anchors, neighbors]).float().div_(255)
        logits = logits_of(x)
        pairs = dist.gather(logits.unflatten(1, (2, b)), dim=2)  # (H, 2, global batch, C), one collective
        parts = torch.stack(scan_loss(pairs[:, 0], pairs[:, 1], entropy_weight))  # (3, H): total, consistency, entropy
        b *= dist.world_size
        loss = parts[0].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = sums.add(parts, b)  # on the device; checked for non-finite values at the sync points
        if progress is not None:
            progress.update(b)
            if running is not None:
                progress.set_postfix(loss=f"{running[0].mean().item():.3f}")
    if sums.images == 0:
        raise TrainerError("scan: an epoch saw no batch")
    means = sums.means()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "loss": float(means[0].mean()),
        "consistency": float(means[1].mean()),
        "entropy": float(means[2].mean()),
        "head_loss": [round(float(v), 5) for v in means[0]],
        "images": sums.images,
        "seconds": seconds,
        "images_per_s": sums.images / seconds,
    }


# ---------------------------------------------------------------- head selection


def head_losses(probs: np.ndarray, neighbors: np.ndarray, entropy_weight: float) -> list[dict[str, float]]:
    """SCAN loss of each head over the whole training set, every anchor against all its K neighbors.

    probs `(H, N, C)`, neighbors `(N, K)`. No augmentation, no labels: the selection criterion.
    """
    out = []
    for p in probs.astype(np.float64):
        similarity = np.einsum("nc,nkc->nk", p, p[neighbors])
        consistency = float(-np.log(np.clip(similarity, 1e-8, None)).mean())
        mean = p.mean(axis=0)
        entropy = float(-(mean * np.log(np.clip(mean, 1e-8, None))).sum())
        out.append({"total": consistency - entropy_weight * entropy, "consistency": consistency, "entropy": entropy})
    return out


def select_head(losses: list[dict[str, float]]) -> int:
    """Index of the head with the lowest total SCAN loss (label-free model selection)."""
    return int(np.argmin([entry["total"] for entry in losses]))


# ---------------------------------------------------------------- the stage


def run_scan(
    config: RunConfig, run: RunDir, device: torch.device, progress: bool = True, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Train (or resume) the SCAN heads; select one; summarize. Writes scan/model.pt.

    Under torchrun every rank trains on its share of each global batch; rank 0 alone writes,
    selects the head and summarizes, and the other ranks return an empty entry.
    """
    cfg = config.scan
    stage_dir = run.stage_dir(STAGE)
    checkpoint_path, model_path = stage_dir / "checkpoint.pt", stage_dir / "model.pt"

    # data
    train = load_dataset(config.data, "train", seed=config.seed)
    test = load_dataset(config.data, "test", seed=config.seed)
    fingerprint = train.fingerprint()
    neighbors_path = run.stage_dir(NEIGHBORS) / "neighbors_train.npy"
    if not neighbors_path.exists():
        raise CheckpointError(f"{neighbors_path} is missing: run the neighbors stage first")
    neighbors_np = np.load(neighbors_path)
    if neighbors_np.shape[0] != len(train):
        raise CheckpointError(f"{neighbors_path} has {neighbors_np.shape[0]} rows for {len(train)} images")
    neighbors = torch.from_numpy(neighbors_np)
    batch_size = min(cfg.batch_size, len(train))
    dist.local_batch(batch_size, "scan.batch_size")  # refuse an uneven split before any work

    # networks: the pretext backbone plus fresh heads, initialised from the seed
    model, _ = load_stage_model(run.stage_dir(PRETEXT) / "model.pt", expected_fingerprint=fingerprint)
    model.drop_projection_head()
    torch.manual_seed(config.seed)
    model.add_cluster_heads(num_clusters(config, run), cfg.num_heads)
    dist.prepare(model, config.model.batchnorm)
    model.to(device)
    head_only = cfg.update == "head"
    if head_only:
        model.backbone.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cached = head_only and cfg.augment == "none"
    augment = None if cfg.augment == "none" else build_augment(
        cfg.augment, train.image_size, train.channels, config.augment).to(device)

    start_epoch, elapsed, _ = resume(checkpoint_path, model, optimizer, fingerprint, STAGE, dist.is_main)
    logits_of = dist.parallel(model, functools.partial(scan_logits, head_only=head_only, cached=cached))
    # What pair_batches slices. On CUDA it lives on the device (no copy per step): the cached
    # features always, the uint8 images when they fit; files are decoded by DataLoader workers.
    source: torch.Tensor | ImageSet
    if cached:
        def embed_part(indices: torch.Tensor) -> torch.Tensor:
            return embed_tensor(model, train.subset(indices), device, "raw", config.neighbors.batch_size,
                                config.data.num_workers)

        source = dist.rows_from_shards(len(train), embed_part, device)  # each rank embeds 1/W, all get all
    else:
        resident = on_device(train, device)
        source = resident.images if isinstance(resident, TensorImageSet) else resident

    for epoch in range(start_epoch, cfg.epochs):
        generator = seed_epoch(config.seed, epoch, dist.rank)
        batches = pair_batches(source, neighbors, batch_size, generator, config.data.num_workers, dist)
        with tqdm(total=(len(train) // batch_size) * batch_size, desc=f"scan {epoch + 1}/{cfg.epochs}", unit="img",
                  disable=not progress, leave=False) as bar:
            metrics = train_scan_epoch(model, batches, optimizer, device, cfg.entropy_weight, augment, head_only,
                                       cached, bar, logits_of, dist,
                                       generator=augment_generator(config.seed, epoch, dist.rank, device))
        elapsed += metrics["seconds"]
        if not dist.is_main:
            continue
        run.log_metrics(STAGE, epoch + 1, metrics)
        print(f"scan epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f} (consistency "
              f"{metrics['consistency']:.3f}, entropy {metrics['entropy']:.3f}), {metrics['images_per_s']:.0f} img/s",
              flush=True)
        save_epoch(checkpoint_path, model, config, fingerprint, optimizer, epoch + 1, elapsed)

    if not dist.is_main:
        return {}
    with dist.alone(device):  # the other ranks wait; on CPU rank 0 takes their threads
        # select the head on the training images, label-free
        eval_started = time.perf_counter()
        model.load_state_dict(load_checkpoint(checkpoint_path)["model"])
        eval_batch, workers = config.neighbors.batch_size, config.data.num_workers
        probs, embeddings = predict_images(model, train, device, eval_batch, workers, progress)
        losses = head_losses(probs, neighbors_np, cfg.entropy_weight)
        chosen = select_head(losses)
        finish(checkpoint_path, model_path, chosen_head=chosen, head_losses=losses)

        test_probs = None
        entry: dict[str, Any] = {"status": "done", "epochs": cfg.epochs, "chosen_head": chosen,
                                 "head_losses": [round(h["total"], 5) for h in losses]}
        if test is not None:
            test_probs_all, _ = predict_images(model, test, device, eval_batch, workers)
            test_probs = test_probs_all[chosen]
            per_head = [test_metrics(p, test) for p in test_probs_all]
            if per_head[0] is not None:
                entry["test_acc_per_head"] = [round(m["acc"], 4) for m in per_head]
        health = health_of(probs[chosen], config)
        entry.update(summarize_clustering(config, stage_dir, train, probs[chosen], embeddings, test, test_probs,
                                          health, title=f"SCAN head {chosen}", neighbors=neighbors_np))
        entry["wall_time_s"] = round(elapsed + time.perf_counter() - eval_started, 1)  # training epochs + selection
        entry["model"] = str(model_path.relative_to(run.path))
        return entry
