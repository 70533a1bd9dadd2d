"""Batched image augmentation on the training device: fused tensor ops with random parameters per sample.

Every pipeline is a ``torch.nn.Module`` called as ``augment(x)`` or ``augment(x, generator=g)`` on a
``uint8`` batch ``(N, C, H, W)`` (C = 1 or 3) on any device. It returns ``float32`` values in ``[0, 1]`` of
shape ``(N, C, image_size, image_size)`` on the same device. The output is *not* normalized: mean/std
normalization lives inside the model, so the exported ONNX graph performs it too. Inputs whose side differs
from ``image_size`` are first resized (bilinear, antialiased).

Why our own ops rather than kornia's pipelines: on an H200 kornia's SimCLR views capped pretext training
at a quarter of the model's speed (it draws parameters and launches many small kernels per op). Here every
pipeline is split into ``sample`` (draw all random parameters of a batch at once, on the input's device)
and ``apply`` (a fixed, short sequence of batched tensor ops driven by those parameters):

- all geometry of a sample (resized crop, flip, padded crop, rotate, shear, translate) is composed into ONE
  affine map and applied to the whole batch with one ``affine_grid`` + ``grid_sample``; pixels from outside
  the image come from a mirror reflection about the border pixels (as ``F.pad(mode="reflect")``);
- colour ops are per-sample tensor arithmetic; brightness, contrast and saturation are one fused blend;
- no op branches on data on the host: an op that a sample did not draw runs with identity parameters, so a
  batch never waits for the host (no ``.item()``, no group sizes).

Pipelines (``build_augment(kind, ...)``):

``simclr``  random resized crop (area fraction ``crop_scale``, aspect ratio 3/4..4/3, drawn as torchvision
            does: up to 10 tries, else the whole image), horizontal flip with ``flip_p``, colour jitter with
            probability ``jitter_p`` (brightness, contrast, saturation factors in ``1 +- jitter[i]``, hue
            shift in ``+- jitter[3]`` of the colour circle), random grayscale with ``grayscale_p``. On one
            channel only brightness and contrast apply. Brightness, contrast and saturation commute exactly
            when values are not clipped in between, so they run as one blend (clipped once); hue follows.
``weak``    random crop of ``image_size`` from the image reflect-padded by ``image_size // 8`` on every side
            (integer offsets: the output pixels are input pixels), then a horizontal flip.
``strong``  RandAugment as in the SCAN reference: ``strong_ops`` operations per sample, each drawn uniformly
            from :data:`STRONG_OPS` with a magnitude drawn uniformly in its configured range; then the weak
            flip + crop, then Cutout of a square of random side ``1..round(cutout_fraction * image_size)``
            centred anywhere (clipped at the border), filled with 0.5 gray. The geometric operations are
            folded into the single warp, so they act before the colour operations of the same sample.
``none``    ``uint8 -> float`` in ``[0, 1]`` only.

Randomness: every draw uses ``generator`` (a ``torch.Generator`` on the input's device) when given, else
torch's default generator of that device; so ``torch.manual_seed(s)`` before a call, or a generator seeded
by (seed, epoch, rank), makes the views reproducible. :func:`seeded` seeds the default generators inside a
block and restores them afterwards.

``trainer.augment_kornia`` keeps the previous kornia implementation: the tests compare these ops with
kornia and PIL, and ``benchmarks/pretext_throughput.py`` times both.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

STRONG_OPS: tuple[str, ...] = (
    "identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize", "contrast",
    "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
)
_RGB_ONLY = frozenset({"color"})  # no effect on a gray image
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


# ---------------------------------------------------------------- seeding and random draws


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator and `device`'s generator seeded to `seed`.

    The previous generator states are restored on exit, so seeding here does not disturb the caller's
    random stream. Equivalent, without the restore: ``torch.manual_seed(seed)`` before the call.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    backend = getattr(torch, device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with backend.device(index):
            backend.manual_seed(seed)
        yield


class _Draw:
    """Random draws for one batch on one device, from `generator` or the device's default generator."""

    def __init__(self, device: torch.device, generator: Optional[torch.Generator]) -> None:
        if generator is not None and torch.device(generator.device).type != device.type:
            raise ValueError(
                f"augmentation: the generator lives on {generator.device} but the batch on {device}; "
                "create it with torch.Generator(device=batch.device)"
            )
        self.device, self.generator = device, generator

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> Tensor:
        u = torch.rand(shape, device=self.device, generator=self.generator)
        return u * (high - low) + low if (low, high) != (0.0, 1.0) else u

    def chance(self, shape: tuple[int, ...], p: float) -> Tensor:
        """Bool tensor, each entry True with probability p."""
        return self.uniform(shape) < p

    def integers(self, shape: tuple[int, ...], low: Tensor | int, high: Tensor | int) -> Tensor:
        """Integers uniform in [low, high] inclusive (float tensor; bounds may be per-sample tensors)."""
        return torch.floor(self.uniform(shape) * (high - low + 1) + low)


