"""The shared preprocessing: mode conversion, transparency, EXIF, resize/crop, decode errors, tensor ops."""

from __future__ import annotations

import functools
import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from trainer.data.preprocess import (
    ImageDecodeError,
    convert_channels,
    decode_image,
    load_image_file,
    probe_image_file,
    resize_tensor_images,
    to_uint8_chw,
)
from trainer.errors import DataError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width x height` followed by a junk IDAT: only the header is valid."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------ to_uint8_chw


def test_rgb_at_target_size_is_returned_unchanged_as_chw_uint8():
    pixels = random_rgb(8, 8)
    out = to_uint8_chw(Image.fromarray(pixels), 8, 3)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


def test_grayscale_to_rgb_repeats_the_grey_plane():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = to_uint8_chw(Image.fromarray(grey, "L"), 8, 3)
    for c in range(3):
        assert torch.equal(out[c], torch.from_numpy(grey))


def test_rgb_to_one_channel_matches_pil_convert_l():
    pixels = random_rgb(8, 8, seed=1)
    out = to_uint8_chw(Image.fromarray(pixels), 8, 1)
    expected = np.array(Image.fromarray(pixels).convert("L"))
    assert out.shape == (1, 8, 8)
    assert torch.equal(out[0], torch.from_numpy(expected))


def test_rgba_transparent_pixels_become_white_and_partial_alpha_blends_with_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black
    rgba[1, 1] = (200, 0, 100, 128)  # half transparent
    out = to_uint8_chw(Image.fromarray(rgba, "RGBA"), 4, 3)
    assert out[:, 0, 0].tolist() == [255, 255, 255]
    expected = [(c * 128 + 255 * 127 + 127) // 255 for c in (200, 0, 100)]
    assert out[:, 1, 1].tolist() == expected
    assert out[:, 2, 2].tolist() == [10, 20, 30]


def test_la_transparent_pixels_become_white():
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[..., 1] = 255
    la[3, 3] = (0, 0)
    out = to_uint8_chw(Image.fromarray(la, "LA"), 4, 1)
    assert out[0, 3, 3] == 255 and out[0, 0, 0] == 40


def test_palette_image_with_transparent_index_becomes_white():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.putpixel((0, 0), 0)
    image.putpixel((3, 3), 2)
    image.info["transparency"] = 0
    out = to_uint8_chw(image, 4, 3)
    assert out[:, 0, 0].tolist() == [255, 255, 255]  # index 0 (black) is transparent
    assert out[:, 1, 1].tolist() == [255, 0, 0]
    assert out[:, 3, 3].tolist() == [0, 255, 0]


def test_palette_image_without_transparency_keeps_its_colours():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0] + [12, 34, 56] + [0] * (254 * 3))
    image.putpixel((1, 0), 1)
    out = to_uint8_chw(image, 2, 3)
    assert out[:, 0, 1].tolist() == [12, 34, 56] and out[:, 0, 0].tolist() == [0, 0, 0]


def test_bilevel_mode_1_maps_to_0_and_255():
    image = Image.new("1", (2, 2), 0)
    image.putpixel((1, 1), 1)
    out = to_uint8_chw(image, 2, 1)
    assert out[0].tolist() == [[0, 0], [0, 255]]


def test_sixteen_bit_and_int32_images_are_scaled_from_the_16_bit_range():
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    image16 = Image.fromarray(values)
    assert image16.mode.startswith("I;16")
    assert to_uint8_chw(image16, 2, 1)[0].tolist() == [[0, 100], [255, 200]]
    image32 = Image.fromarray(values.astype(np.int32), "I")
    assert to_uint8_chw(image32, 2, 1)[0].tolist() == [[0, 100], [255, 200]]


def test_float_images_are_read_as_0_to_1_and_clipped():
    values = np.array([[0.0, 0.5], [1.0, 7.0]], dtype=np.float32)
    out = to_uint8_chw(Image.fromarray(values, "F"), 2, 1)
    assert out[0].tolist() == [[0, 128], [255, 255]]


def test_cmyk_is_converted_like_pil_convert_rgb():
    cmyk = Image.fromarray(np.random.default_rng(2).integers(0, 256, (4, 4, 4), dtype=np.uint8), "CMYK")
    out = to_uint8_chw(cmyk, 4, 3)
    assert torch.equal(out, torch.from_numpy(np.array(cmyk.convert("RGB"))).permute(2, 0, 1))


def test_exif_orientation_is_applied():
    pixels = random_rgb(2, 2, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(Image.fromarray(pixels), "PNG", exif=exif)
    out = decode_image(data, 2, 3)
    expected = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1))
    assert not torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


def test_resize_keeps_the_centre_square_of_a_wide_image():
    # 300x100: a green centre square (columns 100..199) between red borders.
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    pixels[:, 100:200] = (0, 255, 0)
    out = to_uint8_chw(Image.fromarray(pixels), 10, 3)
    assert out.shape == (3, 10, 10)
    # Interior columns are pure green; only the outermost columns may blend in a little red.
    assert out[1, :, 1:9].min() >= 250 and out[0, :, 1:9].max() <= 5
    assert out[1].float().mean() > 240


@pytest.mark.parametrize("height,width", [(48, 24), (24, 48)])
def test_resize_matches_resizing_the_shorter_side_then_cropping_the_centre(height, width):
    pixels = random_rgb(height, width, seed=4)
    out = to_uint8_chw(Image.fromarray(pixels), 12, 3)
    resized = np.array(Image.fromarray(pixels).resize((width // 2, height // 2), Image.Resampling.BICUBIC))
    top, left = (height // 2 - 12) // 2, (width // 2 - 12) // 2
    reference = torch.from_numpy(np.ascontiguousarray(resized[top : top + 12, left : left + 12])).permute(2, 0, 1)
    # PIL's two separable passes round in between; computing only the kept square can move
    # a value by one step.
    assert (out.int() - reference.int()).abs().max() <= 1


def test_tiny_one_pixel_image_is_upscaled_to_a_flat_square():
    out = to_uint8_chw(Image.new("RGB", (1, 1), (9, 99, 199)), 5, 3)
    assert out.shape == (3, 5, 5)
    assert out[:, 2, 2].tolist() == [9, 99, 199] and (out == out[:, :1, :1]).all()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        to_uint8_chw(Image.new("RGB", (2, 2)), 0, 3)
    with pytest.raises(ValueError):
        to_uint8_chw(Image.new("RGB", (2, 2)), 2, 2)


# ------------------------------------------------------------------ decode_image


@pytest.mark.parametrize("fmt,kwargs", [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})])
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    pixels = random_rgb(6, 6, seed=5)
    out = decode_image(encode(Image.fromarray(pixels), fmt, **kwargs), 6, 3)
    assert torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


def test_jpeg_decodes_close_to_the_original():
    pixels = np.full((16, 16, 3), (100, 150, 200), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95), 16, 3)
    assert (out.int() - torch.tensor([100, 150, 200]).view(3, 1, 1)).abs().max() <= 3


def test_gif_decodes_its_first_frame():
    first = Image.new("RGB", (4, 4), (255, 0, 0))
    second = Image.new("RGB", (4, 4), (0, 0, 255))
    data = encode(first, "GIF", save_all=True, append_images=[second])
    out = decode_image(data, 4, 3)
    assert out[:, 0, 0].tolist() == [255, 0, 0]


def test_empty_bytes_raise_a_decode_error_that_is_a_data_error():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", 8, 3)
    assert issubclass(ImageDecodeError, DataError)


def test_garbage_bytes_raise_a_decode_error():
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(np.random.default_rng(0).bytes(1000), 8, 3)


def test_unlisted_formats_are_refused():
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(encode(Image.new("RGB", (4, 4)), "TIFF"), 4, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_a_decode_error(fmt):
    data = encode(Image.fromarray(random_rgb(64, 64, seed=6)), fmt)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], 8, 3)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # The IDAT is junk: reaching the decoder would give a 'corrupt' error, not a size error.
    with pytest.raises(ImageDecodeError, match="9000x9000 = 81000000 pixels, more than the limit of 64000000"):
        decode_image(png_header_only(9000, 9000), 8, 3)
    with pytest.raises(ImageDecodeError, match="more than the limit of 100"):
        decode_image(encode(Image.new("RGB", (11, 10)), "PNG"), 8, 3, max_pixels=100)


def test_pil_decompression_bomb_warning_and_error_become_decode_errors_without_leaking_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            decode_image(png_header_only(10_000, 10_000), 8, 3, max_pixels=10**12)  # PIL warns
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            decode_image(png_header_only(100_000, 100_000), 8, 3, max_pixels=10**12)  # PIL raises
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # The process-wide filters are back to what they were.
    assert not any(f[2] is Image.DecompressionBombWarning and f[0] == "error" for f in warnings.filters)


def test_load_image_file_names_the_path_in_errors(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageDecodeError, match="nope.png"):
        load_image_file(str(missing), 8, 3)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        load_image_file(str(corrupt), 8, 3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.png: empty file"):
        load_image_file(str(empty), 8, 3)


def test_load_image_file_partial_is_picklable_and_decodes(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(path)
    load = pickle.loads(pickle.dumps(functools.partial(load_image_file, size=4, channels=3)))
    out = load(str(path))
    assert out.shape == (3, 4, 4) and out[:, 0, 0].tolist() == [1, 2, 3]


def test_probe_reports_size_without_decoding_and_rejects_bad_files(tmp_path):
    path = tmp_path / "header.png"
    path.write_bytes(png_header_only(30, 20))
    assert probe_image_file(path) == (30, 20)
    empty = tmp_path / "zero.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="zero.png: empty file"):
        probe_image_file(empty)


# ------------------------------------------------------------------ tensor batches


def test_resize_tensor_images_matches_float_interpolate_and_keeps_uint8():
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = resize_tensor_images(images, 8)
    expected = F.interpolate(images.float(), size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 8, 8)
    assert torch.equal(out, expected.round().clamp(0, 255).to(torch.uint8))


def test_resize_tensor_images_gives_the_same_result_in_small_chunks():
    images = torch.randint(0, 256, (7, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(resize_tensor_images(images, 30, chunk_bytes=1), resize_tensor_images(images, 30))


def test_resize_tensor_images_keeps_flat_images_flat_and_skips_same_size():
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert (resize_tensor_images(flat, 5) == 77).all()
    assert resize_tensor_images(flat, 16) is flat


def test_resize_tensor_images_centre_crops_non_square_input():
    images = torch.zeros((1, 1, 4, 8), dtype=torch.uint8)
    images[..., 2:6] = 200  # the centre 4x4 square
    assert (resize_tensor_images(images, 2) == 200).all()


def test_convert_channels_rgb_to_grey_equals_pil_convert_l_bit_for_bit():
    pixels = random_rgb(32, 32, seed=7)
    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
    grey = convert_channels(batch, 1, chunk_bytes=1)
    assert grey.shape == (1, 1, 32, 32) and grey.dtype == torch.uint8
    assert torch.equal(grey[0, 0], torch.from_numpy(np.array(Image.fromarray(pixels).convert("L"))))


def test_convert_channels_grey_to_rgb_repeats_and_same_count_is_a_no_op():
    grey = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (1, 3, 4, 4) and rgb.is_contiguous()
    assert all(torch.equal(rgb[0, c], grey[0, 0]) for c in range(3))
    assert torch.equal(convert_channels(rgb, 1), grey)  # equal planes keep their value
    assert convert_channels(grey, 1) is grey


def test_compositing_in_bands_gives_the_whole_image_formula():
    from trainer.decode import _composite_on_white  # noqa: PLC0415 - the banded helper itself
    rgba = np.random.default_rng(3).integers(0, 256, (53, 37, 4), dtype=np.uint8)
    color, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    expected = ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    for chunk_pixels in (1, 100, 37 * 53, 1 << 20):  # one row, a few rows, exactly the image, more
        banded = _composite_on_white(Image.fromarray(rgba, "RGBA"), chunk_pixels=chunk_pixels)
        np.testing.assert_array_equal(np.asarray(banded), expected)
