"""STL-10 binary reader on column-major files written byte by byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.stl10 import load_stl10
from trainer.errors import DataError

NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
IMAGE_BYTES = 27648


def offset(n: int, c: int, y: int, x: int) -> int:
    """Byte of pixel (channel c, row y, column x) of image n: planes are stored column-major."""
    return n * IMAGE_BYTES + c * 9216 + x * 96 + y


def write_x(path: Path, count: int, seed: int) -> bytearray:
    raw = bytearray(np.random.default_rng(seed).integers(0, 256, count * IMAGE_BYTES, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(raw))
    return raw


def make_stl(root: Path, n_train: int = 3, n_test: int = 2, n_unlabeled: int = 4) -> dict[str, bytearray]:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    raws = {
        "train": write_x(base / "train_X.bin", n_train, 1),
        "test": write_x(base / "test_X.bin", n_test, 2),
        "unlabeled": write_x(base / "unlabeled_X.bin", n_unlabeled, 3),
    }
    (base / "train_y.bin").write_bytes(bytes([1 + (i * 3) % 10 for i in range(n_train)]))
    (base / "test_y.bin").write_bytes(bytes([10 - i for i in range(n_test)]))
    (base / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    return raws


def test_pixels_are_read_column_major_per_channel(tmp_path):
    raws = make_stl(tmp_path)
    data = load_stl10(str(tmp_path), "train", download=False, include_unlabeled=False)
    assert data.images.shape == (3, 3, 96, 96) and data.images.dtype == torch.uint8
    raw = raws["train"]
    for n, c, y, x in [(0, 0, 0, 1), (1, 1, 5, 70), (2, 2, 95, 3), (2, 0, 40, 41)]:
        assert data.images[n, c, y, x] == raw[offset(n, c, y, x)]
    # The transpose really matters: (row 0, column 1) is the 97th byte, not the 2nd.
    assert data.images[0, 0, 0, 1] == raw[96] and data.images[0, 0, 1, 0] == raw[1]


def test_labels_are_shifted_from_1_10_to_0_9_and_class_names_are_read(tmp_path):
    make_stl(tmp_path)
    train = load_stl10(str(tmp_path), "train", download=False)
    test = load_stl10(str(tmp_path), "test", download=False)
    assert train.labels.tolist() == [0, 3, 6]
    assert test.labels.tolist() == [9, 8] and len(test) == 2
    assert train.class_names == NAMES


def test_unlabeled_images_follow_the_train_images_with_label_minus_one(tmp_path):
    raws = make_stl(tmp_path)
    data = load_stl10(str(tmp_path), "train", download=False, include_unlabeled=True)
    assert len(data) == 3 + 4
    assert data.labels.tolist() == [0, 3, 6, -1, -1, -1, -1]
    assert data.images[3 + 2, 1, 7, 11] == raws["unlabeled"][offset(2, 1, 7, 11)]
    assert data.images[0, 2, 9, 8] == raws["train"][offset(0, 2, 9, 8)]


def test_test_split_never_includes_unlabeled(tmp_path):
    make_stl(tmp_path)
    assert len(load_stl10(str(tmp_path), "test", download=False, include_unlabeled=True)) == 2


def test_x_file_size_not_a_multiple_of_27648_is_a_data_error_naming_it(tmp_path):
    make_stl(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"test_X\.bin: size 55295 bytes is not a positive multiple of 27648"):
        load_stl10(str(tmp_path), "test", download=False)


def test_label_count_mismatch_is_a_data_error(tmp_path):
    make_stl(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(DataError, match=r"train_y\.bin holds 2 labels but .*train_X\.bin holds 3 images"):
        load_stl10(str(tmp_path), "train", download=False)


def test_label_zero_is_a_data_error(tmp_path):
    make_stl(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([0, 5]))
    with pytest.raises(DataError, match="labels must be 1..10"):
        load_stl10(str(tmp_path), "test", download=False)


def test_missing_files_are_a_data_error_naming_the_path(tmp_path):
    with pytest.raises(DataError, match=r"stl10_binary/train_X\.bin"):
        load_stl10(str(tmp_path), "train", download=False)
    make_stl(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(DataError, match=r"stl10_binary/unlabeled_X\.bin"):
        load_stl10(str(tmp_path), "train", download=False, include_unlabeled=True)
