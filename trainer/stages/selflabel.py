"""Stage 4: self-labeling, guarded against collapse.

The SCAN model's chosen head predicts on weakly augmented images; predictions above the
confidence threshold become pseudo-labels, and the network learns them with class-balanced
cross entropy on strongly augmented views (`selflabel.augment: strong`, the paper's choice)
or on other weak views (`weak`). After every epoch the model's label-free health
on the training images (no augmentation) is compared with the SCAN model's by the
`CollapseGuard`. An epoch that fails ends the stage; the best healthy epoch (highest
confident fraction) is kept, or the SCAN model itself when no epoch improved on it, and the
report says which and why.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Iterable, Optional

import torch
from tqdm import tqdm

from trainer.augment import build_augment
from trainer.config import RunConfig, SelfLabelConfig
from trainer.data import load_dataset
from trainer.data.base import iterate_batches, on_device
from trainer.device import autocast, synchronize
from trainer.distributed import SINGLE, Distributed
from trainer.embed import predict_images
from trainer.errors import TrainerError
from trainer.health import CollapseGuard
from trainer.losses import selflabel_loss
from trainer.models.scan_model import ScanModel
from trainer.atomic import atomic_torch_save
from trainer.rundir import RunDir, load_checkpoint
from trainer.stages.common import (
    augment_generator, checkpoint_payload, load_stage_model, resume, save_epoch, seed_epoch,
)
from trainer.stages.scan import STAGE as SCAN
from trainer.stages.sums import EpochSums
from trainer.summary import health_of, summarize_clustering

STAGE = "selflabel"


class EMA:
    """Exponential moving average of a model's weights (floating tensors); other buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for avg, live in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(live, 1.0 - self.decay)
            else:
                avg.copy_(live)


def train_selflabel_epoch(
    model: ScanModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    weak: torch.nn.Module,
    learn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    cfg: SelfLabelConfig,
    ema: Optional[EMA] = None,
    progress: Optional[tqdm] = None,
    logits_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    dist: Distributed = SINGLE,
    generator: Optional[torch.Generator] = None,
) -> dict[str, float]:
    """One pass: pseudo-labels from `weak` views (no gradient), cross entropy on `learn` views (strong or weak).

    Both views are drawn from `generator` (on `device`; torch's default generator when None).

    `logits_of` replaces `model.cluster_logits` for the learned views (under torchrun, its
    DistributedDataParallel form); the loss then covers the gathered global batch, so the
    confidence mask and the class-balancing weights are those of the global batch. Loss and
    pseudo-labelled fraction are summed on the device and read at sync points only
    (`EpochSums`): a non-finite loss raises TrainerError, on CUDA up to `CHECK_EVERY` steps late.
    """
    logits_of = logits_of or model.cluster_logits
    model.train()
    if cfg.update == "head":
        model.backbone.eval()
    sums = EpochSums(STAGE, "lower selflabel.lr and restart", device, shape=(2,))
    started = time.perf_counter()
    for _, images in batches:
        images = images.to(device, non_blocking=True)
        with torch.no_grad():
            weak_views, learn_views = weak(images, generator=generator), learn(images, generator=generator)
            model.eval()
            with autocast(device):
                weak_logits = model.cluster_logits(weak_views)[0]
            model.train()
            if cfg.update == "head":
                model.backbone.eval()
        with autocast(device):
            learn_logits = logits_of(learn_views)[0]
        weak_logits, learn_logits = dist.gather(torch.stack([weak_logits.float(), learn_logits.float()]), dim=1)
        loss, fraction = selflabel_loss(weak_logits, learn_logits, cfg.threshold, cfg.class_balance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        b = images.shape[0] * dist.world_size
        running = sums.add(torch.stack([loss, fraction]), b)  # on the device; checked at the sync points
        if progress is not None:
            progress.update(b)
            if running is not None:
                progress.set_postfix(loss=f"{running[0].item():.3f}", confident=f"{running[1].item():.2f}")
    if sums.images == 0:
        raise TrainerError("selflabel: an epoch saw no batch")
    means = sums.means()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"loss": means[0].item(), "pseudo_labelled": means[1].item(), "images": sums.images, "seconds": seconds,
            "images_per_s": sums.images / seconds}


