"""Stage 1: SimCLR instance discrimination (two augmented views, NT-Xent).

`train_one_epoch` is a plain function of what it needs and returns averaged metrics;
`run_pretext` composes data, model, augmentation and optimizer, logs one JSON line per
epoch, checkpoints atomically after every epoch and resumes from the last checkpoint.
Every epoch's shuffle order and augmentation randomness derive from (seed, epoch), so a
resumed run repeats exactly the epoch that was interrupted.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import torch
from tqdm import tqdm

from trainer.augment import build_augment
from trainer.config import PretextConfig, RunConfig
from trainer.data import dataset_stats, load_dataset
from trainer.data.base import ImageSet, iterate_batches, on_device
from trainer.device import autocast, synchronize, use_channels_last
from trainer.distributed import SINGLE, Distributed
from trainer.errors import TrainerError
from trainer.losses import nt_xent
from trainer.models.scan_model import ScanModel
from trainer.rundir import RunDir
from trainer.stages.common import augment_generator, finish, resume, save_epoch, seed_epoch
from trainer.stages.sums import EpochSums

STAGE = "pretext"


def cosine_lr(step: int, total_steps: int, base_lr: float, decay_rate: float = 0.1, warmup_steps: int = 0) -> float:
    """Learning rate at `step`: linear warmup, then cosine from base_lr to base_lr * decay_rate**3."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    floor = base_lr * decay_rate**3
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_one_epoch(
    model: ScanModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    augment: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    start_step: int,
    device: torch.device,
    temperature: float,
    channels_last: bool = False,
    progress: Optional[tqdm] = None,
    project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    dist: Distributed = SINGLE,
    generator: Optional[torch.Generator] = None,
) -> dict[str, float]:
    """One pass over `batches` of uint8 images `(B, C, H, W)`; returns averaged metrics.

    The views are drawn from `generator` (on `device`; torch's default generator when None).

    `project` replaces `model.project` (e.g. a torch.compile'd or DistributedDataParallel
    version of it). Under torchrun `batches` hold this rank's share of each global batch and
    the loss is NT-Xent over the gathered global batch (every rank's views are negatives).
    The loss is summed on the device and read at sync points only (`EpochSums`): a non-finite
    loss raises TrainerError rather than training on garbage, on CUDA up to `CHECK_EVERY` steps
    after it happened. `seconds` covers the device work (the clock is read after a synchronize).
    """
    project = project or model.project
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sums = EpochSums(STAGE, "lower pretext.lr and restart", device, first_step=start_step)
    step, lr, started = start_step, 0.0, time.perf_counter()
    for _, images in batches:
        images = images.to(device, non_blocking=True)
        with torch.no_grad():
            views = torch.cat([augment(images, generator=generator), augment(images, generator=generator)])
            views = views.contiguous(memory_format=memory_format)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device):
            z = project(views)
        z1, z2 = dist.gather(z.float().unflatten(0, (2, -1)), dim=1)  # both views, one collective
        loss = nt_xent(z1, z2, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        batch = images.shape[0] * dist.world_size
        running = sums.add(loss, batch)
        if progress is not None:
            progress.update(batch)
            if running is not None:
                progress.set_postfix(loss=f"{running.item():.3f}", lr=f"{lr:.3g}")
    if sums.images == 0:
        raise TrainerError("pretext: an epoch saw no batch (fewer images than 2?)")
    mean_loss = sums.means().item()  # the one host read of the epoch (and the last finiteness check)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "loss": mean_loss,
        "lr": lr,
        "images": sums.images,
        "seconds": seconds,
        "images_per_s": sums.images / seconds,
        "step": step,
    }


