"""Evaluation folders made of REAL Fashion-MNIST training images, as a user would have them.

Each set is a folder of unlabeled image files (PNG and JPEG mixed; every image upscaled from its
native 28 px to a side drawn from `SIDES`; some saved as RGB although they are grey) in a few
subfolders that say nothing about the class, with file names in a random order. The classes are
written to a CSV OUTSIDE the folder, used only to score a run:

    OUT/<set>/images/part_3/img_00042.png    what scan-train is pointed at (data.root = OUT/<set>/images)
    OUT/<set>/labels.csv                     path (relative to images/),label,class_name

The sets (class lists and sizes are fixed; each mixes classes that pixels separate easily with
classes that they do not: T-shirt/top, Pullover, Coat and Shirt are the hard group, Sandal,
Sneaker and Ankle boot a medium one, Trouser and Bag the easy ones):

| set | classes (Fashion-MNIST ids) | images |
|---|---|---|
| fm3 | Trouser (1), Pullover (2), Shirt (6) | 1,500 (500 each) |
| fm5 | T-shirt/top (0), Trouser (1), Coat (4), Sneaker (7), Bag (8) | 2,500 (500 each) |
| fm7 | T-shirt/top (0), Trouser (1), Pullover (2), Dress (3), Sandal (5), Sneaker (7), Bag (8) | 3,500 (500 each) |
| fm5_imbalanced | Pullover 40 %, Trouser 25 %, Shirt 15 %, Sandal 12 %, Ankle boot 8 % | 2,000 |

Everything (which images, sizes, modes, formats, names) is drawn from a generator seeded by
`--seed` and the set's name, so the same command writes byte-identical folders.

    .venv/bin/python benchmarks/make_folders.py --out runs/folders [--sets fm3 fm5] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist  # noqa: E402

SIDES = (28, 32, 40, 48)  # each image is upscaled (bicubic) from 28 px to one of these sides
RGB_SHARE = 0.3  # share of images saved as RGB (grey replicated), the rest as 8-bit grey
JPEG_SHARE = 0.5  # share saved as JPEG (quality 90), the rest as PNG
PARTS = 4  # subfolders part_0 .. part_3, drawn at random (they carry no class information)
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class FolderSpec:
    """One evaluation set: Fashion-MNIST class ids, their shares of `size` images."""

    name: str
    classes: tuple[int, ...]
    size: int
    shares: tuple[float, ...] | None = None  # None: equal shares

    def counts(self) -> list[int]:
        """Images per class: `size` split by `shares` (largest remainders get the leftover images)."""
        shares = np.asarray(self.shares if self.shares is not None else [1.0] * len(self.classes), dtype=np.float64)
        if len(shares) != len(self.classes) or (shares <= 0).any():
            raise ValueError(f"{self.name}: need one positive share per class")
        exact = shares / shares.sum() * self.size
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: self.size - counts.sum()]:
            counts[i] += 1
        return counts.tolist()


SETS: dict[str, FolderSpec] = {
    spec.name: spec
    for spec in (
        FolderSpec("fm3", (1, 2, 6), 1500),
        FolderSpec("fm5", (0, 1, 4, 7, 8), 2500),
        FolderSpec("fm7", (0, 1, 2, 3, 5, 7, 8), 3500),
        FolderSpec("fm5_imbalanced", (2, 1, 6, 5, 9), 2000, (0.40, 0.25, 0.15, 0.12, 0.08)),
    )
}


def _generator(spec: FolderSpec, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(spec.name.encode())])


def _encode(pixels: np.ndarray, side: int, rgb: bool, jpeg: bool) -> bytes:
    image = Image.fromarray(pixels, "L")
    if side != pixels.shape[0]:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    if rgb:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if jpeg:
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def make_folder(spec: FolderSpec, out: Path, seed: int = 0, images: np.ndarray | None = None,
                labels: np.ndarray | None = None) -> Path:
    """Write `out/<spec.name>/images/...` and `out/<spec.name>/labels.csv`; return the set's folder.

    `images (N, 28, 28)` uint8 and `labels (N,)` default to the Fashion-MNIST training split. An
    existing set folder is replaced (written beside, then renamed into place).
    """
    if images is None or labels is None:
        train = load_fashion_mnist(None, "train", download=True)
        images, labels = train.images[:, 0].numpy(), train.labels.numpy()
    rng = _generator(spec, seed)
    chosen: list[tuple[int, int]] = []  # (training index, class id)
    for cls, count in zip(spec.classes, spec.counts()):
        pool = np.flatnonzero(labels == cls)
        if count > len(pool):
            raise ValueError(f"{spec.name}: {count} images of class {cls} wanted, {len(pool)} exist")
        chosen += [(int(i), cls) for i in np.sort(rng.choice(pool, size=count, replace=False))]
    order = rng.permutation(len(chosen))  # file numbers in a random order: names carry no class
    sides = rng.choice(SIDES, size=len(chosen))
    rgb = rng.random(len(chosen)) < RGB_SHARE
    jpeg = rng.random(len(chosen)) < JPEG_SHARE
    parts = rng.integers(0, PARTS, size=len(chosen))

    final = Path(out) / spec.name
    staging = Path(out) / f".{spec.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / IMAGES_DIR).mkdir(parents=True)
    rows = []
    for number, k in enumerate(order):
        index, cls = chosen[k]
        rel = f"part_{parts[number]}/img_{number:05d}.{'jpg' if jpeg[number] else 'png'}"
        path = staging / IMAGES_DIR / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_encode(images[index], int(sides[number]), bool(rgb[number]), bool(jpeg[number])))
        rows.append((rel, cls, CLASS_NAMES[cls]))
    rows.sort()
    with open(staging / LABELS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "class_name"])
        writer.writerows(rows)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def read_labels(set_dir: Path) -> dict[str, int]:
    """`labels.csv` of a set: relative image path -> Fashion-MNIST class id."""
    with open(Path(set_dir) / LABELS_FILE, newline="") as handle:
        return {row["path"]: int(row["label"]) for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/folders")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_fashion_mnist(None, "train", download=True)
    images, labels = train.images[:, 0].numpy(), train.labels.numpy()
    for name in args.sets:
        spec = SETS[name]
        folder = make_folder(spec, args.out, args.seed, images, labels)
        counts = ", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in zip(spec.classes, spec.counts()))
        print(f"{folder / IMAGES_DIR}: {spec.size} images ({counts}); labels in {folder / LABELS_FILE}")


if __name__ == "__main__":
    main()
