import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.pictures import (
    cluster_sizes,
    confusion_matrix_plot,
    k_selection_plot,
    order_rows_by_class,
    prototype_grid,
    training_curves,
)

REPO = Path(__file__).resolve().parents[1]


def _check_png(path: Path, folder: Path) -> Image.Image:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.mode in ("RGB", "RGBA")
        assert image.width > 50 and image.height > 50
        result = image.copy()
    leftovers = [name for name in os.listdir(folder) if name.endswith(".tmp") or name.startswith(".")]
    assert leftovers == []
    return result


def _images(n: int, channels: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


class RecordingSet:
    """A lazy image set that remembers which ids were read."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.accessed: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        self.accessed.append(index)
        return self.images[index]


@pytest.mark.parametrize("channels", [1, 3])
def test_prototype_grid_writes_a_png_for_gray_and_colour_with_an_empty_cluster(tmp_path, channels):
    images = _images(30, channels)
    ids = [[0, 1, 2, 3], [], [5, 6], [7, 8, 9, 10]]
    path = prototype_grid(
        images, ids, tmp_path / "sub" / "grid.png",
        cluster_names=["a", "b", "c", "d"], cluster_sizes=[40, 0, 12, 50], title="prototypes",
    )  # fmt: skip
    assert path == tmp_path / "sub" / "grid.png"
    image = _check_png(path, path.parent)
    assert image.width > image.height  # 4 short rows, 4 columns plus labels


def test_prototype_grid_accepts_a_tensor_and_only_reads_the_requested_ids(tmp_path):
    data = RecordingSet(torch.from_numpy(_images(50, 1)))
    ids = [[3, 7, 7], [11], [], [49, 0]]
    prototype_grid(data, ids, tmp_path / "grid.png")
    assert set(data.accessed) == {0, 3, 7, 11, 49}
    assert len(data.accessed) == len(set(data.accessed))  # each id read once
    _check_png(tmp_path / "grid.png", tmp_path)


def test_prototype_grid_rejects_ids_outside_the_set_and_mismatched_labels(tmp_path):
    images = _images(5, 1)
    with pytest.raises(IndexError):
        prototype_grid(images, [[0, 5]], tmp_path / "a.png")
    with pytest.raises(IndexError):
        prototype_grid(images, [[-1]], tmp_path / "b.png")
    with pytest.raises(ValueError):
        prototype_grid(images, [[0], [1]], tmp_path / "c.png", cluster_names=["only one"])
    assert os.listdir(tmp_path) == []


def test_prototype_grid_with_all_clusters_empty_still_draws(tmp_path):
    _check_png(prototype_grid(_images(3, 3), [[], []], tmp_path / "g.png"), tmp_path)


def test_prototype_grid_of_100_clusters_by_10_stays_small(tmp_path):
    images = _images(1000, 3, size=32, seed=1)  # noise: the worst case for PNG compression
    ids = [list(range(10 * k, 10 * k + 10)) for k in range(100)]
    path = prototype_grid(images, ids, tmp_path / "big.png", cluster_sizes=[100] * 100)
    image = _check_png(path, tmp_path)
    assert path.stat().st_size < 3_000_000
    assert image.height > image.width


def test_rewriting_a_picture_replaces_it(tmp_path):
    path = tmp_path / "sizes.png"
    cluster_sizes([1, 2, 3], path)
    first = path.read_bytes()
    cluster_sizes([30, 2, 3, 5], path)
    assert path.read_bytes() != first
    assert os.listdir(tmp_path) == ["sizes.png"]


def test_cluster_sizes_with_and_without_reference(tmp_path):
    _check_png(cluster_sizes(np.array([10, 0, 25, 5]), tmp_path / "a.png", title="sizes"), tmp_path)
    _check_png(cluster_sizes([10, 0, 25, 5], tmp_path / "b.png", reference=np.array([8, 12, 10, 10])), tmp_path)
    _check_png(cluster_sizes(np.arange(200), tmp_path / "c.png"), tmp_path)
    with pytest.raises(ValueError):
        cluster_sizes([1, 2], tmp_path / "d.png", reference=np.array([1, 2, 3]))


def test_order_rows_by_class_turns_a_permuted_diagonal_into_a_diagonal():
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    diagonal = np.full((6, 6), 2) + np.diag(np.full(6, 100))
    counts = diagonal[perm]  # row k = cluster k, which holds class perm[k]
    order = order_rows_by_class(counts)
    assert sorted(order.tolist()) == list(range(6))
    reordered = counts[order]
    assert (reordered.argmax(axis=1) == np.arange(6)).all()
    assert np.trace(reordered) == 6 * 102


def test_order_rows_by_class_with_fewer_and_more_clusters_than_classes():
    # 2 clusters, 3 classes: cluster 0 is class 2, cluster 1 is class 0.
    fewer = np.array([[1, 0, 9], [8, 1, 0]])
    assert order_rows_by_class(fewer).tolist() == [1, 0]
    # 4 clusters, 2 classes (over-clustering): majority class, largest first within a class.
    more = np.array([[0, 5], [7, 1], [1, 9], [3, 0]])
    assert order_rows_by_class(more).tolist() == [1, 3, 2, 0]


def test_confusion_matrix_plot_small_and_large(tmp_path):
    counts = np.diag([50, 40, 30])[[2, 0, 1]] + 1
    _check_png(confusion_matrix_plot(counts, tmp_path / "small.png", class_names=["cat", "dog", "bird"]), tmp_path)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 50, size=(100, 10))  # over-clustering, no numbers written
    _check_png(confusion_matrix_plot(big, tmp_path / "big.png", title="100 clusters"), tmp_path)
    empty_row = np.array([[5, 0], [0, 0]])
    _check_png(confusion_matrix_plot(empty_row, tmp_path / "empty.png"), tmp_path)
    with pytest.raises(ValueError):
        confusion_matrix_plot(counts, tmp_path / "bad.png", class_names=["only", "two"])


def test_training_curves_skips_records_without_the_key(tmp_path):
    records = [{"stage": "scan", "epoch": e, "loss": 2.0 / e, "acc": 0.1 * e} for e in range(1, 6)]
    records += [{"stage": "scan", "epoch": 6, "loss": 0.3}, {"note": "no epoch", "loss": 1.0}]
    records += [{"stage": "selflabel", "epoch": e, "acc": 0.6 + 0.01 * e} for e in range(1, 4)]
    path = training_curves(records, tmp_path / "curves" / "c.png", ["loss", "acc", "missing"], title="run")
    _check_png(path, path.parent)
    _check_png(training_curves([{"epoch": 1, "x": 1.0}], tmp_path / "one.png", ["x"]), tmp_path)
    with pytest.raises(ValueError):
        training_curves(records, tmp_path / "none.png", [])


def test_k_selection_plot_moves_its_marker_with_the_choice_and_refuses_a_choice_outside_the_candidates(tmp_path):
    ks = [2, 3, 4, 5, 6]
    series = {"stability (ARI between heads)": [0.35, 0.82, 0.6, 0.5, 0.45], "neighbor agreement": [0.9, 0.85, 0.8,
                                                                                                   0.78, 0.75]}
    drawn = {}
    for chosen in (3, 5):
        path = k_selection_plot(ks, series, chosen, tmp_path / f"k{chosen}.png", evaluation=[0.5, 0.8, 0.7, 0.6, 0.6],
                                errors=[0.02] * 5, floor=0.4)
        drawn[chosen] = np.asarray(_check_png(path, tmp_path).convert("RGB"))
    assert drawn[3].shape == drawn[5].shape and (drawn[3] != drawn[5]).any()
    _check_png(k_selection_plot(list(range(2, 51)), {"s": np.linspace(0, 1, 49)}, 50, tmp_path / "wide.png"), tmp_path)
    with pytest.raises(ValueError, match="including the chosen K=7"):
        k_selection_plot(ks, series, 7, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="has 2 values for 5 candidates"):
        k_selection_plot(ks, {"s": [0.1, 0.2]}, 3, tmp_path / "bad.png")


def test_importing_and_drawing_leaves_the_matplotlib_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "import trainer.pictures as p\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        f"p.cluster_sizes([1, 2, 3], {str(tmp_path / 's.png')!r})\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(before)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lower() == "svg"
