"""A generated corpus of malformed ClassifyUnlabeled requests, each with the status it must get.

Each case is (name, request bytes, expected status names, text the message must contain). Requests are
raw bytes so that invalid UTF-8 and non-messages can be sent at all.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from scan_serve.errors import InvalidInput, OverLimit
from scan_serve.inputs import InputLimits, prepare_image
from scan_serve.proto import scan_pb2

INVALID, EXHAUSTED = ("INVALID_ARGUMENT",), ("RESOURCE_EXHAUSTED",)


def encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels if fmt in ("JPEG", "WEBP", "BMP") else pixels[:, :, 0]).save(buffer, format=fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header declares width x height (valid CRCs), with `body` as its (possibly short) IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body or zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)
    body = b"".join(compressor.compress(row * 250) for _ in range(side // 250)) + compressor.flush()
    return png_declaring(side, side, body)


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE-compressed BMP declaring `width` x `height` pixels in about 1 KB (two runs a row)."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    rle = (bytes((255, 7)) * 2 + b"\x00\x00") * height + b"\x00\x01"  # runs, end of line ..., end of bitmap
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + info + palette + rle


def jpeg_of_scans(extra_scans: int, side: int = 64) -> bytes:
    """A progressive JPEG whose last scan is repeated `extra_scans` times (libjpeg decodes every one)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * extra_scans + data[end:]


def request(*images: scan_pb2.Image, **options) -> bytes:
    return scan_pb2.ClassifyRequest(images=list(images), **options).SerializeToString()


def image_bytes(data: bytes, image_id: str = "") -> scan_pb2.Image:
    return scan_pb2.Image(id=image_id, encoded=data)


def raw(data: bytes, channels: int, height: int, width: int) -> scan_pb2.Image:
    return scan_pb2.Image(raw=scan_pb2.RawImage(data=data, channels=channels, height=height, width=width))


def decodes_or_is_refused(data: bytes, channels: int = 1, size: int = 28) -> None:
    """Prepare `data` as the gateway prepares an encoded image: a (channels, size, size) uint8 array or
    InvalidInput / OverLimit are the only acceptable outcomes (anything else propagates)."""
    try:
        pixels = prepare_image(scan_pb2.Image(encoded=data), 0, channels, size, InputLimits())
    except (InvalidInput, OverLimit):
        return
    if pixels.shape != (channels, size, size) or pixels.dtype != np.uint8:
        raise AssertionError(f"decoded to {pixels.dtype} {pixels.shape}")


