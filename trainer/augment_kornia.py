"""The kornia implementation of the augmentation pipelines: the REFERENCE for trainer.augment.

Training uses trainer.augment (fused tensor ops, several times faster on a GPU); this module is
kept, unchanged in behaviour, as the library-backed reference that the tests compare our ops
with and that benchmarks/pretext_throughput.py times as its "kornia" arm. It imports kornia,
which training itself no longer needs.

Batched image augmentation on the training device (kornia), with random parameters per sample.

Every pipeline is a ``torch.nn.Module`` that takes a ``uint8`` batch ``(N, C, H, W)`` (C = 1 or 3) on any
device and returns ``float32`` values in ``[0, 1]`` of shape ``(N, C, image_size, image_size)`` on the same
device. The output is *not* normalized: mean/std normalization lives inside the model, so the exported ONNX
graph performs it too. Inputs whose side differs from ``image_size`` are resized first (SimCLR's random
resized crop resizes anyway).

Pipelines (``build_augment(kind, ...)``):

``simclr``  random resized crop, horizontal flip, color jitter (applied with ``jitter_p``) and random
            grayscale. One-channel images get brightness and contrast jitter only (saturation and hue are
            meaningless on one channel and kornia's saturation op rejects it) and no grayscale step.
``weak``    random crop of ``image_size`` from the image padded by ``image_size // 8`` on every side with
            *reflect* padding (zero padding would paint black borders, an artificial cue on natural images;
            reflection keeps the border statistics), then a horizontal flip.
``strong``  RandAugment-style: for every sample independently, ``cfg.strong_ops`` operations drawn uniformly
            from :data:`STRONG_OPS` with a random magnitude per sample, then flip + the weak crop, then
            Cutout of one square of side ``round(cfg.cutout_fraction * image_size)`` filled with 0.5 gray.
``none``    ``uint8 -> float`` in ``[0, 1]`` only.

Randomness and seeding: all random draws use torch's global generators (those of the input's device, and
the CPU generator, which kornia uses for some parameters). ``torch.manual_seed(s)`` before a call therefore
makes the call deterministic; :func:`seeded` does the same inside a context that restores the previous RNG
state afterwards.

Note: kornia's own ``kornia.augmentation.auto.RandAugment`` draws *one* operation sequence per call for the
whole batch; :class:`StrongAugment` draws the operations per sample instead (see ``apply_ops``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import kornia.augmentation as KA
import kornia.enhance as KE
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from torch import nn

from trainer.augment import _check_batch, seeded
from trainer.config import AugmentConfig

__all__ = [
    "AUGMENT_KINDS",
    "STRONG_OPS",
    "ToFloat",
    "SimCLRAugment",
    "WeakAugment",
    "StrongAugment",
    "build_augment",
    "seeded",
]

AUGMENT_KINDS = ("simclr", "weak", "strong", "none")

# Largest magnitudes of the strong operations (reached at magnitude 1).
_MAX_ROTATE_DEG = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE = 0.3  # fraction of the image side
_MAX_ENHANCE = 0.9  # brightness/contrast/color/sharpness factor lies in [1 - 0.9, 1 + 0.9]
_MAX_POSTERIZE_DROP = 4  # bits removed: from 8 bits kept (identity) down to 4


# ---------------------------------------------------------------- shared helpers


def _to_unit(x: torch.Tensor, image_size: Optional[int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], resized to image_size when it differs (None: keep)."""
    out = x.float().div_(255.0)
    if image_size is not None and tuple(out.shape[-2:]) != (image_size, image_size) and out.shape[0] > 0:
        out = F.interpolate(out, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        out = out.clamp_(0.0, 1.0)
    return out


def _weak_crop(image_size: int) -> nn.Module:
    pad = image_size // 8
    return KA.RandomCrop((image_size, image_size), padding=pad, padding_mode="reflect", p=1.0)


def _check_sizes(image_size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")


class _Pipeline(nn.Module):
    """uint8 -> float [0, 1] conversion and input checks around a float pipeline `self.body`."""

    def __init__(self, image_size: int, channels: int, resize_input: bool = True) -> None:
        super().__init__()
        _check_sizes(image_size, channels)
        self.image_size = image_size
        self.channels = channels
        self._resize_input = resize_input

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """`generator` is accepted for parity with trainer.augment and ignored: kornia draws from torch's
        default generators (seed them, e.g. with `seeded`, for reproducible views)."""
        _check_batch(x, self.channels)
        out = _to_unit(x, self.image_size if self._resize_input else None)
        if out.shape[0] == 0:
            return out.new_zeros((0, self.channels, self.image_size, self.image_size))
        out = self.body(out)
        return out.clamp_(0.0, 1.0).contiguous()

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, channels={self.channels}"


class ToFloat(_Pipeline):
    """The ``none`` pipeline: uint8 -> float32 in [0, 1] (resized to image_size if needed)."""


# ---------------------------------------------------------------- SimCLR


class SimCLRAugment(_Pipeline):
    """SimCLR views: random resized crop, flip, color jitter with probability, random grayscale."""

    def __init__(self, image_size: int, channels: int, cfg: AugmentConfig) -> None:
        # The random resized crop produces image_size itself, so the input is never resized first.
        super().__init__(image_size, channels, resize_input=False)
        brightness, contrast, saturation, hue = cfg.jitter
        steps: list[nn.Module] = [
            KA.RandomResizedCrop(
                (image_size, image_size), scale=tuple(cfg.crop_scale), ratio=(3 / 4, 4 / 3), p=1.0
            ),
            KA.RandomHorizontalFlip(p=cfg.flip_p),
        ]
        if channels == 1:
            saturation, hue = 0.0, 0.0  # meaningless on one channel; kornia's saturation step rejects it
        if cfg.jitter_p > 0 and any(v > 0 for v in (brightness, contrast, saturation, hue)):
            steps.append(KA.ColorJitter(brightness, contrast, saturation, hue, p=cfg.jitter_p))
        if channels == 3 and cfg.grayscale_p > 0:
            steps.append(KA.RandomGrayscale(p=cfg.grayscale_p))
        self.steps = nn.Sequential(*steps)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x)


# ---------------------------------------------------------------- weak


class WeakAugment(_Pipeline):
    """SCAN's weak augmentation: reflect-padded random crop (pad image_size // 8) and horizontal flip."""

    def __init__(self, image_size: int, channels: int, cfg: AugmentConfig) -> None:
        super().__init__(image_size, channels)
        self.steps = nn.Sequential(_weak_crop(image_size), KA.RandomHorizontalFlip(p=cfg.flip_p))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x)


