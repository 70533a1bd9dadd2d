"""Label-free baselines: the criterion's closed forms, the verdict, and the entry of a real tiny run."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from trainer.baselines import MARGIN, neighbor_agreement, pixel_vectors, recommend
from trainer.pipeline import run_pipeline

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")


def test_neighbor_agreement_is_one_for_pure_neighborhoods_and_zero_for_chance_or_one_cluster():
    assignment = np.repeat([0, 1, 2, 3], 50)
    neighbors = np.array([[(i // 50) * 50 + (i + s) % 50 for s in range(1, 6)] for i in range(200)])  # own cluster
    assert neighbor_agreement(assignment, neighbors) == 1.0
    assert neighbor_agreement(np.zeros(200, dtype=np.int64), neighbors) == 0.0  # one cluster: no credit
    # two equal clusters, half of each image's neighbors in its own: observed 0.5 = chance 0.5
    halves = np.repeat([0, 1], 100)
    mixed = np.array([[i, (i + 100) % 200] for i in range(200)])
    assert neighbor_agreement(halves, mixed) == 0.0
    rng = np.random.default_rng(0)
    random_neighbors = rng.integers(0, 2000, (2000, 10))
    assert abs(neighbor_agreement(rng.integers(0, 5, 2000), random_neighbors)) < 0.03


def test_a_baseline_is_recommended_only_when_it_beats_the_model_by_more_than_the_margin():
    def methods(pixels, model):
        return {"kmeans_pixels": {"hog_neighbor_agreement": pixels}, "kmeans_pretext": {"hog_neighbor_agreement": 0.5},
                "scan": {"hog_neighbor_agreement": 0.6}, "selflabel": {"hog_neighbor_agreement": model}}

    verdict = recommend(methods(0.70, 0.65), "selflabel")
    assert verdict["recommended"] == "kmeans_pixels"
    assert verdict["message"].startswith(
        "k-means on pixels looks better than the self-labelled model on these images by HOG neighbor agreement "
        "(0.700 vs 0.650); consider")
    assert recommend(methods(0.65 + MARGIN / 2, 0.65), "selflabel")["recommended"] == "selflabel"
    ranked = recommend(methods(0.55, 0.65), "selflabel")["message"]
    assert ranked == ("HOG neighbor agreement (higher is better): the self-labelled model 0.650, the SCAN model 0.600, "
                      "k-means on pixels 0.550, k-means on pretext features 0.500")


def test_pixel_vectors_are_downsampled_to_at_most_4096_values():
    images = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    vectors = pixel_vectors(images)
    assert vectors.shape == (2, 3 * 36 * 36) and np.allclose(vectors, 1.0)
    assert pixel_vectors(torch.zeros((2, 1, 28, 28), dtype=torch.uint8)).shape == (2, 784)


@needs_fashion_mnist
def test_a_tiny_real_run_reports_every_method_with_sane_values_and_writes_assignments(tmp_path):
    config = tiny_config(train=512, epochs=1, scan={"epochs": 1, "num_heads": 2}, selflabel={"epochs": 1})
    report = run_pipeline(config, str(tmp_path), CPU, progress=False, log=lambda _: None)
    entry = report["baselines"]
    assert set(entry["methods"]) == {"kmeans_pixels", "kmeans_pretext", "scan", "selflabel"}
    assert entry["images"] == entry["train_images"] == 512 and not entry["subsampled"] and entry["clusters"] == 10
    for name, method in entry["methods"].items():
        assert -1.0 <= method["hog_neighbor_agreement"] <= 1.0, name
        assert sum(method["sizes"]) == 512
        assert 0.1 <= method["train"]["acc"] <= 1.0 and 0 <= method["train"]["nmi"] <= 1  # labels: evaluation only
    # pixel k-means on Fashion-MNIST is far above chance in this space
    assert entry["methods"]["kmeans_pixels"]["hog_neighbor_agreement"] > 0.3
    assert entry["model"] == "selflabel" and entry["recommended"] in entry["methods"]
    assert entry["message"] and entry["wall_time_s"] < 30
    with open(tmp_path / entry["assignments"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 512 and set(rows[0]) == {"source", *entry["methods"]}
    stored = json.loads((tmp_path / "report.json").read_text())["baselines"]
    assert stored["methods"]["selflabel"] == entry["methods"]["selflabel"]
    # a finished run is not measured again
    logs = []
    run_pipeline(config, str(tmp_path), CPU, progress=False, log=logs.append)
    assert not any(line.startswith("baselines:") for line in logs)
