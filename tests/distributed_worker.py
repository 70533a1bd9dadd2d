"""A few training steps of every trained stage, for tests/test_distributed.py.

`python -m tests.distributed_worker OUT` trains in one process on global batches of
GLOBAL_BATCH real Fashion-MNIST images; `torchrun --nproc_per_node 2 -m tests.distributed_worker OUT`
trains the same steps with each rank holding half of every batch. Each process saves
`OUT.rank<R>.pt`: the loss of every step (as the epoch functions report it, i.e. the loss
of the gathered global batch), the weights before, after the first step and at the end of each
stage, and the rows `rows_from_shards` assembled from the ranks' shares.

Augmentation is deterministic (identity and a horizontal flip) so both runs see identical
views; everything else is the production code: sharding, gathering, DistributedDataParallel,
GlobalBatchNorm, the epoch functions and the losses.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

from tests.fmnist import tiny_config
from trainer.augment import build_augment
from trainer.data import load_dataset
from trainer.data.base import iterate_batches
from trainer.distributed import init_distributed, shutdown
from trainer.models.scan_model import ScanModel
from trainer.stages.pretext import build_pretext_model, train_one_epoch
from trainer.stages.scan import pair_batches, scan_logits, train_scan_epoch
from trainer.stages.selflabel import train_selflabel_epoch

GLOBAL_BATCH = 64
STEPS = 3
CPU = torch.device("cpu")


class Flip(nn.Module):
    """uint8 images -> [0, 1] floats, mirrored left-right: a deterministic 'augmentation'."""

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images.flip(-1).float().div(255)


class Alternate(nn.Module):
    """First call as they are, second call mirrored, and so on: the two SimCLR views of a step."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.calls += 1
        out = images.float().div(255)
        return out.flip(-1) if self.calls % 2 == 0 else out


def fresh_model(config, train, dist, heads: int = 0) -> ScanModel:
    """The same seeded starting weights in every run: each stage's first step starts from equal weights."""
    torch.manual_seed(0)
    model = build_pretext_model(config, train)
    if heads:
        model.drop_projection_head()
        model.add_cluster_heads(10, heads)
    return dist.prepare(model)


def sgd(model: ScanModel, lr: float) -> torch.optim.SGD:
    """Plain SGD: the update is lr * gradient, so a gradient off by any factor shows in the weights."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def train_steps(record: dict, stage: str, model: ScanModel, step) -> None:
    """Run `step(i)` for every batch index; record losses, the weights before, after one step and at the end."""
    record["state"][stage] = {"start": clone(model)}
    losses, extras = [], []
    for i in range(STEPS):
        metrics = step(i)
        losses.append(metrics["loss"])
        extras.append({k: v for k, v in metrics.items() if k in ("entropy", "pseudo_labelled", "images")})
        if i == 0:
            record["state"][stage]["step1"] = clone(model)
    record["state"][stage]["end"] = clone(model)
    record["loss"][stage], record["extra"][stage] = losses, extras


def clone(model: ScanModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist, device = init_distributed(CPU)
    config = tiny_config(train=STEPS * GLOBAL_BATCH, test=64, selflabel={"threshold": 0.2})
    train = load_dataset(config.data, "train", seed=0)
    local = dist.local_batch(GLOBAL_BATCH, "batch")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    batches = list(iterate_batches(train, local, order=dist.shard(order, GLOBAL_BATCH), drop_last=True))
    record: dict = {"world_size": dist.world_size, "loss": {}, "state": {}, "extra": {}}

    # pretext: NT-Xent over the gathered global batch, global BatchNorm
    model = fresh_model(config, train, dist)
    optimizer = sgd(model, 0.05)
    project = dist.parallel(model, ScanModel.project)
    train_steps(record, "pretext", model, lambda i: train_one_epoch(
        model, [batches[i]], Alternate(), optimizer, lambda _: 0.05, i, device, config.pretext.temperature,
        project=project, dist=dist))

    # SCAN, backbone and heads trained: entropy of the global batch's mean prediction
    model = fresh_model(config, train, dist, heads=2)
    optimizer = sgd(model, 0.05)
    logits_of = dist.parallel(model, functools.partial(scan_logits, head_only=False, cached=False))
    neighbors = torch.randint(len(train), (len(train), 5), generator=torch.Generator().manual_seed(2))
    pairs = list(pair_batches(train.images, neighbors, GLOBAL_BATCH, torch.Generator().manual_seed(3), dist=dist))
    train_steps(record, "scan", model, lambda i: train_scan_epoch(
        model, [pairs[i]], optimizer, device, 5.0, logits_of=logits_of, dist=dist))

    # self-labeling: confidence mask and class weights of the global batch
    model = fresh_model(config, train, dist, heads=1)
    optimizer = sgd(model, 0.05)
    learn_logits_of = dist.parallel(model, ScanModel.cluster_logits)
    weak = build_augment("none", train.image_size, train.channels, config.augment)
    train_steps(record, "selflabel", model, lambda i: train_selflabel_epoch(
        model, [batches[i]], weak, Flip(), optimizer, device, config.selflabel, logits_of=learn_logits_of,
        dist=dist))

    # one pass split among the ranks (how cached SCAN features are computed): 193 rows, uneven shares
    record["extra"]["rows"] = dist.rows_from_shards(193, lambda idx: torch.stack([idx, idx * idx], 1), device)

    torch.save(record, f"{out}.rank{dist.rank}.pt")
    shutdown(dist)


if __name__ == "__main__":
    main(sys.argv[1])
