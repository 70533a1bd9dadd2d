"""`load_dataset` dispatch, seeded subsets, channel conversion, resizing, missing splits and statistics."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import DataConfig
from trainer.data import (
    FileImageSet,
    TensorImageSet,
    convert_channels,
    dataset_stats,
    load_dataset,
    native_size,
    resize_tensor_images,
    resolved_channels,
    resolved_image_size,
    seeded_subset_indices,
)
from trainer.errors import ConfigError, DataError


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fashion_root(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)), 0x803)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, 0x801)
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}, protocol=2))
    return tmp_path


@pytest.fixture
def stl_root(tmp_path) -> Path:
    base = tmp_path / "stl10_binary"
    base.mkdir()
    for name, count in (("train_X.bin", 2), ("test_X.bin", 3), ("unlabeled_X.bin", 5)):
        (base / name).write_bytes(bytes(count * 27648))
    (base / "train_y.bin").write_bytes(bytes([1, 2]))
    (base / "test_y.bin").write_bytes(bytes([3, 4, 5]))
    (base / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    return tmp_path


def fashion(root: Path, **kwargs) -> DataConfig:
    return DataConfig(name="fashion_mnist", root=str(root), download=False, **kwargs)


def test_full_split_is_returned_as_loaded(fashion_root):
    train = load_dataset(fashion(fashion_root), "train")
    test = load_dataset(fashion(fashion_root), "test")
    assert isinstance(train, TensorImageSet) and train.images.shape == (50, 1, 28, 28) and len(test) == 20


def test_subset_is_the_seeded_sorted_choice_and_is_deterministic(fashion_root):
    full = load_dataset(fashion(fashion_root), "train")
    cfg = fashion(fashion_root, train_subset=10, test_subset=5)
    first = load_dataset(cfg, "train", seed=3)
    again = load_dataset(cfg, "train", seed=3)
    other = load_dataset(cfg, "train", seed=4)
    expected = seeded_subset_indices(50, 10, 3)
    assert len(first) == 10 and torch.equal(first.images, full.images[torch.from_numpy(expected)])
    assert torch.equal(first.labels, full.labels[torch.from_numpy(expected)])
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    assert len(load_dataset(cfg, "test", seed=3)) == 5


def test_subset_larger_than_the_set_keeps_everything(fashion_root):
    assert len(load_dataset(fashion(fashion_root, train_subset=1000), "train")) == 50


def test_grey_set_is_converted_to_three_channels(fashion_root):
    full = load_dataset(fashion(fashion_root), "train")
    rgb = load_dataset(fashion(fashion_root, channels=3), "train")
    assert rgb.images.shape == (50, 3, 28, 28) and rgb.channels == 3
    assert all(torch.equal(rgb.images[:, c], full.images[:, 0]) for c in range(3))
    assert torch.equal(rgb.labels, full.labels) and rgb.class_names == full.class_names


def test_in_memory_set_is_resized_after_taking_the_subset(fashion_root):
    full = load_dataset(fashion(fashion_root), "train")
    small = load_dataset(fashion(fashion_root, image_size=14, train_subset=7), "train", seed=1)
    picked = full.images[torch.from_numpy(seeded_subset_indices(50, 7, 1))]
    assert small.images.shape == (7, 1, 14, 14) and small.image_size == 14
    assert torch.equal(small.images, resize_tensor_images(picked, 14))


def test_rgb_set_is_converted_to_grey_with_pil_luma(cifar_root):
    cfg = DataConfig(name="cifar10", root=str(cifar_root), download=False)
    rgb = load_dataset(cfg, "test")
    grey = load_dataset(DataConfig(name="cifar10", root=str(cifar_root), download=False, channels=1), "test")
    assert grey.images.shape == (4, 1, 32, 32)
    assert torch.equal(grey.images, convert_channels(rgb.images, 1))
    pixel = rgb.images[1, :, 2, 3].tolist()
    assert grey.images[1, 0, 2, 3] == (19595 * pixel[0] + 38470 * pixel[1] + 7471 * pixel[2] + 32768) >> 16


def test_stl10_training_split_includes_unlabeled_only_when_configured(stl_root):
    with_unl = load_dataset(DataConfig(name="stl10", root=str(stl_root), download=False), "train")
    without = load_dataset(DataConfig(name="stl10", root=str(stl_root), download=False, stl10_unlabeled=False), "train")
    assert len(with_unl) == 7 and with_unl.labels.tolist() == [0, 1, -1, -1, -1, -1, -1]
    assert len(without) == 2
    assert len(load_dataset(DataConfig(name="stl10", root=str(stl_root), download=False), "test")) == 3


def make_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new("RGB", (30, 20), (k * 20, 0, 0)).save(folder / f"img{k}.png")
    return folder


def test_folder_without_test_root_has_no_test_split(tmp_path):
    cfg = DataConfig(name="folder", root=str(make_folder(tmp_path / "train", 4)), image_size=16)
    train = load_dataset(cfg, "train")
    assert train.images.shape == (4, 3, 16, 16) and train.labels is None
    assert load_dataset(cfg, "test") is None


def test_folder_test_root_is_the_test_split_and_lazy_sets_are_subset(tmp_path):
    cfg = DataConfig(
        name="folder",
        root=str(make_folder(tmp_path / "train", 6)),
        test_root=str(make_folder(tmp_path / "test", 2)),
        image_size=12,
        channels=1,
        in_memory=False,
        train_subset=3,
    )
    train = load_dataset(cfg, "train", seed=5)
    assert isinstance(train, FileImageSet) and len(train) == 3 and train[0].shape == (1, 12, 12)
    assert [Path(p).name for p in train.paths] == [f"img{i}.png" for i in seeded_subset_indices(6, 3, 5)]
    assert len(load_dataset(cfg, "test")) == 2


def test_folder_and_imagenet_require_an_image_size(tmp_path):
    cfg = DataConfig(name="folder", root=str(make_folder(tmp_path / "train", 1)))
    with pytest.raises(DataError, match=r"--set data\.image_size=N"):
        load_dataset(cfg, "train")
    with pytest.raises(DataError, match=r"--set data\.image_size=N"):
        resolved_image_size(DataConfig(name="imagenet", root=str(tmp_path)))


def test_imagenet_test_split_is_val_and_is_none_without_val(tmp_path):
    make_folder(tmp_path / "train" / "n1", 2)
    make_folder(tmp_path / "train" / "n2", 1)
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=8)
    train = load_dataset(cfg, "train")
    assert train.labels.tolist() == [0, 0, 1] and train.class_names == ["n1", "n2"]
    assert load_dataset(cfg, "test") is None
    make_folder(tmp_path / "val" / "n1", 1)
    make_folder(tmp_path / "val" / "n2", 1)
    load_dataset.cache_clear()  # files changed on disk
    assert load_dataset(cfg, "test").labels.tolist() == [0, 1]


def test_native_and_resolved_sizes_and_channels():
    assert native_size(DataConfig(name="fashion_mnist")) == 28
    assert native_size(DataConfig(name="cifar100_20")) == 32
    assert native_size(DataConfig(name="stl10")) == 96
    assert native_size(DataConfig(name="folder", root="x")) is None
    assert resolved_image_size(DataConfig(name="cifar10", image_size=64)) == 64
    assert resolved_channels(DataConfig(name="fashion_mnist")) == 1
    assert resolved_channels(DataConfig(name="stl10")) == 3
    assert resolved_channels(DataConfig(name="cifar10", channels=1)) == 1


def test_dataset_stats_defaults_and_channel_adaptation():
    assert dataset_stats(DataConfig(name="fashion_mnist"), 1) == ((0.2860,), (0.3530,))
    assert dataset_stats(DataConfig(name="fashion_mnist"), 3) == ((0.2860,) * 3, (0.3530,) * 3)
    assert dataset_stats(DataConfig(name="cifar10"), 3) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats(DataConfig(name="cifar100_20"), 3)[0] == (0.5071, 0.4865, 0.4409)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert dataset_stats(DataConfig(name="stl10"), 3) == imagenet
    assert dataset_stats(DataConfig(name="folder", root="x"), 3) == imagenet
    mean, std = dataset_stats(DataConfig(name="imagenet", root="x"), 1)
    assert mean == pytest.approx((0.449,)) and std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))


def test_dataset_stats_configured_values_win_and_must_fit_the_channels():
    cfg = DataConfig(name="cifar10", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert dataset_stats(cfg, 3) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert dataset_stats(DataConfig(name="cifar10", mean=(0.5,), std=(0.25,)), 3) == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ConfigError, match="data.mean: 3 values for 1-channel images"):
        dataset_stats(cfg, 1)


def test_a_folder_is_decoded_once_per_process_and_reloaded_after_cache_clear(tmp_path):
    from PIL import Image

    from trainer.config import DataConfig

    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=16)
    first = load_dataset(cfg, "train")
    assert load_dataset(cfg, "train") is first  # the stages of one run share one decoded copy
    Image.new("RGB", (20, 20)).save(tmp_path / "3.png")
    load_dataset.cache_clear()
    assert len(load_dataset(cfg, "train")) == 4