def run_selflabel(
    config: RunConfig, run: RunDir, device: torch.device, progress: bool = True, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Self-label from the SCAN model under the collapse guard. Writes selflabel/model.pt.

    Under torchrun every rank trains on its share of each global batch; rank 0 alone measures
    health, applies the guard (its verdict is broadcast), writes and summarizes, and the other
    ranks return an empty entry.
    """
    cfg = config.selflabel
    stage_dir = run.stage_dir(STAGE)
    checkpoint_path, best_path, model_path = (stage_dir / n for n in ("checkpoint.pt", "best.pt", "model.pt"))
    if not cfg.enabled:
        return {"status": "done", "skipped": "selflabel.enabled is false", "kept": "scan model"}

    # data
    train = load_dataset(config.data, "train", seed=config.seed)
    test = load_dataset(config.data, "test", seed=config.seed)
    fingerprint = train.fingerprint()
    batch_size = min(cfg.batch_size, len(train))
    local_batch = dist.local_batch(batch_size, "selflabel.batch_size")
    workers, eval_batch = config.data.num_workers, config.neighbors.batch_size

    # the starting point: the SCAN model with its chosen head, and its health
    model, scan_state = load_stage_model(run.stage_dir(SCAN) / "model.pt", expected_fingerprint=fingerprint)
    if "chosen_head" not in scan_state:
        raise TrainerError(f"{run.stage_dir(SCAN) / 'model.pt'} has no chosen head: rerun the scan stage")
    model.keep_head(scan_state["chosen_head"])
    dist.prepare(model, config.model.batchnorm)
    model.to(device)
    baseline_confident = None
    if dist.is_main:
        with dist.alone(device):
            start_probs, _ = predict_images(model, train, device, eval_batch, workers, progress)
        reference = start_probs[0].argmax(axis=1)
        baseline = health_of(start_probs[0], config, reference)
        guard = CollapseGuard(baseline, cfg.guard_min_agreement, cfg.guard_entropy_drop)
        baseline_confident = baseline.confident_fraction
    start_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if cfg.update == "head":
        model.backbone.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    weak = build_augment("weak", train.image_size, train.channels, config.augment).to(device)
    learn = build_augment(cfg.augment, train.image_size, train.channels, config.augment).to(device)
    start_epoch, elapsed, state = resume(checkpoint_path, model, optimizer, fingerprint, STAGE, dist.is_main)
    learn_logits_of = dist.parallel(model, ScanModel.cluster_logits)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    if ema is not None and "ema" in state:
        ema.model.load_state_dict(state["ema"])
    best = state.get("best", {"epoch": 0, "confident_fraction": baseline_confident})
    stop_reason: Optional[str] = state.get("stop_reason")

    epoch = start_epoch
    # on CUDA the whole uint8 set moves to the device once (when it fits), and batches are sliced there
    resident = on_device(train, device) if stop_reason is None and epoch < cfg.epochs else train
    while stop_reason is None and epoch < cfg.epochs:
        order = torch.randperm(len(train), generator=seed_epoch(config.seed, epoch, dist.rank))
        batches = iterate_batches(resident, local_batch, order=dist.shard(order, batch_size), drop_last=True,
                                  num_workers=workers)
        with tqdm(total=len(train), desc=f"selflabel {epoch + 1}/{cfg.epochs}", unit="img", disable=not progress,
                  leave=False) as bar:
            metrics = train_selflabel_epoch(model, batches, weak, learn, optimizer, device, cfg, ema, bar,
                                            learn_logits_of, dist,
                                            generator=augment_generator(config.seed, epoch, dist.rank, device))
        epoch += 1
        if not dist.is_main:
            stop_reason = dist.broadcast(None)  # rank 0's guard verdict
            continue
        evaluated = ema.model if ema is not None else model
        with dist.alone(device):
            probs, _ = predict_images(evaluated, resident, device, eval_batch, workers)
        health = health_of(probs[0], config, reference)
        problems = guard.problems(health)
        elapsed += metrics["seconds"]
        metrics.update({"health": health.to_dict(), "guard": problems})
        run.log_metrics(STAGE, epoch, metrics)
        print(f"selflabel epoch {epoch}/{cfg.epochs}: loss {metrics['loss']:.4f}, pseudo-labelled "
              f"{metrics['pseudo_labelled']:.2f}, confident {health.confident_fraction:.3f}, populated clusters "
              f"{health.populated}/{health.clusters}, size entropy {health.size_entropy:.3f}"
              + (f" -- GUARD: {'; '.join(problems)}" if problems else ""), flush=True)
        if problems:
            stop_reason = f"epoch {epoch}: " + "; ".join(problems)
        elif health.confident_fraction > best["confident_fraction"]:
            best = {"epoch": epoch, "confident_fraction": health.confident_fraction}
            atomic_torch_save(best_path, checkpoint_payload(evaluated, config, fingerprint, epoch=epoch))
        extra = {"best": best, "stop_reason": stop_reason}
        if ema is not None:
            extra["ema"] = ema.model.state_dict()
        save_epoch(checkpoint_path, model, config, fingerprint, optimizer, epoch, elapsed, **extra)
        dist.broadcast(stop_reason)

    if not dist.is_main:
        return {}
    with dist.alone(device):  # the other ranks wait; on CPU rank 0 takes their threads
        # keep the best healthy state; the SCAN model when nothing beat it
        eval_started = time.perf_counter()
        if best["epoch"] > 0:
            model.load_state_dict(load_checkpoint(best_path)["model"])
            kept = f"selflabel epoch {best['epoch']}"
        else:
            model.load_state_dict(start_state)
            kept = "scan model (no self-labeling epoch improved on it)"
        probs, embeddings = predict_images(model, train, device, eval_batch, workers, progress)
        final_health = health_of(probs[0], config, reference)
        refusal = guard.rejects_as_final(final_health)
        if refusal:  # cannot happen for a kept epoch that passed the guard; a last line of defence
            model.load_state_dict(start_state)
            kept = "scan model (final check refused the self-labelled model: " + "; ".join(refusal) + ")"
            probs, embeddings = predict_images(model, train, device, eval_batch, workers, progress)
            final_health = health_of(probs[0], config, reference)
        atomic_torch_save(model_path, checkpoint_payload(model, config, fingerprint, chosen_head=0, kept=kept,
                                                         epochs_run=epoch, stop_reason=stop_reason))
        test_probs = predict_images(model, test, device, eval_batch, workers)[0][0] if test is not None else None
        entry: dict[str, Any] = {
            "status": "done",
            "epochs_run": epoch,
            "epochs": cfg.epochs,
            "stopped_early": stop_reason is not None,
            "stop_reason": stop_reason,
            "kept": kept,
            "start_health": baseline.to_dict(),
        }
        entry.update(summarize_clustering(config, stage_dir, train, probs[0], embeddings, test, test_probs,
                                          final_health, title="self-label"))
        entry["wall_time_s"] = round(elapsed + time.perf_counter() - eval_started, 1)
        entry["model"] = str(model_path.relative_to(run.path))
        return entry