# ---------------------------------------------------------------- strong (RandAugment per sample)

# An op takes images (M, C, H, W) in [0, 1], magnitudes (M,) in [0, 1] and signs (M,) in {-1, +1}.
_Op = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _signed_factor(mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return 1.0 + sign * mag * _MAX_ENHANCE


def _op_identity(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return x


def _op_autocontrast(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    stretched = (x - lo) / span.clamp_min(1e-6)
    return torch.where(span > 1e-6, stretched, x)


def _op_equalize(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return KE.equalize(x)


def _op_solarize(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    # Pixels at or above the threshold are inverted. The threshold runs from 256/255 (nothing inverted:
    # identity) at magnitude 0 down to 0 (full inversion) at magnitude 1.
    return KE.solarize(x, thresholds=(1.0 - mag) * (256.0 / 255.0))


def _op_color(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return KE.adjust_saturation_with_gray_subtraction(x, _signed_factor(mag, sign))


def _op_posterize(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    bits = 8 - torch.round(mag * _MAX_POSTERIZE_DROP).to(torch.int64)
    return KE.posterize(x, bits)


def _op_contrast(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    # PIL/torchvision contrast: blend with the grayscale mean. (kornia.enhance.adjust_contrast instead
    # multiplies the raw values, i.e. acts as a second brightness op.)
    return KE.adjust_contrast_with_mean_subtraction(x, _signed_factor(mag, sign))


def _op_brightness(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    # PIL/torchvision brightness multiplies. (kornia.enhance.adjust_brightness *adds* its factor.)
    return KE.adjust_brightness_accumulative(x, _signed_factor(mag, sign))


def _op_sharpness(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return KE.sharpness(x, _signed_factor(mag, sign))


def _warp_centered(x: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Apply per-sample 2x2 `linear` maps about the image centre, then shift by `shift` pixels (x, y).

    Pixels coming from outside the image are filled with 0.
    """
    m, _, h, w = x.shape
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=x.device, dtype=x.dtype).expand(m, 2)
    offset = centre - torch.bmm(linear, centre.unsqueeze(-1)).squeeze(-1) + shift
    matrix = torch.cat([linear, offset.unsqueeze(-1)], dim=-1)  # (M, 2, 3), source -> destination pixels
    return warp_affine(x, matrix, dsize=(h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 2).clone()


def _op_rotate(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    angle = torch.deg2rad(sign * mag * _MAX_ROTATE_DEG).to(x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=-2)
    return _warp_centered(x, linear, torch.zeros_like(linear[:, 0]))


def _shear(axis: int) -> _Op:
    def op(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        linear = _eye(x)
        linear[:, axis, 1 - axis] = (sign * mag * _MAX_SHEAR).to(x.dtype)
        return _warp_centered(x, linear, torch.zeros_like(linear[:, 0]))

    return op


def _translate(axis: int) -> _Op:
    def op(x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] if axis == 0 else x.shape[-2]
        shift = torch.zeros(x.shape[0], 2, device=x.device, dtype=x.dtype)
        shift[:, axis] = (sign * mag * _MAX_TRANSLATE * side).to(x.dtype)
        return _warp_centered(x, _eye(x), shift)

    return op


_OPS: dict[str, _Op] = {
    "identity": _op_identity,
    "autocontrast": _op_autocontrast,
    "equalize": _op_equalize,
    "rotate": _op_rotate,
    "solarize": _op_solarize,
    "color": _op_color,
    "posterize": _op_posterize,
    "contrast": _op_contrast,
    "brightness": _op_brightness,
    "sharpness": _op_sharpness,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}
STRONG_OPS: tuple[str, ...] = tuple(_OPS)
_RGB_ONLY = frozenset({"color"})  # no effect on a gray image


class StrongAugment(_Pipeline):
    """RandAugment with per-sample operations, then flip + weak crop, then a 0.5-gray Cutout square.

    `ops` restricts the operation list (default: all of :data:`STRONG_OPS` that make sense for the
    channel count; "color" is left out for one channel). Each of the ``cfg.strong_ops`` slots draws, per
    sample, an operation index uniformly, a magnitude uniformly in [0, 1] and a sign for the signed ops.
    The Cutout square lies wholly inside the image, at a uniformly random position.
    """

    def __init__(
        self, image_size: int, channels: int, cfg: AugmentConfig, ops: Optional[Sequence[str]] = None
    ) -> None:
        super().__init__(image_size, channels)
        if cfg.strong_ops < 0:
            raise ValueError(f"augment.strong_ops: must not be negative, got {cfg.strong_ops}")
        if ops is None:
            names = [name for name in STRONG_OPS if channels == 3 or name not in _RGB_ONLY]
        else:
            names = list(ops)
            if not names:
                raise ValueError("StrongAugment: the operation list is empty")
            for name in names:
                if name not in _OPS:
                    raise ValueError(f"StrongAugment: unknown operation {name!r}; choose from {', '.join(STRONG_OPS)}")
                if channels == 1 and name in _RGB_ONLY:
                    raise ValueError(f"StrongAugment: operation {name!r} has no effect on 1-channel images")
        self.ops: tuple[str, ...] = tuple(names)
        self.num_ops = cfg.strong_ops
        self.cutout = min(image_size, int(round(cfg.cutout_fraction * image_size)))
        self.geometric = nn.Sequential(KA.RandomHorizontalFlip(p=cfg.flip_p), _weak_crop(image_size))

    def apply_ops(self, x: torch.Tensor) -> torch.Tensor:
        """The RandAugment stage alone, on float images in [0, 1]; every sample draws its own ops.

        Per slot: draw an op index per sample, sort the batch by it, run each op once on its contiguous
        group, and scatter the results back (one host sync per slot, for the group sizes).
        """
        n = x.shape[0]
        if n == 0 or self.num_ops == 0:
            return x
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.ops), (n,), device=x.device)
            mag = torch.rand(n, device=x.device, dtype=x.dtype)
            sign = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
            order = torch.argsort(choice, stable=True)
            counts = torch.bincount(choice, minlength=len(self.ops)).tolist()
            groups = zip(x[order].split(counts), mag[order].split(counts), sign[order].split(counts))
            outputs = []
            for name, (xs, ms, ss) in zip(self.ops, groups):
                if xs.shape[0]:
                    outputs.append(_OPS[name](xs, ms, ss).clamp(0.0, 1.0))
            result = torch.empty_like(x)
            result[order] = torch.cat(outputs)
            x = result
        return x

    def apply_cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Fill one square of side `self.cutout` per sample, wholly inside the image, with 0.5."""
        side = self.cutout
        n, _, h, w = x.shape
        if side <= 0 or n == 0:
            return x
        top = torch.randint(0, h - side + 1, (n, 1, 1, 1), device=x.device)
        left = torch.randint(0, w - side + 1, (n, 1, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        return torch.where(inside, torch.full((), 0.5, device=x.device, dtype=x.dtype), x)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.apply_ops(x)
        x = self.geometric(x)
        return self.apply_cutout(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_ops={self.num_ops}, cutout={self.cutout}, ops={self.ops}"


# ---------------------------------------------------------------- factory


def build_augment(kind: str, image_size: int, channels: int, cfg: AugmentConfig) -> nn.Module:
    """The pipeline named `kind` (one of AUGMENT_KINDS) for images of `channels` x image_size^2."""
    if kind == "simclr":
        return SimCLRAugment(image_size, channels, cfg)
    if kind == "weak":
        return WeakAugment(image_size, channels, cfg)
    if kind == "strong":
        return StrongAugment(image_size, channels, cfg)
    if kind == "none":
        return ToFloat(image_size, channels)
    raise ValueError(f"unknown augmentation kind {kind!r}; choose one of {', '.join(AUGMENT_KINDS)}")
