"""Image bytes -> the model's uint8 input: the one decoding path of training, export and serving.

Every decoded image goes through `image_to_array`, so a picture seen by the serving gateway is
turned into exactly the same `(C, size, size)` uint8 array the model saw during training
(`trainer.data.preprocess` wraps these functions for training as torch tensors). numpy and PIL
only: the gateway imports it without torch.

Conventions (kept deliberately simple and data independent):

* EXIF orientation is applied first (`PIL.ImageOps.exif_transpose`); unreadable EXIF is ignored.
* Transparency (RGBA, LA, PA, RGBa, La, palette images with a transparent index) is composited
  onto WHITE with integer rounding: ``out = (c * a + 255 * (255 - a) + 127) // 255``.
* 16-bit integer images (``I;16*``) and 32-bit integer images (``I``) are read as 16-bit data:
  values are clipped to ``0..65535`` and scaled by ``255 / 65535`` (rounded). Floating point
  images (``F``) are read as ``0..1`` data: clipped to ``[0, 1]`` and scaled by 255 (rounded).
* RGB -> L uses PIL's ``convert("L")`` (ITU-R 601-2 luma, fixed point, rounded);
  `convert_channels` reproduces that arithmetic bit for bit for in-memory tensors.
* Resizing: the shorter side is resized to ``size`` and the centre ``size x size`` square is
  kept, with PIL's antialiased BICUBIC filter (no ``reducing_gap`` shortcut, so the result is
  the exact convolution). It is done in one pass with ``Image.resize(box=...)``; PIL then only
  computes the kept square, and the pixels equal those of resizing the whole image and
  cropping its centre (when the centre offset is a whole pixel) up to one step of rounding
  between PIL's two separable passes. An image that already is ``size x size`` is not
  resampled at all.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.errors import DataError

#: Container formats `decode_image` accepts (PIL format names). Anything else is refused, which
#: keeps the many rarely used PIL decoders away from untrusted bytes sent to the gateway.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 64_000_000

_COMPOSITE_CHUNK_PIXELS = 1 << 20  # pixels per band of the transparency compositing
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "RGBA", "RGBa": "RGBA", "La": "LA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# `warnings.catch_warnings` changes process-wide state; serialise our use of it so that
# concurrent decodes (threads in the gateway or the folder loader) cannot interleave their
# save/restore of the warning filters. Only `Image.open` (header parsing) runs under the lock.
_OPEN_LOCK = threading.Lock()


class ImageDecodeError(DataError):
    """Bytes or a file that cannot be turned into an image; the message says why (and names the file)."""


class ImageTooLargeError(ImageDecodeError):
    """An image over the pixel limit (including PIL's decompression-bomb check); nothing was decoded."""


def _check_size_channels(size: int, channels: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    return int(size)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(image)
        except Exception:
            return image
    return image


def _composite_on_white(image: Image.Image, chunk_pixels: int = _COMPOSITE_CHUNK_PIXELS) -> Image.Image:
    """LA/RGBA image -> L/RGB image with transparent pixels white (integer rounding).

    Computed a band of rows at a time (about `chunk_pixels` pixels): on a whole 4096 x 4096 image
    the uint32 temporaries alone are several hundred MB; the result is the same."""
    arr = np.asarray(image)
    out = np.empty((*arr.shape[:2], arr.shape[2] - 1), dtype=np.uint8)
    rows = max(1, chunk_pixels // max(1, arr.shape[1]))
    for top in range(0, arr.shape[0], rows):
        color = arr[top:top + rows, :, :-1].astype(np.uint32)
        alpha = arr[top:top + rows, :, -1:].astype(np.uint32)
        out[top:top + rows] = (color * alpha + 255 * (255 - alpha) + 127) // 255
    if out.shape[-1] == 1:
        return Image.fromarray(out[..., 0], "L")
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """I;16*/I (16-bit range) and F (0..1 range) images -> 8-bit L, see the module docstring."""
    arr = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(arr.astype(np.float64), 0.0, 65535.0) * (255.0 / 65535.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def _to_l_or_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> an 'L' or 'RGB' image (alpha composited on white)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "P":
        has_alpha = "transparency" in image.info
        return _composite_on_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode in _ALPHA_MODES:
        target = _ALPHA_MODES[mode]
        if mode != target:
            image = image.convert(target)
        return _composite_on_white(image)
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return _high_depth_to_l(image)
    # CMYK, YCbCr, RGBX, HSV, ...: let PIL do the colour conversion.
    return image.convert("RGB")


def image_to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert a PIL image into the model's input layout.

    Args:
        image: any PIL image (modes L, LA, RGB, RGBA, P, P with transparency, I;16, I, F, CMYK, 1, ...).
        size: side of the square output.
        channels: 3 for RGB, 1 for L.

    Returns:
        `(channels, size, size)` uint8 contiguous array: EXIF-oriented, transparency on white,
        shorter side resized to `size` (antialiased bicubic) and centre-cropped.
    """
    size = _check_size_channels(size, channels)
    image = _apply_exif_orientation(image)
    image = _to_l_or_rgb(image)
    target_mode = "RGB" if channels == 3 else "L"
    if image.mode != target_mode:
        image = image.convert(target_mode)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if (width, height) != (size, size):
        side = min(width, height)
        left = (width - side) / 2.0
        top = (height - side) / 2.0
        image = image.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
    arr = np.array(image, dtype=np.uint8)  # a writable copy: (H, W) or (H, W, 3)
    if channels == 1:
        return arr[np.newaxis]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _open_checked(fp: BinaryIO, max_pixels: int, min_side: int = 1) -> Image.Image:
    """`Image.open` (header only) with format, size and decompression-bomb checks."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large (decompression bomb check): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"not a recognised image (expected one of {'/'.join(ALLOWED_FORMATS)} with an intact header)"
        ) from exc
    except Exception as exc:  # PIL raises many types on malformed headers
        raise ImageDecodeError(f"cannot read the image header: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if min(width, height) < min_side:
        raise ImageDecodeError(f"image is {width}x{height} pixels, smaller than the minimum side of {min_side}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} pixels"
        )
    return image


def decode_to_array(
    data: Union[bytes, bytearray, memoryview],
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> np.ndarray:
    """Decode PNG/JPEG/WebP/BMP/GIF bytes (GIF and animated WebP: first frame).

    The pixel count from the header is checked against `max_pixels` (`ImageTooLargeError`) and the
    shorter side against `min_side` before any pixel data is decoded. Raises `ImageDecodeError` for
    empty, undecodable, truncated, too small or oversized input.

    Returns:
        `(channels, size, size)` uint8 array, see `image_to_array`.
    """
    size = _check_size_channels(size, channels)
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty image data (0 bytes)")
    image = _open_checked(io.BytesIO(bytes(data)), max_pixels, min_side)
    try:
        image.load()
    except Exception as exc:
        raise ImageDecodeError(
            f"corrupt or truncated {image.format or 'image'} data: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return image_to_array(image, size, channels)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(
            f"cannot convert a {image.format} image of mode {image.mode}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        image.close()


def probe_image_file(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Cheap header check of an image file without decoding pixels.

    Returns `(width, height)`; raises `ImageDecodeError` naming `path` for an empty, unreadable,
    unrecognised or oversized file.
    """
    try:
        with open(path, "rb") as fp:
            if fp.seek(0, io.SEEK_END) == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            fp.seek(0)
            image = _open_checked(fp, max_pixels)
            result = image.size
            image.close()
            return result
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
