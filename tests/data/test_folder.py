"""Image-folder reader on a folder of real files of every awkward kind."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.base import FileImageSet, TensorImageSet
from trainer.data.folder import SkippedImagesWarning, load_image_folder, scan_image_files
from trainer.errors import DataError

SIZE = 10
READABLE = [
    "UPPER.PNG",
    "a_rgb.jpg",
    "b_gray.png",
    "c_rgba.png",
    "d_palette.png",
    "e_huge.png",
    "f_tiny.bmp",
    "g_lossless.webp",
    "sub/i.jpeg",
    "sub/nested/h_deep.png",
]
UNREADABLE = ["corrupt.jpg", "zero.png"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub" / "nested").mkdir(parents=True)
    Image.new("RGB", (12, 10), (200, 10, 10)).save(root / "UPPER.PNG")
    Image.new("RGB", (40, 30), (30, 60, 90)).save(root / "a_rgb.jpg", quality=95)
    Image.new("L", (10, 10), 77).save(root / "b_gray.png")
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:, 5:] = (0, 0, 255, 255)  # right half opaque blue, left half fully transparent black
    Image.fromarray(rgba, "RGBA").save(root / "c_rgba.png")
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([10, 20, 30, 250, 240, 230] + [0] * (254 * 3))
    palette.paste(1, (0, 0, 10, 5))  # top half index 1
    palette.save(root / "d_palette.png")
    huge = np.zeros((2000, 3000, 3), dtype=np.uint8)
    huge[:, :, 0] = 255  # red outside the centre square (columns 500..2499)
    huge[:1000, 500:2500] = 255  # top half of the centre square white
    huge[1000:, 500:2500] = 0  # bottom half black
    Image.fromarray(huge).save(root / "e_huge.png", compress_level=1)
    Image.new("RGB", (1, 1), (9, 99, 199)).save(root / "f_tiny.bmp")
    Image.new("RGB", (10, 10), (1, 2, 3)).save(root / "g_lossless.webp", lossless=True)
    Image.new("RGB", (10, 10), (5, 5, 5)).save(root / "sub" / "nested" / "h_deep.png")
    Image.new("RGB", (16, 16), (128, 128, 128)).save(root / "sub" / "i.jpeg", quality=95)
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "zero.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (10, 10)).save(root / ".hidden.png")
    (root / ".cache").mkdir()
    Image.new("RGB", (10, 10)).save(root / ".cache" / "thumb.png")
    return root


def load(folder: Path, **kwargs):
    with pytest.warns(SkippedImagesWarning) as record:
        images = load_image_folder(str(folder), SIZE, kwargs.pop("channels", 3), **kwargs)
    assert len(record) == 1
    return images, str(record[0].message)


def test_scan_finds_image_extensions_in_any_case_recursively_sorted_and_skips_hidden(image_folder):
    found = [p.relative_to(image_folder).as_posix() for p in scan_image_files(image_folder)]
    assert found == sorted(READABLE + UNREADABLE)


def test_in_memory_load_skips_two_bad_files_with_one_warning_naming_them(image_folder):
    images, message = load(image_folder, in_memory=True)
    assert isinstance(images, TensorImageSet)
    assert len(images) == len(READABLE) == 10
    assert "skipped 2 of 12" in message
    assert "corrupt.jpg" in message and "zero.png" in message
    assert images.images.shape == (10, 3, SIZE, SIZE) and images.images.dtype == torch.uint8
    assert [images.source(i) for i in range(len(images))] == READABLE
    assert images.labels is None and images.class_names is None


def pixel_of(images, name: str) -> torch.Tensor:
    return images[READABLE.index(name)]


def test_in_memory_pixels_of_each_kind_of_file(image_folder):
    images, _ = load(image_folder, in_memory=True)
    gray = pixel_of(images, "b_gray.png")
    assert (gray == 77).all()
    rgba = pixel_of(images, "c_rgba.png")
    assert (rgba[:, :, :5] == 255).all(), "transparent pixels must be white"
    assert rgba[:, 0, 9].tolist() == [0, 0, 255]
    palette = pixel_of(images, "d_palette.png")
    assert palette[:, 0, 0].tolist() == [250, 240, 230] and palette[:, 9, 0].tolist() == [10, 20, 30]
    tiny = pixel_of(images, "f_tiny.bmp")
    assert (tiny == torch.tensor([9, 99, 199]).view(3, 1, 1)).all()
    assert pixel_of(images, "g_lossless.webp")[:, 4, 4].tolist() == [1, 2, 3]
    assert pixel_of(images, "sub/nested/h_deep.png")[:, 0, 0].tolist() == [5, 5, 5]
    jpeg = pixel_of(images, "a_rgb.jpg").int()
    assert (jpeg - torch.tensor([30, 60, 90]).view(3, 1, 1)).abs().max() <= 3


def test_huge_image_is_resized_by_its_shorter_side_and_centre_cropped(image_folder):
    images, _ = load(image_folder, in_memory=True)
    huge = pixel_of(images, "e_huge.png")
    assert huge.shape == (3, SIZE, SIZE)
    # Only the centre square is kept: white top half, black bottom half, no red inside.
    assert huge[:, 1:4, 1:9].min() >= 250
    assert huge[:, 6:9, 1:9].max() <= 5


def test_grey_output_composites_transparency_on_white(image_folder):
    images, _ = load(image_folder, in_memory=True, channels=1)
    assert images.images.shape == (10, 1, SIZE, SIZE)
    assert (pixel_of(images, "c_rgba.png")[0, :, :5] == 255).all()
    assert (pixel_of(images, "b_gray.png") == 77).all()


def test_order_is_deterministic_across_loads(image_folder):
    first, _ = load(image_folder, in_memory=True)
    second, _ = load(image_folder, in_memory=True)
    assert torch.equal(first.images, second.images) and first.sources == second.sources


def test_lazy_load_checks_headers_skips_the_same_files_and_decodes_identically(image_folder):
    eager, _ = load(image_folder, in_memory=True)
    lazy, message = load(image_folder, in_memory=False)
    assert isinstance(lazy, FileImageSet)
    assert "skipped 2 of 12" in message
    # sources as an in-memory set gives them: relative to the folder, whichever way the images are held
    assert [lazy.source(i) for i in range(len(lazy))] == READABLE == eager.sources
    assert [lazy.subset([1, 0]).source(i) for i in range(2)] == READABLE[1::-1]
    for i in range(len(lazy)):
        assert torch.equal(lazy[i], eager[i])
    reloaded = pickle.loads(pickle.dumps(lazy.load))  # DataLoader workers need a picklable loader
    assert torch.equal(reloaded(lazy.paths[0]), eager[0])
    assert lazy.image_size == SIZE and lazy.channels == 3 and lazy.labels is None


def test_auto_mode_decodes_in_memory_only_within_the_budget(image_folder):
    small, _ = load(image_folder, in_memory=None, in_memory_max_gb=1.0)
    assert isinstance(small, TensorImageSet)
    tight, _ = load(image_folder, in_memory=None, in_memory_max_gb=(10 * 3 * SIZE * SIZE - 1) / 1e9)
    assert isinstance(tight, FileImageSet)


def test_symlink_loops_are_not_followed_twice(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = scan_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.png"]


def test_empty_folder_is_a_data_error_naming_folder_and_extensions(tmp_path):
    with pytest.raises(DataError) as info:
        load_image_folder(str(tmp_path), SIZE, 3)
    assert str(tmp_path) in str(info.value) and ".jpg" in str(info.value) and ".webp" in str(info.value)


def test_folder_with_only_non_image_files_is_a_data_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(str(tmp_path), SIZE, 3)


def test_folder_where_no_image_is_readable_is_a_data_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning is expected before the error
        with pytest.raises(DataError, match=r"none of the 1 image files .* could be read"):
            load_image_folder(str(tmp_path), SIZE, 3)


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*missing does not exist"):
        load_image_folder(str(tmp_path / "missing"), SIZE, 3)
