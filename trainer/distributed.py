"""Multi-process training under `torchrun`: one process per GPU (NCCL) or per group of CPU cores (gloo).

What a stage needs from it, all no-ops in a single process (`SINGLE`):

- `shard(order, global_batch)`: every rank draws the same epoch order and takes its own
  contiguous slice of each global batch, so rank order concatenated is the single-process batch;
- `gather(tensor)`: every rank's rows in rank order, differentiable. Losses are computed on
  the gathered global batch (NT-Xent negatives, the SCAN entropy of the batch mean, self-label
  class weights), so every rank holds the same loss value as one process would;
- `parallel(model, fn)`: `fn(model, x)` driven by DistributedDataParallel (gradient averaging);
- `global_batchnorm(model)`: BatchNorm statistics over the global batch, as one process sees them;
- `is_main`, `barrier()`, `broadcast(obj)`, `alone(device)`: rank 0 alone writes checkpoints, metrics
  and reports, mines neighbors and evaluates; the others wait for it and learn its decisions;
- `rows_from_shards(n, compute)`: one pass over a data set split among the ranks (cached features).

Why the gradients are exact: every rank computes the same global loss L from gathered outputs.
The backward of `gather` sums the gradient of all ranks' L for each rank's rows (W copies of the
true gradient), and DistributedDataParallel divides the summed parameter gradients by W. The
same holds through the gathered statistics of `GlobalBatchNorm`. tests/test_distributed.py checks loss
and weights against one process on the same global batch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.errors import ConfigError

T = TypeVar("T")

TIMEOUT_ENV = "SCAN_TRAIN_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120  # ranks wait this long for rank 0 to mine neighbors or evaluate


def _world() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


class _Gather(torch.autograd.Function):
    """Concatenate every rank's equally shaped tensor along `dim`; backward sums, then slices."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad)
        return grad.narrow(ctx.dim, torch_dist.get_rank() * ctx.size, ctx.size), None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks (gloo and NCCL alike).

    torch's SyncBatchNorm refuses CPU tensors. Here each rank computes its per-channel count, mean
    and sum of squared deviations, one differentiable all-gather shares them, and every rank
    combines them (Chan et al.'s pairwise formula, stable in float32) into the global mean and
    variance: a run on W processes normalizes as one process would with the global batch, at one
    collective per layer and pass. In eval mode, or in a single process, it is plain BatchNorm.
    State-dict keys are BatchNorm's.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32, c = x.float(), x.shape[1]
        local_mean = x32.mean(dims)
        local_m2 = (x32 - local_mean.view(shape)).square().sum(dims)
        local = torch.cat([local_mean, local_m2, local_mean.new_full((1,), x32.numel() / c)])
        stats = _Gather.apply(local.unsqueeze(0), 0)  # (W, 2C + 1)
        means, m2s, counts = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :]
        count = counts.sum()
        mean = (counts * means).sum(0) / count
        var = (m2s.sum(0) + (counts * (means - mean).square()).sum(0)) / count
        y = (x32 - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in `module` (in place) by a GlobalBatchNorm holding the same state."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            replacement = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            state = child.state_dict()
            replacement.load_state_dict(state)
            if state:  # BatchNorm without affine weights and running statistics holds no tensor
                replacement.to(next(iter(state.values())).device)
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            global_batchnorm(child)
    return module


class _Computation(nn.Module):
    """`fn(model, *inputs)` as a module's forward, so DistributedDataParallel can drive it."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: Any) -> Any:
        return self.fn(self.model, *inputs)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the ones torchrun started. `SINGLE` is the one-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world_size, "backend": self.backend or "none"}

    # ------------------------------------------------------------------ data

    def local_batch(self, global_batch: int, what: str) -> int:
        """The per-process share of `global_batch`; `what` names the setting in the error."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"{what} = {global_batch} is the global batch and must divide evenly among the "
                f"{self.world_size} processes; choose a multiple of {self.world_size}"
            )
        return global_batch // self.world_size

    def shard(self, order: torch.Tensor, global_batch: int) -> torch.Tensor:
        """This rank's visiting order: its contiguous slice of every full global batch of `order`.

        Batching the result by `global_batch // world_size` gives, on rank r, rows
        `[r*b, (r+1)*b)` of each global batch; the remainder (an incomplete batch) is dropped.
        """
        if not self.enabled:
            return order
        local = self.local_batch(global_batch, "the batch size")
        steps = len(order) // global_batch
        return order[: steps * global_batch].view(steps, self.world_size, local)[:, self.rank].reshape(-1)

    # ------------------------------------------------------------------ computation

    def gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's `tensor` concatenated along `dim` in rank order; gradients flow back to each rank."""
        if not self.enabled:
            return tensor
        return _Gather.apply(tensor, dim)

    def parallel(self, model: nn.Module, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn(model, *inputs)` as a callable; under torchrun wrapped in DistributedDataParallel."""
        if not self.enabled:
            return functools.partial(fn, model)
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(
            _Computation(model, fn),
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,  # GlobalBatchNorm keeps the running statistics equal on every rank
        )

    def rows_from_shards(
        self, n: int, compute: Callable[[torch.Tensor], torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        """`compute(indices)` for indices 0..n-1 on every rank, each rank computing a contiguous 1/W of them.

        `compute` returns one row per index (e.g. the features of those images); the rows of all
        ranks are gathered in index order.
        """
        if not self.enabled or n < self.world_size:
            return compute(torch.arange(n)).to(device)
        per = -(-n // self.world_size)
        mine = compute(torch.arange(self.rank * per, min((self.rank + 1) * per, n))).to(device)
        padded = mine.new_zeros((per, *mine.shape[1:]))
        padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return torch.cat([part[: max(0, min(per, n - r * per))] for r, part in enumerate(parts)])

    def prepare(self, model: nn.Module, batchnorm: str = "global") -> nn.Module:
        """With several processes and `batchnorm="global"` (`model.batchnorm`), BatchNorm statistics over
        the global batch (in place; returns `model`). "local" keeps each process's own statistics."""
        return global_batchnorm(model) if self.enabled and batchnorm == "global" else model

    # ------------------------------------------------------------------ coordination

    @contextlib.contextmanager
    def alone(self, device: torch.device) -> Iterator[None]:
        """Rank 0 working while the other ranks wait (they use no CPU then): on CPU, rank 0 takes the
        threads of every process on its node for the duration."""
        if not (self.enabled and self.is_main and device.type == "cpu"):
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(min(os.cpu_count() or 1, before * self.local_world_size))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def check_shared(self, path: os.PathLike[str] | str) -> None:
        """Every rank must see the run directory rank 0 wrote (a shared filesystem across nodes)."""
        if not self.enabled:
            return
        seen = os.path.exists(path)
        missing = [rank for rank, ok in enumerate(self.all_ranks(seen)) if not ok]
        if missing:
            raise ConfigError(
                f"rank(s) {missing} cannot see {path}, which rank 0 wrote: with several nodes the run "
                "directory (and the data) must be on a filesystem every node mounts at the same path"
            )

    def all_ranks(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, value)
        return out


SINGLE = Distributed()


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in the environment; `(SINGLE, device)` outside torchrun.

    CUDA: NCCL, one GPU per process (`cuda:LOCAL_RANK`). CPU: gloo. The collective timeout (how
    long ranks wait for rank 0 to mine neighbors or evaluate) is `$SCAN_TRAIN_DIST_TIMEOUT_MIN`
    minutes, 120 by default.
    """
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return SINGLE, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"{local_world} processes on {socket.gethostname()} but {torch.cuda.device_count()} CUDA "
                "device(s): use --nproc_per_node at most the GPU count"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    except ValueError:
        raise ConfigError(f"${TIMEOUT_ENV} must be a number of minutes, got {os.environ[TIMEOUT_ENV]!r}") from None
    torch_dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    return Distributed(rank, world, local_rank, local_world, backend), device


def shutdown(dist: Distributed) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