def build_optimizer(model: torch.nn.Module, cfg: PretextConfig) -> torch.optim.SGD:
    """SGD; no weight decay on biases and BatchNorm parameters (1-d tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )


def build_pretext_model(config: RunConfig, train: ImageSet) -> ScanModel:
    mean, std = dataset_stats(config.data, train.channels)
    return ScanModel.from_config(config.model, in_channels=train.channels, mean=mean, std=std)


class PretextTraining(NamedTuple):
    model: ScanModel
    augment: torch.nn.Module
    optimizer: torch.optim.SGD
    channels_last: bool


def pretext_training(config: RunConfig, train: ImageSet, device: torch.device, dist: Distributed = SINGLE
                     ) -> PretextTraining:
    """The seeded model (global BatchNorm under torchrun when `model.batchnorm` says so) on `device`,
    its SimCLR augmentation and optimizer: what `run_pretext` and the benchmarks train."""
    torch.manual_seed(config.seed)  # initialised from the seed, so a run is reproducible
    model = dist.prepare(build_pretext_model(config, train), config.model.batchnorm)
    channels_last = use_channels_last(device, config.pretext.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    augment = build_augment("simclr", train.image_size, train.channels, config.augment).to(device)
    return PretextTraining(model, augment, build_optimizer(model, config.pretext), channels_last)


def run_pretext(
    config: RunConfig, run: RunDir, device: torch.device, progress: bool = True, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Train (or resume) the pretext model; returns the report entry. Writes pretext/model.pt.

    Under torchrun every rank trains on its share of each global batch (`pretext.batch_size`
    is the global batch); rank 0 alone writes, and the other ranks return an empty entry.
    """
    cfg = config.pretext
    stage_dir = run.stage_dir(STAGE)
    checkpoint_path, model_path = stage_dir / "checkpoint.pt", stage_dir / "model.pt"

    # data
    train = load_dataset(config.data, "train", seed=config.seed)
    if len(train) < 2:
        raise TrainerError(f"pretext: the training set has {len(train)} image(s); SimCLR needs at least 2")
    fingerprint = train.fingerprint()
    batch_size = min(cfg.batch_size, len(train))
    local_batch = dist.local_batch(batch_size, "pretext.batch_size")
    steps_per_epoch = len(train) // batch_size
    total_steps = steps_per_epoch * cfg.epochs

    model, augment, optimizer, channels_last = pretext_training(config, train, device, dist)

    # resume (every rank loads the same checkpoint), then wrap for DistributedDataParallel
    start_epoch, elapsed, _ = resume(checkpoint_path, model, optimizer, fingerprint, STAGE, dist.is_main)
    project = dist.parallel(model, ScanModel.project)
    if cfg.compile:
        project = torch.compile(project)

    def lr_at(step: int) -> float:
        return cosine_lr(step, total_steps, cfg.lr, cfg.lr_decay_rate, cfg.warmup_epochs * steps_per_epoch)

    metrics: dict[str, float] = {}
    # on CUDA the whole uint8 set moves to the device once (when it fits), and batches are sliced there
    resident = on_device(train, device) if start_epoch < cfg.epochs else train
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(len(train), generator=seed_epoch(config.seed, epoch, dist.rank))
        batches = iterate_batches(
            resident, local_batch, order=dist.shard(order, batch_size), drop_last=True,
            num_workers=config.data.num_workers,
        )
        bar = tqdm(
            total=steps_per_epoch * batch_size,
            desc=f"pretext {epoch + 1}/{cfg.epochs}",
            unit="img",
            disable=not progress,
            leave=False,
        )
        with bar:
            metrics = train_one_epoch(
                model, batches, augment, optimizer, lr_at, epoch * steps_per_epoch, device,
                cfg.temperature, channels_last, bar, project, dist,
                generator=augment_generator(config.seed, epoch, dist.rank, device),
            )
        elapsed += metrics["seconds"]
        if not dist.is_main:
            continue
        run.log_metrics(STAGE, epoch + 1, metrics)
        print(
            f"pretext epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}, "
            f"{metrics['images_per_s']:.0f} img/s",
            flush=True,
        )
        save_epoch(checkpoint_path, model, config, fingerprint, optimizer, epoch + 1, elapsed)

    if not dist.is_main:
        return {}
    final = finish(checkpoint_path, model_path)
    logged = run.read_metrics(STAGE)  # the last epoch may have run before a resume
    last = logged[-1] if logged else metrics
    return {
        "status": "done",
        "epochs": cfg.epochs,
        "train_images": len(train),
        "final_loss": last.get("loss"),
        "images_per_s": last.get("images_per_s"),
        "wall_time_s": round(final["elapsed"], 1),
        "device": str(device),
        "model": str(model_path.relative_to(run.path)),
    }