def corpus() -> list[tuple[str, bytes, tuple[str, ...], str]]:
    cases = []
    formats = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF")}

    # truncated files, at many offsets that cut into the pixel data (a file cut only in its trailer, such
    # as a PNG missing the last bytes of its IEND chunk or a GIF missing its ';', still holds every pixel;
    # PIL decodes it whole and the gateway accepts it)
    for fmt, data in formats.items():
        for cut in sorted({1, 2, 3, 4, 6, 8, 12, 16, 20, 26, 33, 50, 100, len(data) // 4, len(data) // 2, 3 * len(data) // 4,
                           len(data) - 40, len(data) - 60}):
            cases.append((f"{fmt} truncated to {cut} bytes", request(image_bytes(data[:cut], "t")), INVALID,
                          "image 0 (id 't')"))
    # zero bytes and whitespace
    cases.append(("zero bytes", request(image_bytes(b"", "z")), INVALID, "empty image data"))
    for filler in (b" ", b"\n", b"\0" * 16, b"\xff" * 64):
        cases.append((f"filler {filler[:4]!r}", request(image_bytes(filler)), INVALID, "image 0"))
    # wrong magic: random bytes, flipped first byte, a magic prefix then garbage
    rng = np.random.default_rng(1)
    for length in (1, 10, 100, 1000, 5000):
        for seed in range(4):
            noise = np.random.default_rng(seed * 7 + length).integers(0, 256, length, dtype=np.uint8).tobytes()
            cases.append((f"random {length} bytes #{seed}", request(image_bytes(noise)), INVALID, "image 0"))
    for fmt, data in formats.items():
        cases.append((f"{fmt} first byte flipped", request(image_bytes(bytes([data[0] ^ 0xFF]) + data[1:])), INVALID,
                      "image 0"))
        for length in (16, 64, 512):
            cases.append((f"{fmt} magic + {length} garbage", request(image_bytes(
                data[:8] + rng.integers(0, 256, length, dtype=np.uint8).tobytes())), INVALID, "image 0"))
    cases.append(("TIFF (not an accepted format)", request(image_bytes(b"II*\0" + bytes(200))), INVALID,
                  "not a recognised image"))
    # huge declared dimensions (headers only, nothing behind them)
    for width, height in ((100000, 100000), (65535, 65535), (20000, 20000), (4097, 4097), (10**6, 40), (40, 10**6)):
        cases.append((f"PNG declaring {width}x{height}", request(image_bytes(png_declaring(width, height), "h")),
                      EXHAUSTED, "pixels"))
    for width, height in ((1, 10**6), (10**6, 1), (3, 3), (7, 5000)):
        cases.append((f"PNG declaring {width}x{height}", request(image_bytes(png_declaring(width, height))), INVALID,
                      "minimum side"))
    bmp = bytearray(formats["BMP"])
    for width, height in ((60000, 60000), (30000, 30000), (5000, 4000)):
        patched = bytearray(bmp)
        patched[18:26] = struct.pack("<ii", width, height)
        cases.append((f"BMP declaring {width}x{height}", request(image_bytes(bytes(patched))), EXHAUSTED + INVALID,
                      "image 0"))
    gif = bytearray(formats["GIF"])
    for width, height in ((65535, 65535), (9000, 9000)):
        patched = bytearray(gif)
        patched[6:10] = struct.pack("<HH", width, height)
        cases.append((f"GIF screen {width}x{height}", request(image_bytes(bytes(patched))), EXHAUSTED + INVALID,
                      "image 0"))
    jpeg = formats["JPEG"]
    sof = jpeg.find(b"\xff\xc0")
    for width, height in ((65535, 65535), (8000, 8000), (60000, 300)):
        patched = bytearray(jpeg)
        patched[sof + 5:sof + 9] = struct.pack(">HH", height, width)
        cases.append((f"JPEG SOF {width}x{height}", request(image_bytes(bytes(patched))), EXHAUSTED, "pixels"))
    # real decompression bombs
    for side in (5000, 20000):
        cases.append((f"PNG bomb {side}x{side}", request(image_bytes(png_bomb(side), "bomb")), EXHAUSTED, "pixels"))
    # raw tensors: wrong sizes, channels, dimensions, dtypes
    for delta in (-784, -1, 1, 783, 784 * 3):
        cases.append((f"raw 1x28x28 with {784 + delta} bytes", request(raw(bytes(784 + delta), 1, 28, 28)), INVALID,
                      "raw data has"))
    for channels in (0, 2, 4, 255, 2**31):
        cases.append((f"raw {channels} channels", request(raw(bytes(784), channels, 28, 28)), INVALID,
                      "raw channels must be 1 or 3"))
    for height, width in ((0, 28), (28, 0), (0, 0), (1, 1), (7, 28), (28, 7)):
        cases.append((f"raw {height}x{width}", request(raw(bytes(height * width), 1, height, width)), INVALID,
                      "minimum side"))
    for height, width in ((100000, 100000), (2**31, 2**31), (4097, 4097), (10**6, 20)):
        cases.append((f"raw declared {height}x{width}", request(raw(bytes(16), 1, height, width)), EXHAUSTED,
                      "pixels"))
    for dtype in ("float32", "float64", "uint16", "int32"):
        data = np.zeros((1, 28, 28), dtype=dtype).tobytes()
        cases.append((f"raw {dtype} data", request(raw(data, 1, 28, 28)), INVALID, "raw data has"))
    # oversize batches and other request-level rules
    for count in (257, 300, 1000):
        cases.append((f"{count} images", request(*[raw(bytes(784), 1, 28, 28)] * count), EXHAUSTED,
                      f"the request has {count} images"))
    cases.append(("no images", request(), INVALID, "no images"))
    cases.append(("top_k 65", request(raw(bytes(784), 1, 28, 28), top_k_prototypes=65), INVALID, "top_k_prototypes"))
    cases.append(("top_k 2^32-1", request(raw(bytes(784), 1, 28, 28), top_k_prototypes=2**32 - 1), INVALID,
                  "top_k_prototypes"))
    cases.append(("id of 257 bytes", request(scan_pb2.Image(id="x" * 257, encoded=formats["PNG"])), INVALID,
                  "longer than 256 bytes"))
    cases.append(("id of 100 4-byte characters", request(scan_pb2.Image(id="\U0001F600" * 100,
                                                                           encoded=formats["PNG"])), INVALID,
                  "longer than 256 bytes"))
    for k in range(5):
        cases.append((f"image without content #{k}", request(*[raw(bytes(784), 1, 28, 28)] * k,
                                                              scan_pb2.Image(id=f"m{k}")), INVALID,
                      "neither encoded bytes nor raw pixels"))
    cases.append(("raw without data", request(scan_pb2.Image(raw=scan_pb2.RawImage(channels=1, height=28, width=28))),
                  INVALID, "raw data has 0 bytes"))
    # a bad image behind good ones
    good = image_bytes(formats["PNG"], "good")
    for position in (1, 5, 50):
        cases.append((f"bad image at {position}", request(*[good] * position, image_bytes(formats["PNG"][:30], "bad")),
                      INVALID, f"image {position} (id 'bad')"))
    # invalid UTF-8 in string fields, and bytes that are no message at all
    for k, bad in enumerate((b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xe2\x82\x28",
                             b"\xf0\x28\x8c\xbc", b"\xf0\x90\x28\xbc", b"\xf8\xa1\xa1\xa1\xa1", b"\xed\xa0\x80")):
        image = b"\x0a" + bytes([len(bad)]) + bad + b"\x12\x04abcd"
        cases.append((f"invalid UTF-8 id #{k}", b"\x0a" + bytes([len(image)]) + image, INVALID, "UTF-8"))
    for k, junk in enumerate((b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05abc", b"\x12",
                              b"\x0a\x02\x1a\xff", b"\x08" + b"\xff" * 11)):
        cases.append((f"not a message #{k}", junk, INVALID, "not a valid scan.v1.ClassifyRequest"))
    return cases
