"""Where the time of one augmentation call goes: torch.profiler's kernel table for a pipeline and shape.

    python3 benchmarks/profile_augment.py --device cuda --kind simclr --shape 3x96x96 --batch 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.augment import build_augment  # noqa: E402
from trainer.config import AugmentConfig  # noqa: E402
from trainer.device import resolve_device, synchronize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kind", default="simclr")
    parser.add_argument("--shape", default="3x96x96", help="CxHxW")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--no-hue", action="store_true", help="jitter hue 0 (to see what the hue step costs)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    c, h, w = (int(v) for v in args.shape.split("x"))
    cfg = AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.0)) if args.no_hue else AugmentConfig()
    augment = build_augment(args.kind, h, c, cfg)
    x = torch.randint(0, 256, (args.batch, c, h, w), dtype=torch.uint8, device=device)
    generator = torch.Generator(device).manual_seed(0)
    for _ in range(3):
        augment(x, generator=generator)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.calls):
        augment(x, generator=generator)
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.calls
    print(f"{args.kind}{' (no hue)' if args.no_hue else ''} {args.shape} batch {args.batch} on {device}: {seconds * 1e3:.2f} ms/call, "
          f"{args.batch / seconds:.0f} img/s", flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.calls):
            augment(x, generator=generator)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
