"""Pretext training throughput and its bound: the model step alone vs the step fed by each augmentation.

For every requested shape (data set, image size, backbone, batch) one run measures, side by
side on the same device with the same seeded model, optimizer (trainer.stages.pretext) and loss
(NT-Xent, temperature from the config, 0.1 by default):

- model_only:  the pretext step (bf16 autocast on CUDA, channels-last on CUDA, SGD, NT-Xent) on
               random float views already on the device (2B views for a batch of B): the bound;
- ours:        uint8 batches indexed (random indices on the device) from the images held ON the
               device, SimCLR views from trainer.augment, then the same step (what `scan-train` does);
- kornia:      the same with trainer.augment_kornia (the kornia implementation, the reference);
- per_image:   the reference code's design: PIL augmentation per image in DataLoader workers,
               float views collated and copied to the device (`--workers 0` skips it). Its workers
               run only inside its own timed segment (drained of their prefetch first), so they
               never take the CPU from another arm: the H200 run of 2026-12-04 had persistent
               workers, which slowed the 3x96x96 arms measured after them;
- augment_only_ours / augment_only_kornia: two views of a batch, no model step;
- with --compile, model_only_compiled and ours_compiled: the same with torch.compile(model.project)
  (compile seconds reported apart).

Arms alternate within each round and the order rotates from round to round; each arm is warmed up
first and every timed segment ends with a device synchronisation. Reported per arm: median
images/s (an image = one of the B images of a batch, i.e. two views), `overhead = 1 - arm /
model_only`, and the model's achieved TFLOP/s (FLOPs of one forward + backward counted once with
torch.utils.flop_counter.FlopCounterMode, convolutions and matmuls only) as a fraction of a matmul
peak measured in the same run (bf16 8192^3 on CUDA, fp32 1024^3 on CPU).

Shapes: fmnist = real Fashion-MNIST 1x28x28, resnet18_cifar, batch 512; cifar = generated
structured 3x32x32 images, resnet18_cifar, batch 512; stl = generated 3x96x96, resnet18 (ImageNet
stem), batch 256. `--preset configs/fashion_mnist_cpu.yaml` takes model, batch and augmentation
from a preset instead (Fashion-MNIST only by default). Examples:

    .venv/bin/python benchmarks/pretext_throughput.py --device cuda --out runs/bench/pretext.json
    .venv/bin/python benchmarks/pretext_throughput.py --device cpu --preset configs/fashion_mnist_cpu.yaml \
        --arms model_only,ours,kornia --steps 10 --rounds 3 --out benchmarks/results/pretext_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine  # noqa: E402
from trainer.config import AugmentConfig, RunConfig, config_from_dict, load_config  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.data.base import ImageSet, TensorImageSet  # noqa: E402
from trainer.device import autocast, resolve_device  # noqa: E402
from trainer.losses import nt_xent  # noqa: E402
from trainer.stages.pretext import pretext_training  # noqa: E402

TRAINING_ARMS = ("model_only", "ours", "kornia", "per_image")
AUGMENT_ARMS = ("augment_only_ours", "augment_only_kornia")
COMPILED_ARMS = ("model_only_compiled", "ours_compiled")
ARMS = TRAINING_ARMS + AUGMENT_ARMS + COMPILED_ARMS
KORNIA_ARMS = ("kornia", "augment_only_kornia")
WARMUP_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark case: config overrides (data, model), batch, and generated images or real data."""

    name: str
    data: tuple[str, ...]
    backbone: str
    batch: int
    generated: Optional[tuple[int, int]] = None  # (channels, size) of generated images; None: real data


SHAPES = {
    "fmnist": Shape("fmnist", ("data.name=fashion_mnist",), "resnet18_cifar", 512),
    "cifar": Shape("cifar", ("data.name=cifar10",), "resnet18_cifar", 512, (3, 32)),
    "stl": Shape("stl", ("data.name=stl10",), "resnet18", 256, (3, 96)),
}


# ---------------------------------------------------------------- data


