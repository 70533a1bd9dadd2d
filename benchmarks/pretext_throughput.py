"""Pretext training throughput: batched on-device augmentation vs per-image augmentation in workers.

Both arms train the same model with the same batch size, optimizer and loss on the same
device; only the augmentation pipeline differs:

- ours: uint8 batches sliced from the in-memory tensor, SimCLR views drawn by kornia on the
  training device (trainer.augment.SimCLRAugment), as `scan-train` does;
- per-image: the reference code's design, a torch DataLoader whose workers decode each image
  to PIL and run random resized crop, flip, color jitter (p=0.8) and grayscale (p=0.2) per
  image, then collate float tensors that are copied to the device.

The arms alternate (ours, per-image, ours, ...) so machine noise hits both; the script
prints images/s per arm and the ratio. Example:

    .venv/bin/python benchmarks/pretext_throughput.py --device cpu --steps 20 \
        --out benchmarks/results/pretext_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine  # noqa: E402
from trainer.augment import build_augment  # noqa: E402
from trainer.config import AugmentConfig, ModelConfig, config_from_dict  # noqa: E402
from trainer.data import dataset_stats, load_dataset  # noqa: E402
from trainer.device import autocast, resolve_device, use_channels_last  # noqa: E402
from trainer.losses import nt_xent  # noqa: E402
from trainer.models.scan_model import ScanModel  # noqa: E402


class PerImageSimCLR(Dataset):
    """Per-image SimCLR views with PIL in DataLoader workers (the reference pipeline's shape)."""

    def __init__(self, images: torch.Tensor, cfg: AugmentConfig) -> None:
        self.images = images.numpy()
        self.cfg = cfg
        self.size = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def _view(self, img: Image.Image) -> torch.Tensor:
        cfg, size = self.cfg, self.size
        area = size * size
        for _ in range(10):  # random resized crop
            target = area * random.uniform(*cfg.crop_scale)
            ratio = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
            if 0 < w <= size and 0 < h <= size:
                x, y = random.randint(0, size - w), random.randint(0, size - h)
                img = img.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
                break
        if random.random() < cfg.flip_p:
            img = ImageOps.mirror(img)
        if random.random() < cfg.jitter_p:
            b, c, s, hue = cfg.jitter
            ops = [
                lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(1 - b, 1 + b)),
                lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(1 - c, 1 + c)),
            ]
            if img.mode == "RGB":
                ops.append(lambda im: ImageEnhance.Color(im).enhance(random.uniform(1 - s, 1 + s)))
                ops.append(lambda im: _shift_hue(im, random.uniform(-hue, hue)))
            random.shuffle(ops)
            for op in ops:
                img = op(img)
        if img.mode == "RGB" and random.random() < cfg.grayscale_p:
            img = img.convert("L").convert("RGB")
        array = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(array if array.ndim == 3 else array[:, :, None]).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chw = self.images[index]
        img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
        return self._view(img), self._view(img)


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _step(model, optimizer, views: torch.Tensor, device, memory_format, temperature: float) -> float:
    views = views.contiguous(memory_format=memory_format)
    with autocast(device):
        z = model.project(views)
    z1, z2 = z.float().chunk(2)
    loss = nt_xent(z1, z2, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def run_ours(model, optimizer, images, augment, batch, steps, device, memory_format) -> float:
    n = len(images)
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,))
        x = images[idx].to(device, non_blocking=True)
        with torch.no_grad():
            views = torch.cat([augment(x), augment(x)])
        _step(model, optimizer, views, device, memory_format, 0.1)
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def run_per_image(model, optimizer, loader_iter, batch, steps, device, memory_format) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        v1, v2 = next(loader_iter)
        views = torch.cat([v1, v2]).to(device, non_blocking=True)
        _step(model, optimizer, views, device, memory_format, 0.1)
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and arm")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per arm")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers of the per-image arm")
    parser.add_argument("--images", type=int, default=20000, help="training images held in memory")
    parser.add_argument("--channels", type=int, default=None, help="force 1 or 3 channels")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    overrides = [f"data.name={args.dataset}", f"data.train_subset={args.images}"]
    if args.channels:
        overrides.append(f"data.channels={args.channels}")
    config = config_from_dict({}, overrides)
    train = load_dataset(config.data, "train", seed=0)
    images = train.images
    mean, std = dataset_stats(config.data, train.channels)
    model = ScanModel.from_config(ModelConfig(backbone=args.backbone, width=args.width), train.channels, mean, std)
    channels_last = use_channels_last(device, None)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    augment = build_augment("simclr", train.image_size, train.channels, config.augment).to(device)

    loader = DataLoader(
        PerImageSimCLR(images, config.augment), batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=device.type == "cuda",
    )
    loader_iter = _forever(loader)

    # warm-up: both arms, so allocator, kernels and workers are ready
    run_ours(model, optimizer, images, augment, args.batch, 2, device, memory_format)
    run_per_image(model, optimizer, loader_iter, args.batch, 2, device, memory_format)

    ours, per_image = [], []
    for round_ in range(args.rounds):
        ours.append(run_ours(model, optimizer, images, augment, args.batch, args.steps, device, memory_format))
        per_image.append(run_per_image(model, optimizer, loader_iter, args.batch, args.steps, device, memory_format))
        print(f"round {round_ + 1}: ours {ours[-1]:.0f} img/s, per-image workers {per_image[-1]:.0f} img/s")

    result = {
        "command": command_line(),
        "machine": machine(device),
        "dataset": args.dataset,
        "image_shape": list(images.shape[1:]),
        "backbone": args.backbone,
        "width": args.width,
        "batch": args.batch,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "per_image_workers": args.workers,
        "ours_images_per_s": ours,
        "per_image_images_per_s": per_image,
        "median_ratio": float(np.median(np.array(ours) / np.array(per_image))),
    }
    print(
        f"median: ours {np.median(ours):.0f} img/s vs per-image {np.median(per_image):.0f} img/s "
        f"-> ratio {result['median_ratio']:.2f}x"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


def _forever(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    main()
