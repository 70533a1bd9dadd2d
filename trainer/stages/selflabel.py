"""Stage 4: self-labeling, guarded against collapse.

A teacher predicts on weakly augmented images; predictions above the confidence threshold
become pseudo-labels, and the network learns them with class-balanced cross entropy on strongly
augmented views (`selflabel.augment: strong`, the paper's choice) or on other weak views
(`weak`). The teacher (`selflabel.teacher`) is an exponential moving average of the weights
(`ema`, the default), the model as the epoch began (`epoch`), or the model being trained (`live`,
the paper's), which labels its own drift within the epoch (the README has the measurements).
After every epoch the model's label-free health on the training images (no augmentation) is
compared with the SCAN model's by the `CollapseGuard`. An epoch that fails ends the stage; the
best healthy epoch (highest confident fraction) is kept, or the SCAN model itself when no epoch
improved on it, and the report says which and why.

Three layers: `train_selflabel_epoch` is one pass and the only place pseudo-labels are made;
`GuardedSelfLabeling` is the guarded loop around it (starting health, optimizer, views, the
epochs, the guard, the best state, the final check), shared with scan_serve.finetune, whose
jobs fine-tune a served model the same way; `run_selflabel` is the stage: data, the SCAN model,
checkpoints and resume, the report.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

import numpy as np
import torch
from tqdm import tqdm

from trainer.augment import build_augment
from trainer.config import AugmentConfig, RunConfig, SelfLabelConfig
from trainer.data import load_dataset
from trainer.data.base import ImageSet, iterate_batches, on_device
from trainer.device import autocast, synchronize
from trainer.distributed import SINGLE, Distributed
from trainer.embed import predict_images
from trainer.errors import TrainerError
from trainer.health import CollapseGuard, Health, measure_health
from trainer.losses import selflabel_loss
from trainer.models.scan_model import ScanModel
from trainer.atomic import atomic_torch_save
from trainer.rundir import RunDir, load_checkpoint
from trainer.stages.common import (
    augment_generator, checkpoint_payload, load_stage_model, resume, save_epoch, seed_epoch,
)
from trainer.stages.neighbors import STAGE as NEIGHBORS
from trainer.stages.scan import STAGE as SCAN
from trainer.stages.sums import EpochSums
from trainer.summary import summarize_clustering

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


class EpochSnapshot:
    """The model as it was when the epoch began (`refresh`), in eval mode: a teacher whose labels do not
    move within an epoch, whatever the number of steps, and follow the model from epoch to epoch."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def refresh(self, model: torch.nn.Module) -> None:
        self.model.load_state_dict(model.state_dict())

    def update(self, model: torch.nn.Module) -> None:
        """Nothing within an epoch."""


Teacher = EMA | EpochSnapshot


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
    teacher: Optional[Teacher] = None,
) -> dict[str, float]:
    """One pass: pseudo-labels from `weak` views (no gradient), cross entropy on `learn` views (strong or weak).

    The pseudo-labels come from `teacher.model` when given (`teacher.update` follows every step, as
    does `ema`'s), else from `model` itself in eval mode. Both views are drawn from
    `generator` (on `device`; torch's default generator when None).

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
            labeller = teacher.model if teacher is not None else model.eval()
            with autocast(device):
                weak_logits = labeller.cluster_logits(weak_views)[0]
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
        for average in {id(a): a for a in (ema, teacher) if a is not None}.values():
            average.update(model)
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


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `model`'s state on the host, untouched by further training."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class BestState(Protocol):
    """Where `GuardedSelfLabeling` keeps its best healthy state: `save` at each new best, `load` at the end."""

    def save(self, model: ScanModel, epoch: int) -> None: ...

    def load(self) -> dict[str, torch.Tensor]: ...


class BestInMemory:
    """The best state as a copy on the host, for a caller that never resumes (a fine-tuning job)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def save(self, model: ScanModel, epoch: int) -> None:
        self.state = state_copy(model)

    def load(self) -> dict[str, torch.Tensor]:
        return self.state


