"""Planning a run on a folder of images: settings chosen from the folder itself, unless the user set them.

`survey_folder` looks at the folder (file count; image sizes from the headers and whether the
images are grey from their pixels, both on an evenly spaced sample of at most `SURVEY_FILES`
files); `plan_folder` turns that into values for the keys below, each with a reason for people.
A key that the preset sets (to anything but null) or that `--set` sets is kept as given, and the
plan says so. The plan is a pure function of the folder and the device type (never of the
machine's load), so the same command plans the same run; a resumed run keeps the values its
`config.yaml` holds (`FolderPlan.keep_run`), so moving a run from a CPU to a GPU does not change it.

What is planned:

* `data.image_size`: the median shorter side rounded to a multiple of 4 (at least 16), at most
  64 px on a CPU and 96 on a GPU: small images are never upsampled to a fixed size.
* `data.channels`: 1 when every surveyed image is grey (grey modes, or RGB with equal channels), else 3.
* `model.backbone`, `model.width`: CPU: the light `convnet`, width 16 (on Fashion-MNIST width 32
  gave the same neighbor purity at 2.6x the cost). GPU: ResNet-18 (CIFAR stem up to 64 px,
  ImageNet stem above), width 64.
* `augment.crop_scale`: [0.5, 1.0] up to 48 px (on 28 px Fashion-MNIST: neighbor purity 0.778 vs
  0.766 for [0.2, 1.0]), else [0.2, 1.0]. `augment.jitter`, `augment.grayscale_p`: one channel:
  brightness and contrast only, no grayscale step; three: the SimCLR values.
* `pretext.batch_size`, `scan.batch_size`, `selflabel.batch_size`: the largest power of two up
  to N / 8, within 32..512, so that every epoch has at least 8 steps.
* `pretext.epochs`: as many as fit `PRETEXT_SECONDS` (3 minutes on a CPU) at the planned
  throughput (the cost model below), within `MIN_EPOCHS`..`MAX_EPOCHS`: small sets get more epochs.
* `scan.epochs`: with heads trained on cached features (the folder preset), about `SCAN_STEPS`
  steps, within 50..500 epochs. On a 2,500-image folder the preset's former 50 epochs (450 steps)
  left the heads unconverged: SCAN ACC 0.79, below k-means on the same features (0.89); 200 epochs
  gave 0.91, 400 gave 0.92, each a few seconds. When the backbone trains too, 50.
* `neighbors.k`: N / 50 within 5..20 (20 from 1,000 images on).
* `scan.k_range` (only with `scan.num_clusters: auto`, the folder preset's default): 2..20, or
  2..N / 50 for a set under 1,000 images, so that the largest candidate still has about 50
  images per cluster (at least 2..2).

The cost model: a pretext step of the `convnet` at width 16 on 1 x 28 x 28 images runs at
`CPU_IMAGES_PER_S` on 2 CPU cores with nothing else running
(`benchmarks/results/pretext_throughput_cpu_convnet16.json`); other settings scale it by
(size / 28)^2, (width / 16)^2, 1.1 for RGB and a per-backbone factor. It plans, it does not
promise: on a machine shared with other work the stage takes longer.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from trainer.config import AUTO, RunConfig
from trainer.data.folder import scan_image_files
from trainer.data.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, probe_image_file
from trainer.errors import DataError

__all__ = ["FolderPlan", "FolderSurvey", "PlannedValue", "plan_folder", "survey_folder"]

SURVEY_FILES = 5000
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
GREY_TOLERANCE = 12  # a pixel whose channels differ by more than this is coloured (JPEG rounding stays below)
GREY_COLOURED_SHARE = 0.01  # an RGB image is grey when at most this share of its pixels is coloured
CPU_MAX_SIZE, GPU_MAX_SIZE = 64, 96
CPU_IMAGES_PER_S = 2800.0  # convnet w16, 1x28x28, 2 quiet CPU cores (pretext_throughput_cpu_convnet16.json)
GPU_IMAGES_PER_S = 400_000.0  # the same unit of work on one H200 (ResNet-18 CIFAR w64 at 28 px: 32k img/s)
BACKBONE_COST = {"convnet": 1.0, "resnet18_cifar": 6.0, "resnet18": 0.4, "resnet50": 0.9}  # at width 16
PRETEXT_SECONDS = {"cpu": 180.0, "cuda": 300.0}
MIN_EPOCHS, MAX_EPOCHS = 30, 500
SCAN_STEPS = 3000  # SCAN steps on cached features (seconds on a CPU); 450 steps left the heads unconverged
SCAN_MIN_EPOCHS, SCAN_MAX_EPOCHS = 50, 500
PLANNED_KEYS = (
    "data.image_size", "data.channels", "model.backbone", "model.width", "augment.crop_scale", "augment.jitter",
    "augment.grayscale_p", "pretext.batch_size", "pretext.epochs", "scan.batch_size", "scan.epochs",
    "selflabel.batch_size", "neighbors.k", "scan.k_range",
)
K_SEARCH_MAX = 20  # the largest candidate K the plan proposes
IMAGES_PER_CLUSTER = 50  # ... and no more candidates than one per this many images


@dataclass(frozen=True)
class FolderSurvey:
    """What `survey_folder` saw: file count, shorter sides and colour of the sampled images."""

    root: str
    files: int
    sampled: int
    readable: int
    median_short_side: int
    min_short_side: int
    max_short_side: int
    grayscale: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        sample = f"{self.readable} of {self.files}" if self.sampled < self.files else f"all {self.files}"
        colour = "all grey" if self.grayscale else "in colour"
        return (f"{self.files} images in {self.root}; shorter side {self.min_short_side}-{self.max_short_side} px, "
                f"median {self.median_short_side} px; {colour} ({sample} checked)")


@dataclass(frozen=True)
class PlannedValue:
    key: str
    value: Any
    reason: str
    planned: bool = True  # False: the preset or --set gave the value and the plan kept it


@dataclass(frozen=True)
class FolderPlan:
    survey: FolderSurvey
    values: tuple[PlannedValue, ...] = field(default_factory=tuple)

    def overrides(self) -> dict[str, Any]:
        """The planned values, dotted key -> value (what `load_config(..., planned=...)` takes)."""
        return {v.key: v.value for v in self.values if v.planned}

    def keep_run(self, stored: Optional[RunConfig]) -> "FolderPlan":
        """This plan with the values of a run being resumed (its `config.yaml`) where they differ."""
        if stored is None:
            return self
        current = stored.to_dict()
        kept = []
        for v in self.values:
            section, name = v.key.split(".")
            old = current[section][name]
            if v.planned and _plain(old) != _plain(v.value):
                v = PlannedValue(v.key, old, f"kept from the run being resumed (a new plan would choose {v.value!r})")
            kept.append(v)
        return FolderPlan(self.survey, tuple(kept))

    def to_dict(self) -> dict[str, Any]:
        return {
            "survey": self.survey.to_dict(),
            "planned": {v.key: {"value": _plain(v.value), "reason": v.reason} for v in self.values if v.planned},
            "kept": {v.key: _plain(v.value) for v in self.values if not v.planned},
        }

    def lines(self) -> list[str]:
        """Lines for people: the survey, then one line per key."""
        out = [f"plan: {self.survey.describe()}"]
        for v in self.values:
            out.append(f"  {v.key} = {_plain(v.value)}  ({v.reason})")
        return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------- looking at the folder


def _is_grey(path: Path) -> bool:
    with Image.open(path) as image:
        if image.mode in GREY_MODES:
            return True
        if image.format == "JPEG":
            image.draft("RGB", (64, 64))  # decode at a reduced scale: enough to see colour
        rgb = image.convert("RGB")
        rgb.thumbnail((64, 64))
        pixels = np.asarray(rgb, dtype=np.int16)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > GREY_TOLERANCE).mean()) <= GREY_COLOURED_SHARE


def survey_folder(root: str | Path, max_files: int = SURVEY_FILES) -> FolderSurvey:
    """Count the image files under `root`; read sizes and colour of an evenly spaced sample of `max_files`.

    DataError naming `data.root` when the folder does not exist, holds no image files, or none of
    the sampled files can be read.
    """
    try:
        paths = scan_image_files(root)
    except DataError as exc:
        raise DataError(f"data.root: {exc}") from exc
    if not paths:
        raise DataError(f"data.root: no image files (.jpg .jpeg .png .webp .bmp) found in {root}")
    step = max(1, len(paths) / max_files)
    sample = [paths[int(i * step)] for i in range(min(max_files, len(paths)))]
    sides, grey, failures = [], True, []
    for path in sample:
        try:
            width, height = probe_image_file(path, DEFAULT_MAX_PIXELS)
            grey = grey and _is_grey(path)
        except (ImageDecodeError, OSError, ValueError) as exc:
            failures.append(str(exc))
            continue
        sides.append(min(width, height))
    if not sides:
        raise DataError(f"data.root: none of the {len(sample)} image files checked in {root} could be read, "
                        f"e.g. {failures[0]}")
    return FolderSurvey(str(root), len(paths), len(sample), len(sides), int(statistics.median(sides)),
                        min(sides), max(sides), grey)


# ---------------------------------------------------------------- the plan


def _power_of_two_batch(n: int) -> int:
    target = max(32, min(512, n // 8))
    return 1 << (target.bit_length() - 1)


def plan_folder(config: RunConfig, device_type: str, explicit: frozenset[str] = frozenset(),
                survey: Optional[FolderSurvey] = None) -> FolderPlan:
    """Values for `PLANNED_KEYS` from the folder at `config.data.root`; keys in `explicit` keep `config`'s value.

    `device_type` is "cpu" or "cuda" (any other is planned as a CPU).
    """
    if config.data.name != "folder":
        raise ValueError(f"plan_folder plans folders, not {config.data.name!r}")
    survey = survey or survey_folder(config.data.root)
    gpu = device_type == "cuda"
    current = config.to_dict()
    values: list[PlannedValue] = []

    def decide(key: str, value: Any, reason: str) -> Any:
        if key in explicit:
            section, name = key.split(".")
            kept = current[section][name]
            values.append(PlannedValue(key, kept, "set by the preset or --set", planned=False))
            return kept
        values.append(PlannedValue(key, value, reason))
        return value

    n = survey.files
    cap = GPU_MAX_SIZE if gpu else CPU_MAX_SIZE
    native = max(16, int(round(survey.median_short_side / 4)) * 4)
    if native <= cap:
        size_reason = f"the median shorter side, {survey.median_short_side} px, rounded to a multiple of 4"
    else:
        native = cap
        size_reason = f"the median shorter side is {survey.median_short_side} px; at most {cap} px on a {device_type}"
    size = decide("data.image_size", native, size_reason)
    channels = decide("data.channels", 1 if survey.grayscale else 3,
                      "every image checked is grey" if survey.grayscale else "the images are in colour")
    if gpu:
        backbone = decide("model.backbone", "resnet18_cifar" if size <= 64 else "resnet18",
                          "GPU: ResNet-18, " + ("CIFAR stem for small images" if size <= 64 else "ImageNet stem"))
        width = decide("model.width", 64, "GPU: the standard ResNet width")
    else:
        backbone = decide("model.backbone", "convnet", "CPU: the light residual convnet (10x cheaper than ResNet-18)")
        width = decide("model.width", 16,
                       "CPU: width 32 gave the same neighbor purity on Fashion-MNIST at 2.6x the cost")
    decide("augment.crop_scale", (0.5, 1.0) if size <= 48 else (0.2, 1.0),
           "small images: milder crops" if size <= 48 else "the SimCLR crops")
    if channels == 1:
        decide("augment.jitter", (0.4, 0.4, 0.0, 0.0), "1 channel: brightness and contrast only")
        decide("augment.grayscale_p", 0.0, "1 channel: no grayscale step")
    else:
        decide("augment.jitter", (0.4, 0.4, 0.4, 0.1), "3 channels: the SimCLR jitter")
        decide("augment.grayscale_p", 0.2, "3 channels: the SimCLR grayscale step")
    batch = _power_of_two_batch(n)
    batch_reason = f"a power of two up to N / 8 = {n // 8} (within 32..512): at least 8 steps per epoch"
    decide("pretext.batch_size", batch, batch_reason)
    scan_batch = decide("scan.batch_size", batch, batch_reason)
    if config.scan.update == "head" and config.scan.augment == "none":
        steps = max(1, n // min(scan_batch, n))
        decide("scan.epochs", int(min(SCAN_MAX_EPOCHS, max(SCAN_MIN_EPOCHS, round(SCAN_STEPS / steps)))),
               f"about {SCAN_STEPS} steps of {steps} per epoch on cached features (within "
               f"{SCAN_MIN_EPOCHS}..{SCAN_MAX_EPOCHS}): a small set needs more epochs to converge")
    else:
        decide("scan.epochs", SCAN_MIN_EPOCHS, "the backbone trains too: the SCAN reference's 50 epochs")
    decide("selflabel.batch_size", batch, batch_reason)
    rate = (GPU_IMAGES_PER_S if gpu else CPU_IMAGES_PER_S) / (
        (size / 28) ** 2 * (width / 16) ** 2 * (1.1 if channels == 3 else 1.0) * BACKBONE_COST.get(backbone, 6.0))
    seconds = PRETEXT_SECONDS["cuda" if gpu else "cpu"]
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(seconds * rate / n))))
    decide("pretext.epochs", epochs,
           f"about {seconds:.0f} s of pretext training at a planned {rate:.0f} images/s on an idle "
           f"{'GPU' if gpu else '2-core CPU'} for {n} images (within {MIN_EPOCHS}..{MAX_EPOCHS})")
    k = min(20, max(5, n // 50), n - 1)
    decide("neighbors.k", k, "20 neighbors from 1,000 images on" if k == 20 else "N / 50 for a small set")
    if config.scan.num_clusters == AUTO:
        high = min(K_SEARCH_MAX, max(2, n // IMAGES_PER_CLUSTER))
        decide("scan.k_range", [2, high],
               f"candidates 2..{K_SEARCH_MAX} from {K_SEARCH_MAX * IMAGES_PER_CLUSTER:,} images on"
               if high == K_SEARCH_MAX else f"up to N / {IMAGES_PER_CLUSTER} for a small set: about "
               f"{IMAGES_PER_CLUSTER} images per cluster at the largest K")
    return FolderPlan(survey, tuple(values))