# ---------------------------------------------------------------- geometry: one affine warp per batch
# A sampling matrix M (N, 3, 3) maps an OUTPUT pixel's index coordinates (x, y, 1) to the INPUT location
# it reads (pixel index coordinates: pixel centres at integers). Composition of image operations
# y = op2(op1(x)) reads x at M1 @ M2 @ p.


def _identity(n: int, device: torch.device) -> Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def flip_matrices(flip: Tensor, size: int) -> Tensor:
    """Horizontal flip where `flip` (N,) is true: x -> size - 1 - x."""
    m = _identity(flip.shape[0], flip.device)
    sign = 1.0 - 2.0 * flip.float()
    m[:, 0, 0] = sign
    m[:, 0, 2] = flip.float() * (size - 1)
    return m


def crop_matrices(left: Tensor, top: Tensor, width: Tensor, height: Tensor, out_size: int) -> Tensor:
    """Read the box (left, top, width, height) (continuous coordinates, pixel edges) resized to out_size.

    Half-pixel convention as ``F.interpolate(..., align_corners=False)``: output pixel j reads
    ``left + (j + 0.5) * width / out_size - 0.5``.
    """
    m = _identity(left.shape[0], left.device)
    sx, sy = width / out_size, height / out_size
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    m[:, 0, 2] = left + 0.5 * sx - 0.5
    m[:, 1, 2] = top + 0.5 * sy - 0.5
    return m


def centred_matrices(linear: Tensor, shift: Tensor, size: int) -> Tensor:
    """Read at ``linear @ (p - c) + c + shift`` (c the image centre): a map about the centre, then a shift."""
    n = linear.shape[0]
    m = _identity(n, linear.device)
    centre = torch.full((n, 2, 1), (size - 1) / 2.0, device=linear.device)
    m[:, :2, :2] = linear
    m[:, :2, 2:] = centre - linear @ centre + shift.unsqueeze(-1)
    return m


def warp(x: Tensor, matrices: Tensor, out_size: int, mode: str = "bilinear") -> Tensor:
    """Resample every image of `x` (N, C, H, W) at its sampling matrix; reflection outside the image."""
    n, _, h, w = x.shape
    # index coordinates -> grid_sample's normalized coordinates (align_corners=True: centres of corner
    # pixels at -1 and +1), on both sides of the map; written out per row so that no matrix is built on
    # the host (a host-to-device copy would wait for the device).
    half = (out_size - 1) / 2.0
    rows = []
    for r, side in ((0, w), (1, h)):
        row = matrices[:, r] * (2.0 / max(side - 1, 1)) - matrices[:, 2]  # (N, 3)
        rows.append(torch.stack([row[:, 0] * half, row[:, 1] * half, (row[:, 0] + row[:, 1]) * half + row[:, 2]], 1))
    theta = torch.stack(rows, dim=1)
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=True)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=True)


def rotation_linear(degrees: Tensor) -> Tensor:
    angle = torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=-2)


def shear_linear(shear_x: Tensor, shear_y: Tensor) -> Tensor:
    one = torch.ones_like(shear_x)
    return torch.stack([torch.stack([one, shear_x], -1), torch.stack([shear_y, one], -1)], dim=-2)


