"""SCAN on cached features: epoch time of the stage's own loop on a device.

The fast SCAN mode (`scan.update: head`, `scan.augment: none`) trains the cluster heads on the frozen
backbone's features, computed once. Its speed depends on the shapes only (images, feature size, heads,
clusters, batch), not on what the features are, so this benchmark times `train_scan_epoch` +
`pair_batches` exactly as `run_scan` calls them, on random features of the given shape. Run it on each
device and compare the per-epoch seconds (the GPU goal: at least 10x faster than 2 CPU cores):

    .venv/bin/python benchmarks/scan_cached_features.py --device cpu --out benchmarks/results/scan_cached_cpu.json
    python3 benchmarks/scan_cached_features.py --device cuda --out $OUT/scan_cached_cuda.json   # on the GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.device import resolve_device  # noqa: E402
from trainer.models.scan_model import ScanModel  # noqa: E402
from trainer.stages.scan import pair_batches, train_scan_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--backbone", default="resnet18_cifar", help="sets the feature size (512 at width 64)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--heads", type=int, default=10)
    parser.add_argument("--neighbors", type=int, default=20)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = ScanModel.from_config(ModelConfig(backbone=args.backbone, width=args.width), 1, [0.5], [0.25])
    model.drop_projection_head()
    model.add_cluster_heads(args.clusters, args.heads)
    model.backbone.requires_grad_(False)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    features = torch.nn.functional.normalize(torch.randn(args.images, model.feature_dim), dim=1).to(device)
    neighbors = torch.randint(0, args.images, (args.images, args.neighbors)).to(device)

    seconds = []
    for epoch in range(args.epochs + 1):
        generator = torch.Generator().manual_seed(epoch)
        batches = pair_batches(features, neighbors, args.batch, generator)
        metrics = train_scan_epoch(model, batches, optimizer, device, 5.0, head_only=True, cached_features=True)
        if epoch > 0:  # the first epoch warms up allocator and kernels
            seconds.append(metrics["seconds"])
        print(f"epoch {epoch}: {metrics['seconds']:.3f} s, loss {metrics['loss']:.4f}", flush=True)
    result = {
        "command": command_line(),
        "machine": machine(device),
        "shape": {k: getattr(args, k) for k in ("images", "backbone", "width", "clusters", "heads", "neighbors",
                                                 "batch")},
        "feature_dim": model.feature_dim,
        "epoch_seconds": seconds,
        "median_epoch_seconds": statistics.median(seconds),
    }
    print(f"median epoch: {result['median_epoch_seconds']:.3f} s on {device}")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
