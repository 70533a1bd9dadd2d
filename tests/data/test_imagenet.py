"""ImageNet-subset reader: class list order gives labels, missing folders are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.data.base import FileImageSet, TensorImageSet
from trainer.data.folder import SkippedImagesWarning
from trainer.data.imagenet import load_imagenet_subset, read_class_list
from trainer.errors import DataError

COLOURS = {"n01440764": (255, 0, 0), "n02102040": (0, 255, 0), "n03000684": (0, 0, 255)}


@pytest.fixture
def imagenet_root(tmp_path) -> Path:
    for split, per_class in (("train", 3), ("val", 2)):
        for wnid, colour in COLOURS.items():
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (24 + k, 20), colour).save(folder / f"{wnid}_{k}.JPEG", quality=95)
    return tmp_path


def write_class_list(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def colour_of(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(round(v / 255.0)) * 255 for v in image[:, 4, 4].tolist())


def test_labels_follow_the_class_list_order_and_names_are_human_readable(imagenet_root, tmp_path):
    classes = write_class_list(
        tmp_path / "classes.txt",
        "# two of the three classes, not in sorted order\n\nn03000684 chain saw\nn01440764 tench, Tinca tinca\n",
    )
    data = load_imagenet_subset(imagenet_root, "train", classes, 16, 3, in_memory=True)
    assert isinstance(data, TensorImageSet)
    assert data.images.shape == (6, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.class_names == ["chain saw", "tench, Tinca tinca"]
    assert colour_of(data[0]) == COLOURS["n03000684"] and colour_of(data[3]) == COLOURS["n01440764"]
    assert data.source(0) == "n03000684/n03000684_0.JPEG"


def test_without_a_class_list_all_class_folders_are_used_in_sorted_order(imagenet_root):
    data = load_imagenet_subset(imagenet_root, "val", None, 8, 3, in_memory=True)
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.class_names == sorted(COLOURS)
    assert [colour_of(data[i]) for i in (0, 2, 4)] == [COLOURS[w] for w in sorted(COLOURS)]


def test_test_split_reads_the_val_folder(imagenet_root):
    assert len(load_imagenet_subset(imagenet_root, "test", None, 8, 3, in_memory=True)) == 6


def test_lazy_set_keeps_labels_and_decodes_the_same_pixels(imagenet_root):
    eager = load_imagenet_subset(imagenet_root, "val", None, 8, 1, in_memory=True)
    lazy = load_imagenet_subset(imagenet_root, "val", None, 8, 1, in_memory=False)
    assert isinstance(lazy, FileImageSet) and torch.equal(lazy.labels, eager.labels)
    assert all(torch.equal(lazy[i], eager[i]) for i in range(len(lazy)))


def test_unreadable_files_are_skipped_together_with_their_labels(imagenet_root):
    (imagenet_root / "val" / "n02102040" / "broken.JPEG").write_bytes(b"\xff\xd8junk")
    with pytest.warns(SkippedImagesWarning, match="skipped 1 of 7"):
        data = load_imagenet_subset(imagenet_root, "val", None, 8, 3, in_memory=True)
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_missing_class_folder_is_a_data_error_naming_it(imagenet_root, tmp_path):
    classes = write_class_list(tmp_path / "classes.txt", "n01440764\nn09999999 unicorn\n")
    with pytest.raises(DataError, match=r"train/n09999999 listed in .*classes\.txt does not exist"):
        load_imagenet_subset(imagenet_root, "train", classes, 8, 3)


def test_class_folder_without_images_is_a_data_error(imagenet_root):
    (imagenet_root / "train" / "n04000000").mkdir()
    with pytest.raises(DataError, match=r"n04000000 holds no image files"):
        load_imagenet_subset(imagenet_root, "train", None, 8, 3)


def test_missing_split_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"train folder .*train does not exist"):
        load_imagenet_subset(tmp_path, "train", None, 8, 3)


def test_class_list_with_a_duplicate_or_no_class_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="listed twice"):
        read_class_list(write_class_list(tmp_path / "dup.txt", "n1\nn2\nn1 again\n"))
    with pytest.raises(DataError, match="names no class"):
        read_class_list(write_class_list(tmp_path / "empty.txt", "# nothing\n"))
    with pytest.raises(DataError, match="cannot read class list"):
        read_class_list(tmp_path / "absent.txt")