# ---------------------------------------------------------------- colour ops on float (N, C, H, W) in [0, 1]
# Per-sample parameters are (N,) tensors; every op is the identity at its neutral parameter.


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def gray(x: Tensor) -> Tensor:
    """Luma (N, 1, H, W): the channel itself for 1-channel images."""
    if x.shape[1] == 1:
        return x
    r, g, b = _GRAY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def blend_colour(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """Brightness (multiply), then contrast (blend with the mean luma), then saturation (blend with luma).

    PIL's ImageEnhance semantics; the three commute without clipping, so they fuse into
    ``a * x + b * luma(x) + c`` per sample. Factor 1 is the identity. Not clipped.
    """
    luma = gray(x)
    mean = luma.mean(dim=(1, 2, 3))
    a = brightness * contrast * saturation
    b = brightness * contrast * (1.0 - saturation)
    c = (1.0 - contrast) * brightness * mean
    out = _per_sample(a) * x + _per_sample(c)
    return out if x.shape[1] == 1 else out + _per_sample(b) * luma


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images by `shift` (N,) turns (0.5 = opposite colour) in HSV space."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    value, argmax = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6.0,
                      torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    hue = (hue / 6.0 + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB with the standard k-formula: channel n = v - c * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) % 6
    k = (torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1) + hue.unsqueeze(1) * 6.0) % 6.0  # 5, 3, 1
    return value.unsqueeze(1) - chroma.unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def to_grayscale(x: Tensor, where: Tensor) -> Tensor:
    """Replace the samples where `where` (N,) is true by their luma in every channel."""
    return torch.where(_per_sample(where), gray(x).expand_as(x), x)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert pixels >= threshold (N,) (in [0, 1] units; above 1 is the identity)."""
    return torch.where(x >= _per_sample(threshold), 1.0 - x, x)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` (N,) of each 8-bit value (8: the identity, up to 8-bit rounding)."""
    step = torch.pow(2.0, 8.0 - bits)
    q = torch.floor(torch.round(x * 255.0) / _per_sample(step)) * _per_sample(step)
    return q / 255.0


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1] (a constant channel is left as is)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 1e-6, (x - lo) / span.clamp_min(1e-6), x)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalization of each channel of each image on 256 levels (PIL/torchvision's algorithm)."""
    n, c, h, w = x.shape
    q = torch.round(x.reshape(n * c, h * w) * 255.0).clamp_(0, 255).long()
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    levels = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, levels, torch.zeros_like(levels)).amax(dim=1, keepdim=True)
    step = torch.floor((hist.sum(dim=1, keepdim=True) - hist.gather(1, last)) / 255.0)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = torch.floor((hist.cumsum(dim=1) + torch.floor(safe / 2.0)) / safe)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], dim=1).clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, q), q.float()) / 255.0
    return out.view(n, c, h, w)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance.Sharpness: blend with a 3x3 smoothed image (border pixels unchanged).

    PIL's SMOOTH kernel is 1 everywhere and 5 in the centre, over 13: (3x3 box sum + 4 * centre) / 13.
    """
    box = F.avg_pool2d(x, 3, stride=1) * 9.0
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = (box + 4.0 * x[:, :, 1:-1, 1:-1]) / 13.0
    return torch.lerp(degenerate, x, _per_sample(factor))  # exact x at factor 1


def cutout(x: Tensor, top: Tensor, left: Tensor, side: Tensor, fill: float = 0.5) -> Tensor:
    """Fill the square [top, top + side) x [left, left + side) of each sample (clipped) with `fill`."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    top, left, side = _per_sample(top), _per_sample(left), _per_sample(side)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return x.masked_fill(inside, fill)


# ---------------------------------------------------------------- pipelines


