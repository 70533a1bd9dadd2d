"""Fashion-MNIST idx reader: synthetic idx files in the real format, errors, search order, downloads."""

from __future__ import annotations

import gzip
import io
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import fashion_mnist
from trainer.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist, read_idx
from trainer.errors import DataError

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_split(folder: Path, prefix: str, count: int, compress: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801, compress)
    return images, labels


@pytest.fixture
def no_default_dirs(tmp_path, monkeypatch):
    """Point the system folder and the cache at empty places so the real data is never found."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_train_split_round_trips_pixels_labels_and_class_names(tmp_path):
    images, labels = make_split(tmp_path, "train", 12)
    data = load_fashion_mnist(str(tmp_path), "train", download=False)
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.images[5, 0, 3, 17] == images[5, 3, 17]
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist() and data.labels.dtype == torch.int64
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot" and len(data.class_names) == 10


def test_test_split_reads_the_t10k_files(tmp_path):
    make_split(tmp_path, "train", 4, seed=1)
    images, _ = make_split(tmp_path, "t10k", 6, seed=2)
    data = load_fashion_mnist(str(tmp_path), "test", download=False)
    assert len(data) == 6 and torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_uncompressed_idx_files_are_accepted(tmp_path):
    images, _ = make_split(tmp_path, "train", 3, compress=False)
    data = load_fashion_mnist(str(tmp_path), "train", download=False)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_bad_magic_number_is_a_data_error_naming_the_file(tmp_path):
    make_split(tmp_path, "train", 3)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8), 0x801)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: bad magic number 0x00000801, expected 0x00000803"):
        load_fashion_mnist(str(tmp_path), "train", download=False)


def test_truncated_idx_file_is_a_data_error_naming_the_file(tmp_path):
    make_split(tmp_path, "train", 3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        load_fashion_mnist(str(tmp_path), "train", download=False)


def test_truncated_gzip_stream_is_a_data_error_naming_the_file(tmp_path):
    make_split(tmp_path, "train", 3)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz"):
        load_fashion_mnist(str(tmp_path), "train", download=False)


def test_trailing_bytes_are_a_data_error(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), 0x801) + b"\x00")
    with pytest.raises(DataError, match="unexpected bytes"):
        read_idx(path, 0x801)


def test_image_and_label_counts_must_agree(tmp_path):
    make_split(tmp_path, "train", 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), 0x801)
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_fashion_mnist(str(tmp_path), "train", download=False)


def test_label_outside_0_to_9_is_a_data_error(tmp_path):
    make_split(tmp_path, "train", 2)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 10], np.uint8), 0x801)
    with pytest.raises(DataError, match="label 10"):
        load_fashion_mnist(str(tmp_path), "train", download=False)


def test_missing_files_without_download_name_the_folder_and_the_debian_package(tmp_path):
    with pytest.raises(DataError) as info:
        load_fashion_mnist(str(tmp_path / "empty"), "train", download=False)
    assert str(tmp_path / "empty") in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_without_root_the_system_folder_is_searched(no_default_dirs):
    system = no_default_dirs / "system"
    system.mkdir()
    images, _ = make_split(system, "train", 3)
    data = load_fashion_mnist(None, "train", download=False)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_without_root_the_cache_folder_is_searched_after_the_system_folder(no_default_dirs):
    cache = no_default_dirs / "home" / ".cache" / "scan" / "fashion-mnist"
    cache.mkdir(parents=True)
    images, _ = make_split(cache, "t10k", 3)
    data = load_fashion_mnist(None, "test", download=False)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_failed_download_raises_a_data_error_with_the_apt_hint_and_leaves_no_partial_files(no_default_dirs, monkeypatch):
    def refuse(url, timeout=None):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError) as info:
        load_fashion_mnist(None, "train", download=True)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    assert "network unreachable" in message
    cache = no_default_dirs / "home" / ".cache" / "scan" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_fetches_all_four_files_into_the_cache_and_loads_them(no_default_dirs, monkeypatch):
    served = no_default_dirs / "served"
    served.mkdir()
    images, labels = make_split(served, "train", 4, seed=3)
    make_split(served, "t10k", 2, seed=4)
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return io.BytesIO((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    data = load_fashion_mnist(None, "train", download=True)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images)) and data.labels.tolist() == labels.tolist()
    cache = no_default_dirs / "home" / ".cache" / "scan" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in served.iterdir())
    assert len(requested) == 4


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"{REAL_DIR} is absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package_loads():
    train = load_fashion_mnist(str(REAL_DIR), "train", download=False)
    test = load_fashion_mnist(str(REAL_DIR), "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert test.labels.min() == 0 and test.labels.max() == 9
    assert train.class_names == CLASS_NAMES