def generated_images(n: int, channels: int, size: int, seed: int = 0, device: torch.device | str = "cpu",
                     chunk: int = 1024) -> torch.Tensor:
    """`(n, channels, size, size)` uint8 images on `device` with structure: a smooth colour gradient,
    three discs or rectangles of random colours, a little noise. Seeded per device (a GPU makes
    20k images of 96 px in a blink; the CPU takes tens of seconds on 2 cores)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, channels, size, size, dtype=torch.uint8, device=device)
    axis = torch.linspace(-1, 1, size, device=device)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rand = lambda *shape: torch.rand(m, *shape, generator=generator, device=device)  # noqa: E731
        base = rand(channels, 1, 1)
        img = base + (rand(channels, 1, 1) - 0.5) * xs + (rand(channels, 1, 1) - 0.5) * ys
        for _ in range(3):
            cx, cy, r = (rand(1, 1, 1) * 2 - 1), (rand(1, 1, 1) * 2 - 1), 0.15 + 0.4 * rand(1, 1, 1)
            disc = (xs - cx) ** 2 + (ys - cy) ** 2 < r**2
            box = ((xs - cx).abs() < r) & ((ys - cy).abs() < 0.6 * r)
            mask = torch.where(rand(1, 1, 1) < 0.5, disc, box)
            img = torch.where(mask, rand(channels, 1, 1), img)
        img = img + 0.03 * torch.randn(img.shape, generator=generator, device=device)
        out[start : start + m] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def shape_config(shape: Shape, args: argparse.Namespace) -> RunConfig:
    """The run config of one shape: a preset's (model, batch, augmentation) or the defaults plus the shape."""
    overrides = [*shape.data, f"data.train_subset={args.images}"]
    if not args.preset:
        overrides += [f"model.backbone={shape.backbone}", f"pretext.batch_size={shape.batch}"]
    if args.backbone:
        overrides.append(f"model.backbone={args.backbone}")
    if args.width:
        overrides.append(f"model.width={args.width}")
    if args.batch:
        overrides.append(f"pretext.batch_size={args.batch}")
    return load_config(args.preset, overrides) if args.preset else config_from_dict({}, overrides)


def shape_images(shape: Shape, config: RunConfig, images: int, device: torch.device) -> ImageSet:
    """The shape's training images `(N, C, H, W)` uint8 on the CPU (generated ones made on `device`)."""
    if shape.generated is None:
        return load_dataset(config.data, "train", seed=0)
    channels, size = shape.generated
    pixels = generated_images(images, channels, size, device=device).cpu()
    return TensorImageSet(pixels, name=f"generated_{channels}x{size}")


# ---------------------------------------------------------------- per-image arm (reference design)


class PerImageSimCLR(Dataset):
    """Per-image SimCLR views with PIL in DataLoader workers (the reference pipeline's shape)."""

    def __init__(self, images: torch.Tensor, cfg: AugmentConfig) -> None:
        self.images = images.numpy()
        self.cfg = cfg
        self.size = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, img: Image.Image) -> Image.Image:
        size, area = self.size, self.size * self.size
        for _ in range(10):  # random resized crop
            target = area * random.uniform(*self.cfg.crop_scale)
            ratio = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
            if 0 < w <= size and 0 < h <= size:
                x, y = random.randint(0, size - w), random.randint(0, size - h)
                return img.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
        return img

    def _jitter(self, img: Image.Image) -> Image.Image:
        b, c, s, hue = self.cfg.jitter
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
        return img

    def _view(self, img: Image.Image) -> torch.Tensor:
        img = self._crop(img)
        if random.random() < self.cfg.flip_p:
            img = ImageOps.mirror(img)
        if random.random() < self.cfg.jitter_p:
            img = self._jitter(img)
        if img.mode == "RGB" and random.random() < self.cfg.grayscale_p:
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