def _check_batch(x: Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"augmentation input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"augmentation input must be a uint8 batch (N, C, H, W), got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"augmentation input must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"augmentation built for {channels} channel(s) got a batch with {x.shape[1]}")


class _Pipeline(nn.Module):
    """uint8 -> float [0, 1] (resized to image_size when needed), checks, and sample -> apply."""

    def __init__(self, image_size: int, channels: int) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        self.image_size = image_size
        self.channels = channels

    def sample(self, n: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Any:
        """Every random parameter for a batch of `n` images, drawn on `device` (none here)."""
        return None

    def apply(self, x: Tensor, params: Any) -> Tensor:
        """The views of float images `x` (N, C, image_size, image_size) for drawn `params` (identity here)."""
        return x

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        _check_batch(x, self.channels)
        size = self.image_size
        out = x.float().div_(255.0)
        if out.shape[0] == 0:
            return out.new_zeros((0, self.channels, size, size))
        if tuple(out.shape[-2:]) != (size, size):
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out = self.apply(out, self.sample(out.shape[0], out.device, generator))
        return out.clamp_(0.0, 1.0).contiguous()

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, channels={self.channels}"


class ToFloat(_Pipeline):
    """The ``none`` pipeline: uint8 -> float32 in [0, 1] (resized to image_size if needed)."""


class SimCLRParams(NamedTuple):
    geometry: Tensor  # (N, 3, 3) sampling matrices: resized crop, then flip
    brightness: Tensor  # (N,) factors (1 where not jittered)
    contrast: Tensor
    saturation: Tensor
    hue: Tensor  # (N,) turns (0 where not jittered)
    grayscale: Tensor  # (N,) bool


def resized_crop_boxes(draw: _Draw, n: int, size: int, scale: tuple[float, float],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> Tensor:
    """(N, 4) integer boxes (left, top, width, height) as torchvision's RandomResizedCrop draws them.

    Per sample: up to `tries` candidates of area fraction in `scale` and log-uniform aspect ratio in
    `ratio`; the first that fits the image is taken, else the whole image. All candidates are drawn at
    once, so the number of random draws does not depend on the data.
    """
    area = draw.uniform((tries, n), *scale) * (size * size)
    log_ratio = draw.uniform((tries, n), math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    width = torch.round(torch.sqrt(area * aspect))
    height = torch.round(torch.sqrt(area / aspect))
    fits = (width > 0) & (width <= size) & (height > 0) & (height <= size)
    first = torch.argmax(fits.int(), dim=0)  # index of the first candidate that fits (0 if none)
    pick = first.unsqueeze(0)
    any_fits = fits.any(dim=0)
    full = torch.full((n,), float(size), device=draw.device)
    width = torch.where(any_fits, width.gather(0, pick)[0], full)
    height = torch.where(any_fits, height.gather(0, pick)[0], full)
    left = draw.integers((n,), 0, size - width)
    top = draw.integers((n,), 0, size - height)
    return torch.stack([left, top, width, height], dim=1)


class SimCLRAugment(_Pipeline):
    """SimCLR views: random resized crop, flip, colour jitter with probability, random grayscale."""

    def __init__(self, image_size: int, channels: int, cfg: AugmentConfig) -> None:
        super().__init__(image_size, channels)
        self.cfg = cfg
        brightness, contrast, saturation, hue = cfg.jitter
        if channels == 1:
            saturation, hue = 0.0, 0.0  # meaningless on one channel
        self.jitter = (brightness, contrast, saturation, hue)
        self.jitter_p = cfg.jitter_p if any(v > 0 for v in self.jitter) else 0.0
        self.grayscale_p = cfg.grayscale_p if channels == 3 else 0.0

    def sample(self, n: int, device: torch.device, generator: Optional[torch.Generator] = None) -> SimCLRParams:
        draw, size = _Draw(device, generator), self.image_size
        left, top, width, height = resized_crop_boxes(draw, n, size, self.cfg.crop_scale).unbind(1)
        geometry = crop_matrices(left, top, width, height, size) @ flip_matrices(
            draw.chance((n,), self.cfg.flip_p), size)
        jittered = draw.chance((n,), self.jitter_p)
        b, c, s, h = self.jitter
        factors = [
            torch.where(jittered, draw.uniform((n,), max(0.0, 1 - v), 1 + v), torch.ones(n, device=device))
            for v in (b, c, s)
        ]
        hue = torch.where(jittered, draw.uniform((n,), -h, h), torch.zeros(n, device=device))
        return SimCLRParams(geometry, *factors, hue, draw.chance((n,), self.grayscale_p))

    def apply(self, x: Tensor, params: SimCLRParams) -> Tensor:
        x = warp(x, params.geometry, self.image_size)
        if self.jitter_p > 0:
            x = blend_colour(x, params.brightness, params.contrast, params.saturation).clamp_(0.0, 1.0)
            if self.jitter[3] > 0:
                x = adjust_hue(x, params.hue)
        if self.grayscale_p > 0:
            x = to_grayscale(x, params.grayscale)
        return x


def weak_matrices(draw: _Draw, n: int, size: int, flip_p: float) -> Tensor:
    """Flip, then a crop of `size` from the image reflect-padded by size // 8 (integer offsets)."""
    pad = size // 8
    shift = draw.integers((2, n), -pad, pad)
    crop = _identity(n, draw.device)
    crop[:, 0, 2], crop[:, 1, 2] = shift[0], shift[1]
    return crop @ flip_matrices(draw.chance((n,), flip_p), size)


class WeakParams(NamedTuple):
    geometry: Tensor  # (N, 3, 3)


class WeakAugment(_Pipeline):
    """SCAN's weak augmentation: reflect-padded random crop (pad image_size // 8) and horizontal flip."""

    def __init__(self, image_size: int, channels: int, cfg: AugmentConfig) -> None:
        super().__init__(image_size, channels)
        self.flip_p = cfg.flip_p

    def sample(self, n: int, device: torch.device, generator: Optional[torch.Generator] = None) -> WeakParams:
        return WeakParams(weak_matrices(_Draw(device, generator), n, self.image_size, self.flip_p))

    def apply(self, x: Tensor, params: WeakParams) -> Tensor:
        return warp(x, params.geometry, self.image_size, mode="nearest")  # integer shifts: exact pixels


def _rows(values: Tensor, rows: Optional[Tensor]) -> Tensor:
    return values if rows is None else values[rows]


def _masked_batch(x: Tensor, where: Tensor, op: Callable[[Tensor, Optional[Tensor]], Tensor]) -> Tensor:
    """`op` on the whole batch, kept where `where` (N,) is true: no host sync (the GPU path)."""
    return torch.where(_per_sample(where), op(x, None), x)


def _masked_rows(x: Tensor, where: Tensor, op: Callable[[Tensor, Optional[Tensor]], Tensor]) -> Tensor:
    """`op` on the rows where `where` (N,) is true only (the CPU path: reads the row count on the host)."""
    rows = where.nonzero().flatten()
    if rows.numel() == 0:
        return x
    out = x.clone()
    out[rows] = op(x[rows], rows)
    return out


class StrongParams(NamedTuple):
    ops: Tensor  # (slots, N) index into StrongAugment.ops
    magnitude: Tensor  # (slots, N) in [0, 1]: position within the op's range
    geometry: Tensor  # (N, 3, 3): the geometric ops of every slot, flip and weak crop, composed
    cutout: Tensor  # (N, 3): top, left, side


class StrongAugment(_Pipeline):
    """RandAugment with per-sample operations and magnitudes, flip + weak crop, then Cutout.

    `ops` restricts the operation list (default: every op of :data:`STRONG_OPS` that makes sense for the
    channel count; "color" is left out for one channel). Magnitude ranges come from `cfg` (the SCAN
    reference's by default): rotate +- strong_rotate degrees, shear +- strong_shear, translate
    +- strong_translate of the side, enhance factors (brightness, contrast, color, sharpness) in
    strong_enhance, posterize bits in strong_posterize_bits, solarize threshold in [0, 256] levels.
    """

    def __init__(self, image_size: int, channels: int, cfg: AugmentConfig, ops: Optional[Sequence[str]] = None
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
                if name not in STRONG_OPS:
                    raise ValueError(f"StrongAugment: unknown operation {name!r}; choose from {', '.join(STRONG_OPS)}")
                if channels == 1 and name in _RGB_ONLY:
                    raise ValueError(f"StrongAugment: operation {name!r} has no effect on 1-channel images")
        self.ops: tuple[str, ...] = tuple(names)
        self.cfg = cfg
        self.num_ops = cfg.strong_ops
        self.cutout = min(image_size, int(round(cfg.cutout_fraction * image_size)))

    def _chosen(self, params: StrongParams, name: str) -> Tensor:
        """(slots, N) bool: where each slot drew op `name` (all False when the op is not in the list)."""
        if name not in self.ops:
            return torch.zeros_like(params.ops, dtype=torch.bool)
        return params.ops == self.ops.index(name)

    def _geometry(self, ops: Tensor, magnitude: Tensor, draw: _Draw, n: int) -> Tensor:
        cfg, size = self.cfg, self.image_size
        signed = 2.0 * magnitude - 1.0  # uniform in [-1, 1]
        m = _identity(n, draw.device)
        for slot in range(ops.shape[0]):
            def where(name: str, value: Tensor, neutral: float) -> Tensor:
                index = self.ops.index(name) if name in self.ops else -1
                return torch.where(ops[slot] == index, value, torch.full_like(value, neutral))

            linear = rotation_linear(where("rotate", signed[slot] * cfg.strong_rotate, 0.0)) @ shear_linear(
                where("shear_x", signed[slot] * cfg.strong_shear, 0.0),
                where("shear_y", signed[slot] * cfg.strong_shear, 0.0))
            shift = torch.stack([where("translate_x", signed[slot] * cfg.strong_translate * size, 0.0),
                                 where("translate_y", signed[slot] * cfg.strong_translate * size, 0.0)], dim=1)
            m = m @ centred_matrices(linear, shift, size)
        return m @ weak_matrices(draw, n, size, cfg.flip_p)

    def sample(self, n: int, device: torch.device, generator: Optional[torch.Generator] = None) -> StrongParams:
        draw = _Draw(device, generator)
        ops = draw.integers((self.num_ops, n), 0, len(self.ops) - 1).long()
        magnitude = draw.uniform((self.num_ops, n))
        geometry = self._geometry(ops, magnitude, draw, n)
        side = draw.integers((n,), 1, max(self.cutout, 1)) * (1.0 if self.cutout > 0 else 0.0)
        centre = draw.integers((2, n), 0, self.image_size - 1)
        corner = centre - torch.floor(side / 2.0)
        return StrongParams(ops, magnitude, geometry, torch.stack([corner[0], corner[1], side], dim=1))

    def apply_colour_ops(self, x: Tensor, params: StrongParams) -> Tensor:
        """The colour operations of every slot, in slot order (each sample runs only the ops it drew).

        On a GPU every op runs on the whole batch with identity parameters where a sample did not draw it
        (no host sync); on the CPU, where a sync costs nothing, each op runs on the rows that drew it.
        The two give the same views.
        """
        cfg = self.cfg
        lo, hi = cfg.strong_enhance
        factor = lo + params.magnitude * (hi - lo)
        bits_lo, bits_hi = cfg.strong_posterize_bits
        bits = torch.floor(bits_lo + params.magnitude * (bits_hi - bits_lo + 1)).clamp_(max=bits_hi)
        threshold = params.magnitude * 256.0 / 255.0
        chosen = {name: self._chosen(params, name) for name in STRONG_OPS}
        masked = _masked_rows if x.device.type == "cpu" else _masked_batch
        for slot in range(params.ops.shape[0]):
            f, pick = factor[slot], {name: chosen[name][slot] for name in STRONG_OPS}

            def enhance(name: str, rows: Optional[Tensor]) -> Tensor:
                value = torch.where(pick[name], f, torch.ones_like(f))
                return value if rows is None else value[rows]

            x = masked(x, pick["brightness"] | pick["contrast"] | pick["color"], lambda xs, rows: blend_colour(
                xs, enhance("brightness", rows), enhance("contrast", rows), enhance("color", rows)).clamp_(0.0, 1.0))
            x = masked(x, pick["sharpness"], lambda xs, rows: sharpness(xs, _rows(f, rows)).clamp_(0.0, 1.0))
            x = masked(x, pick["solarize"], lambda xs, rows: solarize(xs, _rows(threshold[slot], rows)))
            x = masked(x, pick["posterize"], lambda xs, rows: posterize(xs, _rows(bits[slot], rows)))
            x = masked(x, pick["autocontrast"], lambda xs, rows: autocontrast(xs))
            x = masked(x, pick["equalize"], lambda xs, rows: equalize(xs))
        return x

    def apply(self, x: Tensor, params: StrongParams) -> Tensor:
        x = warp(x, params.geometry, self.image_size)
        x = self.apply_colour_ops(x, params)
        top, left, side = params.cutout.unbind(1)
        return cutout(x, top, left, side)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_ops={self.num_ops}, cutout<={self.cutout}, ops={self.ops}"


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
