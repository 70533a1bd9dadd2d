"""CIFAR readers on pickles written like the originals, the restricted unpickler, and downloads."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import cifar
from trainer.data.cifar import load_cifar10, load_cifar100_20
from trainer.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Python2StylePickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` opcodes and numpy globals as `numpy.core.*`,
    like the cPickle files of the official CIFAR archives."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + module.encode() + b"\n" + (name or obj.__qualname__).encode() + b"\n")
        self.memoize(obj)


def dump(obj, path: Path, style: str) -> None:
    with open(path, "wb") as fp:
        if style == "py2":
            Python2StylePickler(fp, protocol=2).dump(obj)
        else:
            pickle.dump(obj, fp, protocol=int(style))


def cifar_rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 3, style: str = "py2") -> dict[str, tuple[np.ndarray, list[int]]]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows = cifar_rows(per_batch, seed=i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        dump(batch, base / name, style)
        batches[name] = (rows, labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    dump(meta, base / "batches.meta", style)
    return batches


def make_cifar100(root: Path, count: int = 6, style: str = "py2") -> dict[str, tuple[np.ndarray, list[int]]]:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    splits = {}
    for i, split in enumerate(["train", "test"]):
        rows = cifar_rows(count, seed=10 + i)
        coarse = [(3 * j + i) % 20 for j in range(count)]
        fine = [(7 * j) % 100 for j in range(count)]
        batch = {b"filenames": [], b"batch_label": b"x", b"fine_labels": fine, b"coarse_labels": coarse, b"data": rows}
        dump(batch, base / split, style)
        splits[split] = (rows, coarse)
    meta = {
        b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"super{k}".encode() for k in range(20)],
    }
    dump(meta, base / "meta", style)
    return splits


@pytest.mark.parametrize("style", ["py2", "2", "4", "5"])
def test_cifar10_train_concatenates_batches_in_order_with_plane_order_rgb(tmp_path, style):
    batches = make_cifar10(tmp_path, per_batch=3, style=style)
    data = load_cifar10(str(tmp_path), "train", download=False)
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.uint8
    rows, labels = batches["data_batch_2"]
    # Row layout: 1024 red values, then green, then blue; each plane row-major.
    c, y, x = 1, 5, 30
    assert data.images[3 + 0, c, y, x] == rows[0, c * 1024 + y * 32 + x]
    assert data.images[3 + 2, 2, 31, 0] == rows[2, 2 * 1024 + 31 * 32 + 0]
    assert data.images[0, 0, 0, 1] == batches["data_batch_1"][0][0, 1]
    expected_labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert data.labels.tolist() == expected_labels
    assert data.class_names == CIFAR10_NAMES


def test_cifar10_test_split_reads_test_batch(tmp_path):
    batches = make_cifar10(tmp_path)
    data = load_cifar10(str(tmp_path), "test", download=False)
    rows, labels = batches["test_batch"]
    assert torch.equal(data.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert data.labels.tolist() == labels


def test_cifar100_20_uses_coarse_labels_and_superclass_names(tmp_path):
    splits = make_cifar100(tmp_path)
    train = load_cifar100_20(str(tmp_path), "train", download=False)
    test = load_cifar100_20(str(tmp_path), "test", download=False)
    rows, coarse = splits["train"]
    assert train.labels.tolist() == coarse and test.labels.tolist() == splits["test"][1]
    assert train.images[4, 2, 7, 9] == rows[4, 2 * 1024 + 7 * 32 + 9]
    assert len(train.class_names) == 20 and train.class_names[19] == "super19"


def test_missing_batch_is_a_data_error_naming_the_expected_path(tmp_path):
    make_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_4"):
        load_cifar10(str(tmp_path), "train", download=False)


def test_missing_cifar100_is_a_data_error_naming_the_expected_path(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python/train"):
        load_cifar100_20(str(tmp_path), "train", download=False)


def test_truncated_pickle_is_a_data_error_naming_the_file(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR pickle"):
        load_cifar10(str(tmp_path), "test", download=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_naming_another_global_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to load global (posix|os)\.system"):
        load_cifar10(str(tmp_path), "test", download=False)
    assert not (tmp_path / "pwned").exists()


def test_wrong_data_shape_is_a_data_error(tmp_path):
    make_cifar10(tmp_path)
    dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, tmp_path / "cifar-10-batches-py" / "test_batch", "4")
    with pytest.raises(DataError, match=r"\(N, 3072\) uint8"):
        load_cifar10(str(tmp_path), "test", download=False)


def test_failed_download_is_a_data_error_naming_the_expected_path(tmp_path, monkeypatch):
    def refuse(url, timeout=None):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError) as info:
        load_cifar10(str(tmp_path), "train", download=True)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    assert "no route" in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


def test_download_extracts_the_archive_atomically_and_loads(tmp_path, monkeypatch):
    source = tmp_path / "source"
    batches = make_cifar10(source)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = archive.getvalue()
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    root = tmp_path / "root"
    data = load_cifar10(str(root), "test", download=True)
    assert data.labels.tolist() == batches["test_batch"][1]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_download_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the archive"))
    with pytest.raises(DataError, match="MD5"):
        load_cifar100_20(str(tmp_path), "train", download=True)
    assert list(tmp_path.iterdir()) == []