def _forever(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


# ---------------------------------------------------------------- the step and the arms


class Bench:
    """What the arms of one shape share: the model, optimizer, images (host and device) and views."""

    def __init__(self, config: RunConfig, train: ImageSet, device: torch.device, workers: int) -> None:
        self.config, self.device, self.workers = config, device, workers
        self.batch = min(config.pretext.batch_size, len(train))
        self.model, self.augment, self.optimizer, channels_last = pretext_training(config, train, device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.host_images = train.images
        self.images = train.images.to(device)
        self.channels, self.size = train.channels, train.image_size
        self.project: Callable[[torch.Tensor], torch.Tensor] = self.model.project
        self.compiled: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._kornia: Optional[torch.nn.Module] = None
        self._dataloader: Optional[DataLoader] = None
        self._loader: Optional[Iterator[Any]] = None
        self._views: Optional[torch.Tensor] = None

    # inputs
    def views(self) -> torch.Tensor:
        """Fixed random float views `(2B, C, H, W)` on the device, already in the step's memory format."""
        if self._views is None:
            shape = (2 * self.batch, self.channels, self.size, self.size)
            self._views = torch.rand(shape, device=self.device).contiguous(memory_format=self.memory_format)
        return self._views

    def uint8_batch(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.images), (self.batch,), device=self.device)
        return self.images[idx]

    def kornia(self) -> torch.nn.Module:
        if self._kornia is None:
            from trainer.augment_kornia import build_augment as build_kornia

            self._kornia = build_kornia("simclr", self.size, self.channels, self.config.augment).to(self.device)
        return self._kornia

    def loader(self) -> Iterator[Any]:
        if self._loader is None:
            self._dataloader = DataLoader(
                PerImageSimCLR(self.host_images, self.config.augment), batch_size=self.batch, shuffle=True,
                drop_last=True, num_workers=self.workers, prefetch_factor=PREFETCH,
                pin_memory=self.device.type == "cuda",
            )
            self._loader = _forever(self._dataloader)
        return self._loader

    def close(self) -> None:
        """End the per_image arm's workers now rather than whenever the garbage collector gets to them."""
        iterator = getattr(self._dataloader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._dataloader = self._loader = None

    # the step (the body of trainer.stages.pretext.train_one_epoch, at a fixed learning rate)
    def step(self, views: torch.Tensor, project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """No host sync per step (training reads the loss at sync points only); `timed` syncs at the end."""
        views = views.contiguous(memory_format=self.memory_format)
        with autocast(self.device):
            z = (project or self.project)(views)
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, self.config.pretext.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def two_views(self, augment: torch.nn.Module) -> torch.Tensor:
        x = self.uint8_batch()
        with torch.no_grad():
            return torch.cat([augment(x), augment(x)])

    def one_step(self, arm: str) -> None:
        """One step (or, for augment_only_*, one pair of views) of `arm`."""
        if arm == "model_only":
            self.step(self.views())
        elif arm == "model_only_compiled":
            self.step(self.views(), self.compiled)
        elif arm == "ours":
            self.step(self.two_views(self.augment))
        elif arm == "ours_compiled":
            self.step(self.two_views(self.augment), self.compiled)
        elif arm == "kornia":
            self.step(self.two_views(self.kornia()))
        elif arm == "per_image":
            v1, v2 = next(self.loader())  # pinned on CUDA: copy each, then join on the device
            self.step(torch.cat([v.to(self.device, non_blocking=True) for v in (v1, v2)]))
        elif arm == "augment_only_ours":
            self.two_views(self.augment)
        elif arm == "augment_only_kornia":
            self.two_views(self.kornia())
        else:
            raise ValueError(f"unknown arm {arm!r}")

    def timed(self, arm: str, steps: int) -> float:
        """Images per second of `steps` steps of `arm` (synchronised at both ends).

        The per_image arm's workers live only inside its own segment: started, then drained of what they
        prefetched (untimed, so the figure is their steady state, not a head start), timed, and shut down,
        so that they never compete with another arm for the CPU that launches its kernels.
        """
        try:
            if arm == "per_image":
                for _ in range(PREFETCH * max(self.workers, 1)):
                    self.one_step(arm)
            _sync(self.device)
            started = time.perf_counter()
            for _ in range(steps):
                self.one_step(arm)
            _sync(self.device)
            return self.batch * steps / (time.perf_counter() - started)
        finally:
            if arm == "per_image":
                self.close()


PREFETCH = 2  # batches each per_image worker prepares ahead (DataLoader's prefetch_factor)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- counted and peak FLOPs


def step_flops(bench: Bench) -> int:
    """FLOPs of one forward + backward of the step (counted by FlopCounterMode, not timed; no update)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(bench.device):
            z = bench.model.project(bench.views())
        z1, z2 = z.float().chunk(2)
        nt_xent(z1, z2, bench.config.pretext.temperature).backward()
    bench.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device) -> dict[str, Any]:
    """Best TFLOP/s of a square matmul: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    n, dtype, iters = (8192, torch.bfloat16, 30) if device.type == "cuda" else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for repeat in range(4):  # the first repeat is the warm-up
        _sync(device)
        started = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        if repeat:
            best = max(best, 2 * n**3 * iters / (time.perf_counter() - started) / 1e12)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": best}


# ---------------------------------------------------------------- one shape


def rotated(arms: Sequence[str], round_: int) -> list[str]:
    k = round_ % len(arms)
    return [*arms[k:], *arms[:k]]


def warm_up(bench: Bench, arms: Sequence[str]) -> tuple[list[str], dict[str, float], dict[str, str]]:
    """Run every arm a few steps. Returns the arms that ran, the seconds the compiled arms' warm-up
    took (compilation included) and, per arm that failed, its error: one broken arm (a kornia or
    compiler problem on some machine) must not cost the others' figures."""
    working, compile_s, errors = [], {}, {}
    for arm in arms:
        try:
            if arm in COMPILED_ARMS and bench.compiled is None:
                bench.compiled = torch.compile(bench.model.project)
            _sync(bench.device)
            started = time.perf_counter()
            for _ in range(WARMUP_STEPS):
                bench.one_step(arm)
            _sync(bench.device)
            bench.close()  # no per_image worker may run while another arm is timed
        except Exception as exc:  # noqa: BLE001 - reported in the result, the other arms go on
            errors[arm] = f"{type(exc).__name__}: {exc}"
            print(f"  {arm}: failed in its warm-up, left out: {errors[arm]}", flush=True)
            continue
        working.append(arm)
        if arm in COMPILED_ARMS:
            compile_s[arm] = time.perf_counter() - started
    return working, compile_s, errors


def measure_shape(shape: Shape, args: argparse.Namespace, device: torch.device, peak: float) -> dict[str, Any]:
    config = shape_config(shape, args)
    train = shape_images(shape, config, args.images, device)
    bench = Bench(config, train, device, args.workers)
    print(f"\n[{shape.name}] {len(train)} images {train.channels}x{train.image_size}x{train.image_size}, "
          f"{config.model.backbone} w{config.model.width}, batch {bench.batch}, device {device}", flush=True)
    try:
        flops = step_flops(bench)
        arms, compile_s, errors = warm_up(bench, args.arms)
        rounds: dict[str, list[float]] = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            for arm in rotated(arms, round_):
                rounds[arm].append(bench.timed(arm, args.steps))
            print(f"  round {round_ + 1}: " + ", ".join(f"{a} {rounds[a][-1]:.0f}" for a in arms), flush=True)
    finally:
        bench.close()
    result = {
        "image_shape": [train.channels, train.image_size, train.image_size],
        "images": len(train),
        "data": config.data.name if shape.generated is None else train.name,
        "backbone": config.model.backbone,
        "width": config.model.width,
        "batch": bench.batch,
        "augment": dataclasses.asdict(config.augment),
        "flops_per_step": flops,
        "flops_per_image": flops / bench.batch,
        "compile_s": compile_s,
        "errors": errors,
        "arms": summarize_arms(rounds, flops / bench.batch, peak),
    }
    print(format_shape(shape.name, result), flush=True)
    return result


def measure_shapes(args: argparse.Namespace, device: torch.device, peak: float,
                   done: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every requested shape; a shape that fails is recorded with its error and the next one runs.
    `done(shapes)` is called after each shape (to write partial results)."""
    shapes: dict[str, Any] = {}
    for name in args.shapes:
        try:
            shapes[name] = measure_shape(SHAPES[name], args, device, peak)
        except Exception as exc:  # noqa: BLE001 - one run on a lent machine: keep what the others measured
            traceback.print_exc()
            shapes[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        done(shapes)
    return shapes


def summarize_arms(rounds: dict[str, list[float]], flops_per_image: float, peak: float) -> dict[str, dict]:
    """Per arm: rounds, median images/s, overhead against its model-only arm, TFLOP/s and fraction of peak."""
    out: dict[str, dict] = {}
    for arm, values in rounds.items():
        median = statistics.median(values)
        entry: dict[str, Any] = {"images_per_s": values, "median_images_per_s": median}
        if arm not in AUGMENT_ARMS:
            reference = "model_only_compiled" if arm.endswith("_compiled") else "model_only"
            if reference in rounds:
                entry["overhead"] = 1 - median / statistics.median(rounds[reference])
            entry["tflops"] = median * flops_per_image / 1e12
            entry["fraction_of_peak"] = entry["tflops"] / peak if peak > 0 else None
        out[arm] = entry
    return out


# ---------------------------------------------------------------- reporting


def table_rows(arms: dict[str, dict]) -> list[list[str]]:
    rows = []
    for arm, e in arms.items():
        overhead = f"{e['overhead']:+.1%}" if "overhead" in e else "-"
        tflops = f"{e['tflops']:.2f}" if "tflops" in e else "-"
        frac = f"{e['fraction_of_peak']:.1%}" if e.get("fraction_of_peak") is not None else "-"
        rounds = " ".join(f"{v:.0f}" for v in e["images_per_s"])
        rows.append([arm, f"{e['median_images_per_s']:.0f}", overhead, tflops, frac, rounds])
    return rows


HEADER = ["arm", "img/s (median)", "overhead", "model TFLOP/s", "of peak", "rounds img/s"]


def format_shape(name: str, result: dict[str, Any]) -> str:
    rows = [HEADER, *table_rows(result["arms"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"[{name}] {result['flops_per_image'] / 1e9:.3f} GFLOP per image (forward + backward, 2 views)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for arm, seconds in result["compile_s"].items():
        lines.append(f"  warm-up of {arm} ({WARMUP_STEPS} steps, torch.compile included): {seconds:.1f} s")
    for arm, error in result["errors"].items():
        lines.append(f"  {arm}: failed in its warm-up, left out: {error}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m, peak, settings = result["machine"], result["matmul_peak"], result["settings"]
    after = f" ({peak['tflops_after']:.2f} after the shapes)" if "tflops_after" in peak else ""
    lines = [
        "# Pretext throughput: model step vs augmentation",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {m.get('gpu', m['cpu'])}, {m['cpu_count']} CPU cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads, device {m['device']}. Matmul peak ({peak['dtype']} {peak['n']}^3): "
        f"{peak['tflops']:.2f} TFLOP/s{after}. {settings['steps']} steps x {settings['rounds']} rounds per arm "
        f"after {settings['warmup_steps']} warm-up steps, arms alternated (order rotated per round), medians. "
        "overhead = 1 - arm / model_only; model TFLOP/s = counted FLOPs of a step x steps/s.",
    ]
    for name, shape in result["shapes"].items():
        lines += ["", *shape_markdown(name, shape)]
    return "\n".join(lines) + "\n"


def shape_markdown(name: str, shape: dict[str, Any]) -> list[str]:
    if "error" in shape:
        return [f"## {name}", "", f"Failed: `{shape['error']}`"]
    lines = [
        f"## {name}: {'x'.join(map(str, shape['image_shape']))} {shape['data']}, {shape['backbone']} "
        f"w{shape['width']}, batch {shape['batch']}, {shape['flops_per_image'] / 1e9:.3f} GFLOP/image",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(row) + " |" for row in table_rows(shape["arms"])),
    ]
    for arm, seconds in shape["compile_s"].items():
        lines += ["", f"Warm-up of {arm} ({WARMUP_STEPS} steps, torch.compile included): {seconds:.1f} s."]
    for arm, error in shape.get("errors", {}).items():
        lines += ["", f"{arm} failed in its warm-up and was left out: `{error}`"]
    return lines


def write_outputs(result: dict[str, Any], out: Path, quiet: bool = False) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    if not quiet:
        print(f"wrote {out} and {out.with_suffix('.md')}")


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: all; "
                        "fmnist with --preset)")
    parser.add_argument("--arms", default=None, help=f"comma list of {', '.join(ARMS)} (default: all but "
                        "the compiled ones)")
    parser.add_argument("--preset", default=None, help="take model, batch and augmentation from this YAML preset")
    parser.add_argument("--backbone", default=None, help="override every shape's backbone")
    parser.add_argument("--width", type=int, default=None, help="override every shape's width (default 64)")
    parser.add_argument("--batch", type=int, default=None, help="override every shape's batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and arm")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="DataLoader workers of the per_image arm; 0 skips that arm")
    parser.add_argument("--images", type=int, default=20000, help="training images held in memory per shape")
    parser.add_argument("--compile", action="store_true", help="add model_only_compiled and ours_compiled")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write JSON here and a Markdown table beside it")
    args = parser.parse_args(argv)
    args.shapes = _choose(parser, "--shapes", args.shapes, SHAPES, ["fmnist"] if args.preset else list(SHAPES))
    default_arms = [a for a in ARMS if a not in COMPILED_ARMS or args.compile]
    args.arms = _choose(parser, "--arms", args.arms, ARMS, default_arms)
    if args.compile:
        args.arms += [a for a in COMPILED_ARMS if a not in args.arms]
    if args.workers == 0:
        args.arms = [a for a in args.arms if a != "per_image"]
    for key in ("steps", "rounds", "images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1")
    if args.preset and not Path(args.preset).is_file():
        parser.error(f"--preset {args.preset}: no such file")
    if any(a in KORNIA_ARMS for a in args.arms) and not _has_kornia():
        parser.error("the kornia arms need kornia, which is not installed; choose --arms without them")
    return args


def _choose(parser: argparse.ArgumentParser, flag: str, text: Optional[str], known: Sequence[str],
            default: list[str]) -> list[str]:
    if text is None:
        return default
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from {', '.join(known)}")
    return list(dict.fromkeys(chosen))


def _has_kornia() -> bool:
    with contextlib.suppress(ImportError):
        import kornia  # noqa: F401

        return True
    return False


def augment_sources() -> dict[str, str]:
    """Short content hashes of the timed augmentation modules, so a result names the code it timed."""
    root = Path(__file__).resolve().parent.parent / "trainer"
    return {name: hashlib.sha256((root / f"{name}.py").read_bytes()).hexdigest()[:12]
            for name in ("augment", "augment_kornia") if (root / f"{name}.py").is_file()}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    load_before = os.getloadavg()[0]
    peak = matmul_peak(device)
    print(f"matmul peak ({peak['dtype']} {peak['n']}^3): {peak['tflops']:.2f} TFLOP/s on {device}", flush=True)
    result: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device),
        "settings": {"steps": args.steps, "rounds": args.rounds, "warmup_steps": WARMUP_STEPS, "arms": args.arms,
                     "workers": args.workers, "images": args.images, "preset": args.preset, "compile": args.compile},
        "augment_sources_sha256": augment_sources(),
        "matmul_peak": peak,
        "shapes": {},
    }

    def done(shapes: dict[str, Any]) -> None:  # partial results survive a later shape's crash or a timeout
        result["shapes"] = shapes
        if args.out:
            write_outputs(result, args.out, quiet=True)

    measure_shapes(args, device, peak["tflops"], done)
    peak["tflops_after"] = matmul_peak(device)["tflops"]  # far from the first figure: a noisy machine
    print(f"matmul peak again after the shapes: {peak['tflops_after']:.2f} TFLOP/s", flush=True)
    result["settings"]["load_average_before_after"] = [load_before, os.getloadavg()[0]]
    if args.out:
        write_outputs(result, args.out)
    return result


if __name__ == "__main__":
    main()
