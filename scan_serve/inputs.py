"""Request images -> the model's uint8 input batch, with the gateway's input rules.

Encoded bytes go through `trainer.decode.decode_to_array` and raw pixels through
`trainer.decode.image_to_array`: the same functions that turned training images into tensors
(torch-free), so the served model sees exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from scan_serve.errors import ClientGone, InvalidInput, OverLimit
from trainer.decode import ImageDecodeError, ImageTooLargeError, decode_to_array, image_to_array


@dataclass(frozen=True)
class InputLimits:
    """What one request may contain. Violations name the image and the rule."""

    max_images: int = 256  # images per request
    max_image_bytes: int = 8 << 20  # encoded bytes or raw data per image
    max_pixels: int = 4096 * 4096  # width x height per image, checked before decoding
    min_side: int = 8  # shorter side per image
    max_top_k: int = 64  # nearest prototypes per image
    max_id_bytes: int = 256  # caller id per image
    max_message_bytes: int = 64 << 20  # whole request, enforced by gRPC itself
    max_jpeg_scans: int = 100  # scans per JPEG (a progressive JPEG has about 10; each costs a pass)
    max_rle_bmp_pixels: int = 1 << 20  # pixels of an RLE-compressed BMP (PIL decodes RLE in Python)

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_pixels", "min_side", "max_message_bytes", "max_jpeg_scans",
                     "max_rle_bmp_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _name(index: int, image_id: str) -> str:
    return f"image {index} (id {image_id!r})" if image_id else f"image {index}"


def check_request(num_images: int, top_k: int, limits: InputLimits) -> None:
    if num_images == 0:
        raise InvalidInput("the request has no images")
    if num_images > limits.max_images:
        raise OverLimit(f"the request has {num_images} images, more than the limit of {limits.max_images} per request")
    if top_k > limits.max_top_k:
        raise InvalidInput(f"top_k_prototypes is {top_k}, more than the limit of {limits.max_top_k}")


def prepare_image(image: Any, index: int, channels: int, size: int, limits: InputLimits) -> np.ndarray:
    """One `scan.v1.Image` -> `(channels, size, size)` uint8."""
    image_id = image.id
    if len(image_id.encode()) > limits.max_id_bytes:
        raise InvalidInput(f"image {index}: the id is longer than {limits.max_id_bytes} bytes")
    where = _name(index, image_id)
    kind = image.WhichOneof("content")
    if kind is None:
        raise InvalidInput(f"{where}: has neither encoded bytes nor raw pixels")
    if kind == "encoded":
        data = image.encoded
        if len(data) > limits.max_image_bytes:
            raise OverLimit(f"{where}: {len(data)} bytes, more than the limit of {limits.max_image_bytes} bytes per image")
        _check_decode_cost(data, where, limits)
        try:
            return decode_to_array(data, size, channels, limits.max_pixels, limits.min_side)
        except ImageTooLargeError as exc:
            raise OverLimit(f"{where}: {exc}") from None
        except ImageDecodeError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    return _prepare_raw(image.raw, where, channels, size, limits)


def _check_decode_cost(data: bytes, where: str, limits: InputLimits) -> None:
    """Refuse, from the bytes alone, files whose decoding costs far more than their pixel count says:
    a JPEG with many scans (every scan is a pass over the image) and a large RLE-compressed BMP."""
    if data[:2] == b"\xff\xd8":
        scans = data.count(b"\xff\xda")  # start-of-scan markers; 0xFF is byte-stuffed inside scan data
        if scans > limits.max_jpeg_scans:
            raise OverLimit(f"{where}: a JPEG of {scans} scans, more than the limit of {limits.max_jpeg_scans} "
                            "(a progressive JPEG has about 10)")
    elif data[:2] == b"BM" and len(data) >= 34 and int.from_bytes(data[14:18], "little") >= 40:
        width, height = (abs(int.from_bytes(data[i:i + 4], "little", signed=True)) for i in (18, 22))
        if int.from_bytes(data[30:34], "little") in (1, 2) and width * height > limits.max_rle_bmp_pixels:
            raise OverLimit(f"{where}: an RLE-compressed BMP of {width}x{height} pixels, more than the limit of "
                            f"{limits.max_rle_bmp_pixels} for RLE (send PNG)")


def _prepare_raw(raw: Any, where: str, channels: int, size: int, limits: InputLimits) -> np.ndarray:
    c, h, w = int(raw.channels), int(raw.height), int(raw.width)
    if c not in (1, 3):
        raise InvalidInput(f"{where}: raw channels must be 1 or 3, got {c}")
    if min(h, w) < limits.min_side:
        raise InvalidInput(f"{where}: raw image is {w}x{h} pixels, smaller than the minimum side of {limits.min_side}")
    if h * w > limits.max_pixels:
        raise OverLimit(f"{where}: raw image is {w}x{h} = {w * h} pixels, more than the limit of {limits.max_pixels}")
    if len(raw.data) > limits.max_image_bytes:
        raise OverLimit(f"{where}: {len(raw.data)} bytes, more than the limit of {limits.max_image_bytes} bytes per image")
    if len(raw.data) != c * h * w:
        raise InvalidInput(f"{where}: raw data has {len(raw.data)} bytes, but channels x height x width = "
                           f"{c}x{h}x{w} = {c * h * w}")
    pixels = np.frombuffer(raw.data, dtype=np.uint8).reshape(c, h, w)
    if c == channels and h == size and w == size:
        return pixels  # what image_to_array returns for an image already in the model's mode and size
    return image_to_array(raw_picture(raw), size, channels)


def raw_picture(raw: Any) -> Image.Image:
    """A checked `scan.v1.RawImage` (CHW uint8, 1 or 3 channels) as a PIL image (L or RGB)."""
    pixels = np.frombuffer(raw.data, dtype=np.uint8).reshape(raw.channels, raw.height, raw.width)
    if raw.channels == 1:
        return Image.fromarray(pixels[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")


def _model_sized_raw(images: Sequence[Any], channels: int, size: int, limits: InputLimits) -> Optional[np.ndarray]:
    """The batch in one `np.frombuffer` when every image is raw pixels of exactly the model's channels and
    size with an id within the limit (what `prepare_image` would return unchanged); else None."""
    length = channels * size * size
    if size < limits.min_side or size * size > limits.max_pixels or length > limits.max_image_bytes:
        return None
    for image in images:
        raw = image.raw
        if (image.WhichOneof("content") != "raw" or raw.channels != channels or raw.height != size
                or raw.width != size or len(raw.data) != length
                # a character is at most 4 UTF-8 bytes: encode only the ids that could be too long
                or len(image.id) * 4 > limits.max_id_bytes and len(image.id.encode()) > limits.max_id_bytes):
            return None
    data = b"".join(image.raw.data for image in images)
    return np.frombuffer(data, dtype=np.uint8).reshape(len(images), channels, size, size).copy()


def prepare_images(images: Sequence[Any], channels: int, size: int, limits: InputLimits,
                   alive: Callable[[], bool] = lambda: True) -> np.ndarray:
    """All images of a request -> `(N, channels, size, size)` uint8; the first bad image fails the request.

    `alive()` is asked before each image: once the client has gone (cancelled, deadline passed), the
    remaining images are not decoded (ClientGone)."""
    batch = _model_sized_raw(images, channels, size, limits)
    if batch is not None:
        return batch
    batch = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for index, image in enumerate(images):
        if not alive():
            raise ClientGone(f"the client went away after {index} of {len(images)} images were decoded")
        batch[index] = prepare_image(image, index, channels, size, limits)
    return batch
