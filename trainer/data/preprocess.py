"""Image preprocessing for training: `trainer.decode` as torch tensors, and in-memory batches.

Decoding (formats, EXIF, transparency, bit depth, resizing; see `trainer.decode` for the
conventions) is one implementation shared with the gateway; here it returns torch tensors.
`convert_channels` reproduces PIL's RGB -> L arithmetic bit for bit for in-memory tensors, and
`resize_tensor_images` resizes in-memory sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from PIL import Image

from trainer.decode import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    decode_to_array,
    image_to_array,
    probe_image_file,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "convert_channels",
    "decode_image",
    "load_image_file",
    "probe_image_file",
    "resize_tensor_images",
    "to_uint8_chw",
]


def to_uint8_chw(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    """`trainer.decode.image_to_array` as a `(channels, size, size)` uint8 tensor."""
    return torch.from_numpy(image_to_array(image, size, channels))


def decode_image(
    data: Union[bytes, bytearray, memoryview],
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> torch.Tensor:
    """`trainer.decode.decode_to_array` as a `(channels, size, size)` uint8 tensor."""
    return torch.from_numpy(decode_to_array(data, size, channels, max_pixels, min_side))


def load_image_file(
    path: Union[str, Path], size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Read and decode one image file; errors are `ImageDecodeError` naming `path`.

    Picklable through `functools.partial(load_image_file, size=..., channels=...)`.

    Returns:
        `(channels, size, size)` uint8 tensor.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    try:
        return decode_image(data, size, channels, max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc


# ------------------------------------------------------------------ in-memory batches

_CHUNK_BYTES = 256 * 1024 * 1024  # float32 working memory per chunk, roughly


def _chunk_length(per_image_elements: int, chunk_bytes: int) -> int:
    return max(1, int(chunk_bytes // max(1, per_image_elements * 4)))


def resize_tensor_images(
    images: torch.Tensor, size: int, chunk_bytes: int = _CHUNK_BYTES
) -> torch.Tensor:
    """Resize a uint8 batch to `size x size` (bilinear, antialiased), a chunk at a time.

    Args:
        images: `(N, C, H, W)` uint8. Non-square inputs are centre-cropped to their shorter side first.
        size: output side.
        chunk_bytes: float32 working memory per chunk; bounds the peak memory for large N.

    Returns:
        `(N, C, size, size)` uint8 tensor (the input itself when it already has that size).
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    n, c, h, w = images.shape
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, :, top : top + side, left : left + side]
        h = w = side
    if h == size:
        return images.contiguous()
    out = torch.empty((n, c, size, size), dtype=torch.uint8, device=images.device)
    step = _chunk_length(c * max(h * w, size * size) * 2, chunk_bytes)
    for start in range(0, n, step):
        x = images[start : start + step].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + step] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_channels(images: torch.Tensor, channels: int, chunk_bytes: int = _CHUNK_BYTES) -> torch.Tensor:
    """Convert a uint8 batch between 1 and 3 channels.

    `(N, 1, H, W)` -> `(N, 3, H, W)` repeats the grey plane; `(N, 3, H, W)` -> `(N, 1, H, W)`
    uses ITU-R 601-2 luma with PIL's fixed-point rounding,
    ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``, so it equals `Image.convert("L")` exactly.
    Returns the input itself when it already has `channels` channels.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        n, _, h, w = images.shape
        out = torch.empty((n, 1, h, w), dtype=torch.uint8, device=images.device)
        step = _chunk_length(3 * h * w, chunk_bytes)
        for start in range(0, n, step):
            x = images[start : start + step].to(torch.int32)
            luma = (x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 32768) >> 16
            out[start : start + step, 0] = luma.to(torch.uint8)
        return out
    raise ValueError(f"cannot convert {have} channels to {channels}")