@dataclass(frozen=True)
class BestFile:
    """The best state in `path` (selflabel/best.pt, written atomically), so a resumed stage still has it."""

    path: Path
    config: RunConfig
    fingerprint: str

    def save(self, model: ScanModel, epoch: int) -> None:
        atomic_torch_save(self.path, checkpoint_payload(model, self.config, self.fingerprint, epoch=epoch))

    def load(self) -> dict[str, torch.Tensor]:
        return load_checkpoint(self.path)["model"]


@dataclass(frozen=True)
class SelfLabelResult:
    """What `GuardedSelfLabeling.finish` leaves the model holding, measured on the training images."""

    kept_epoch: int  # 0: the starting model
    health: Health
    probs: np.ndarray  # (N, C) float32
    embeddings: np.ndarray  # (N, D) float32, L2-normalized
    refusal: list[str]  # why the final check refused the best state (the starting model is kept then)


EpochHook = Callable[[int, dict[str, Any], Health, list[str]], None]


class GuardedSelfLabeling:
    """Self-labeling epochs under the collapse guard, until `cfg.epochs` or the guard's first objection.

    Construction measures the starting model's health on `images` (no augmentation; the guard's
    baseline and the reference its agreement is measured against), keeps a copy of the starting
    state, and builds the optimizer and the weak and learn views. `run` trains, measures health
    after every epoch, stops on the guard's problems, keeps the best healthy epoch (highest confident
    fraction) in `keep_best` (default: in memory), and calls `on_epoch(epoch, metrics, health,
    problems)` after each epoch's bookkeeping: the caller logs, reports progress and checkpoints
    there. `finish` leaves the model holding the best state, or the starting one.

    The selflabel stage and scan_serve's fine-tuning jobs both train through this class. Under
    torchrun every rank trains on its share of each global batch; rank 0 alone measures health,
    applies the guard, calls `on_epoch` and broadcasts its verdict; `finish` is rank 0's only.
    `eval_batch` and `num_workers` are those of the health predictions (`num_workers` also loads
    training batches of a set decoded lazily).
    """

    def __init__(
        self,
        model: ScanModel,
        images: ImageSet,
        device: torch.device,
        cfg: SelfLabelConfig,
        augment: AugmentConfig,
        seed: int,
        *,
        keep_best: Optional[BestState] = None,
        dist: Distributed = SINGLE,
        eval_batch: int = 512,
        num_workers: int = 0,
        progress: bool = False,
    ) -> None:
        self.model, self.images, self.device, self.cfg, self.seed, self.dist = model, images, device, cfg, seed, dist
        self.keep_best = keep_best if keep_best is not None else BestInMemory()
        self.eval_batch, self.num_workers, self.progress = eval_batch, num_workers, progress
        self.batch_size = min(cfg.batch_size, len(images))
        self.local_batch = dist.local_batch(self.batch_size, "selflabel.batch_size")
        self.baseline: Optional[Health] = None  # rank 0's only, as are the reference and the guard
        self.reference: Optional[np.ndarray] = None
        self.guard: Optional[CollapseGuard] = None
        if dist.is_main:
            with dist.alone(device):
                start_probs, _ = self._predict(model, images, progress)
            self.reference = start_probs.argmax(axis=1)
            self.baseline = self._health(start_probs)
            self.guard = CollapseGuard(self.baseline, cfg.guard_min_agreement, cfg.guard_entropy_drop)
        self.start_state = state_copy(model)
        if cfg.update == "head":
            model.backbone.requires_grad_(False)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.weak = build_augment("weak", images.image_size, images.channels, augment).to(device)
        self.learn = build_augment(cfg.augment, images.image_size, images.channels, augment).to(device)
        self.ema: Optional[EMA] = None
        self.teacher: Optional[Teacher] = None
        self.epoch = 0  # epochs done
        baseline_confident = None if self.baseline is None else self.baseline.confident_fraction
        self.best: dict[str, Any] = {"epoch": 0, "confident_fraction": baseline_confident}
        self.stop_reason: Optional[str] = None

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond model and optimizer to `run` on from it: the best epoch, the guard's
        verdict and the averaged weights (EMA, teacher)."""
        state: dict[str, Any] = {"best": self.best, "stop_reason": self.stop_reason}
        for key, average in (("ema", self.ema), ("teacher", self.teacher)):
            if isinstance(average, EMA):  # an epoch snapshot is the model an epoch starts from
                state[key] = average.model.state_dict()
        return state

    def run(self, on_epoch: EpochHook, start_epoch: int = 0, resumed: Optional[dict[str, Any]] = None) -> None:
        """Train epochs `start_epoch + 1 ..` until `cfg.epochs` or a guard problem. A resumed caller passes the
        epoch its checkpoint ends at, the checkpoint as `resumed` (its `checkpoint_state` entries), and has
        loaded model and optimizer from it."""
        cfg, dist, device, model = self.cfg, self.dist, self.device, self.model
        resumed = resumed or {}
        self.epoch = start_epoch
        self.best = resumed.get("best", self.best)
        self.stop_reason = resumed.get("stop_reason")
        learn_logits_of = dist.parallel(model, ScanModel.cluster_logits)
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        if cfg.teacher == "ema":
            self.teacher = self.ema if cfg.ema == cfg.teacher_decay else EMA(model, cfg.teacher_decay)
        elif cfg.teacher == "epoch":
            self.teacher = EpochSnapshot(model)
        for key, average in (("ema", self.ema), ("teacher", self.teacher)):
            if average is not None and key in resumed:
                average.model.load_state_dict(resumed[key])

        # on CUDA the whole uint8 set moves to the device once (when it fits), and batches are sliced there
        training = self.stop_reason is None and self.epoch < cfg.epochs
        resident = on_device(self.images, device) if training else self.images
        while self.stop_reason is None and self.epoch < cfg.epochs:
            epoch = self.epoch
            if isinstance(self.teacher, EpochSnapshot):
                self.teacher.refresh(model)
            order = torch.randperm(len(self.images), generator=seed_epoch(self.seed, epoch, dist.rank))
            batches = iterate_batches(resident, self.local_batch, order=dist.shard(order, self.batch_size),
                                      drop_last=True, num_workers=self.num_workers)
            with tqdm(total=len(self.images), desc=f"selflabel {epoch + 1}/{cfg.epochs}", unit="img",
                      disable=not self.progress, leave=False) as bar:
                metrics = train_selflabel_epoch(model, batches, self.weak, self.learn, self.optimizer, device, cfg,
                                                self.ema, bar, learn_logits_of, dist,
                                                generator=augment_generator(self.seed, epoch, dist.rank, device),
                                                teacher=self.teacher)
            self.epoch += 1
            if not dist.is_main:
                self.stop_reason = dist.broadcast(None)  # rank 0's guard verdict
                continue
            evaluated = self.ema.model if self.ema is not None else model
            with dist.alone(device):
                probs, _ = self._predict(evaluated, resident)
            health = self._health(probs)
            problems = self._guard().problems(health)
            if problems:
                self.stop_reason = f"epoch {self.epoch}: " + "; ".join(problems)
            elif health.confident_fraction > self.best["confident_fraction"]:
                self.best = {"epoch": self.epoch, "confident_fraction": health.confident_fraction}
                self.keep_best.save(evaluated, self.epoch)
            on_epoch(self.epoch, metrics, health, problems)
            dist.broadcast(self.stop_reason)

    def finish(self) -> SelfLabelResult:
        """Rank 0: load the best state (the starting one when no epoch improved on it) and check it once more
        with `CollapseGuard.rejects_as_final`; a refused state gives way to the starting model."""
        kept = self.best["epoch"]
        self.model.load_state_dict(self.keep_best.load() if kept else self.start_state)
        probs, embeddings = self._predict(self.model, self.images, self.progress)
        health = self._health(probs)
        refusal = self._guard().rejects_as_final(health)
        if refusal:  # cannot happen for a kept epoch that passed the guard; a last line of defence
            kept = 0
            self.model.load_state_dict(self.start_state)
            probs, embeddings = self._predict(self.model, self.images, self.progress)
            health = self._health(probs)
        return SelfLabelResult(kept, health, probs, embeddings, refusal)

    def _predict(self, model: ScanModel, images: ImageSet, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        probs, embeddings = predict_images(model, images, self.device, self.eval_batch, self.num_workers, progress)
        return probs[0], embeddings

    def _health(self, probs: np.ndarray) -> Health:
        return measure_health(probs, self.cfg.threshold, self.reference, self.cfg.guard_min_cluster_share)

    def _guard(self) -> CollapseGuard:
        if self.guard is None:
            raise TrainerError("selflabel: only rank 0 applies the collapse guard")
        return self.guard


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
    workers, eval_batch = config.data.num_workers, config.neighbors.batch_size

    # the starting point: the SCAN model with its chosen head
    model, scan_state = load_stage_model(run.stage_dir(SCAN) / "model.pt", expected_fingerprint=fingerprint)
    if "chosen_head" not in scan_state:
        raise TrainerError(f"{run.stage_dir(SCAN) / 'model.pt'} has no chosen head: rerun the scan stage")
    model.keep_head(scan_state["chosen_head"])
    dist.prepare(model, config.model.batchnorm)
    model.to(device)

    # the guarded loop, resumed from the last epoch's checkpoint
    loop = GuardedSelfLabeling(model, train, device, cfg, config.augment, config.seed,
                               keep_best=BestFile(best_path, config, fingerprint), dist=dist, eval_batch=eval_batch,
                               num_workers=workers, progress=progress)
    start_epoch, elapsed, state = resume(checkpoint_path, model, loop.optimizer, fingerprint, STAGE, dist.is_main)

    def log_epoch(epoch: int, metrics: dict[str, Any], health: Health, problems: list[str]) -> None:
        nonlocal elapsed
        elapsed += metrics["seconds"]
        metrics.update({"health": health.to_dict(), "guard": problems})
        run.log_metrics(STAGE, epoch, metrics)
        print(f"selflabel epoch {epoch}/{cfg.epochs}: loss {metrics['loss']:.4f}, pseudo-labelled "
              f"{metrics['pseudo_labelled']:.2f}, confident {health.confident_fraction:.3f}, populated clusters "
              f"{health.populated}/{health.clusters}, size entropy {health.size_entropy:.3f}"
              + (f" -- GUARD: {'; '.join(problems)}" if problems else ""), flush=True)
        save_epoch(checkpoint_path, model, config, fingerprint, loop.optimizer, epoch, elapsed,
                   **loop.checkpoint_state())

    loop.run(log_epoch, start_epoch, resumed=state)
    if not dist.is_main:
        return {}
    with dist.alone(device):  # the other ranks wait; on CPU rank 0 takes their threads
        # keep the best healthy state; the SCAN model when nothing beat it
        eval_started = time.perf_counter()
        result = loop.finish()
        if result.refusal:
            kept = "scan model (final check refused the self-labelled model: " + "; ".join(result.refusal) + ")"
        elif result.kept_epoch:
            kept = f"selflabel epoch {result.kept_epoch}"
        else:
            kept = "scan model (no self-labeling epoch improved on it)"
        atomic_torch_save(model_path, checkpoint_payload(model, config, fingerprint, chosen_head=0, kept=kept,
                                                         epochs_run=loop.epoch, stop_reason=loop.stop_reason))
        test_probs = predict_images(model, test, device, eval_batch, workers)[0][0] if test is not None else None
        entry: dict[str, Any] = {
            "status": "done",
            "epochs_run": loop.epoch,
            "epochs": cfg.epochs,
            "stopped_early": loop.stop_reason is not None,
            "stop_reason": loop.stop_reason,
            "kept": kept,
            "start_health": loop.baseline.to_dict(),
        }
        neighbors_path = run.stage_dir(NEIGHBORS) / "neighbors_train.npy"  # for the merge suggestions
        neighbors = np.load(neighbors_path) if neighbors_path.exists() else None
        entry.update(summarize_clustering(config, stage_dir, train, result.probs, result.embeddings, test, test_probs,
                                          result.health, title="self-label", neighbors=neighbors))
        entry["wall_time_s"] = round(elapsed + time.perf_counter() - eval_started, 1)
        entry["model"] = str(model_path.relative_to(run.path))
        return entry
