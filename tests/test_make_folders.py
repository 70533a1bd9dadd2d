"""benchmarks/make_folders.py: real Fashion-MNIST images written as a user's folder, labels kept outside."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

from PIL import Image

from benchmarks.make_folders import IMAGES_DIR, LABELS_FILE, SETS, SIDES, FolderSpec, make_folder, read_labels
from trainer.data.fashion_mnist import load_fashion_mnist

from tests.fmnist import FASHION_MNIST_DIR, needs_fashion_mnist


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_named_sets_have_the_stated_classes_and_proportions():
    assert SETS["fm3"].counts() == [500, 500, 500]
    assert SETS["fm5"].counts() == [500] * 5 and SETS["fm7"].counts() == [500] * 7
    imbalanced = SETS["fm5_imbalanced"]
    assert imbalanced.counts() == [800, 500, 300, 240, 160]  # 40/25/15/12/8 % of 2000
    assert sum(FolderSpec("odd", (0, 1, 2), 100).counts()) == 100  # leftovers go to the largest remainders
    for spec in SETS.values():
        assert len(set(spec.classes)) == len(spec.classes)
        assert {2, 4, 6, 0} & set(spec.classes) and {1, 8, 5, 7, 9} & set(spec.classes)  # a hard and an easy class


@needs_fashion_mnist
def test_a_folder_is_deterministic_mixed_and_its_labels_live_outside_it(tmp_path):
    train = load_fashion_mnist(FASHION_MNIST_DIR, "train", download=False)
    images, labels = train.images[:, 0].numpy(), train.labels.numpy()
    spec = FolderSpec("small", (2, 1, 6), 200, (0.5, 0.3, 0.2))
    first = make_folder(spec, tmp_path / "a", seed=3, images=images, labels=labels)
    second = make_folder(spec, tmp_path / "b", seed=3, images=images, labels=labels)
    other_seed = make_folder(spec, tmp_path / "c", seed=4, images=images, labels=labels)
    assert _digest(first) == _digest(second), "same seed: byte-identical folder and labels"
    assert _digest(first) != _digest(other_seed)

    files = sorted(p for p in (first / IMAGES_DIR).rglob("*") if p.is_file())
    assert len(files) == 200 and not list((first / IMAGES_DIR).rglob("*.csv"))  # no labels inside the folder
    hidden = read_labels(first)
    assert set(hidden) == {p.relative_to(first / IMAGES_DIR).as_posix() for p in files}
    assert Counter(hidden.values()) == {2: 100, 1: 60, 6: 40}
    with open(first / LABELS_FILE, newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "label", "class_name"]

    suffixes = Counter(p.suffix for p in files)
    assert set(suffixes) == {".png", ".jpg"} and min(suffixes.values()) > 50
    modes, sides = Counter(), set()
    for path in files:
        with Image.open(path) as image:
            modes[image.mode] += 1
            assert image.size[0] == image.size[1]
            sides.add(image.size[0])
    assert set(modes) == {"L", "RGB"} and sides == set(SIDES)
    # file names and subfolders say nothing about the class: each subfolder holds several classes
    by_part = {}
    for rel, label in hidden.items():
        by_part.setdefault(rel.split("/")[0], set()).add(label)
    assert all(len(classes) == 3 for classes in by_part.values())
