import numpy as np
import pytest

from trainer.evaluate import (
    cluster_metrics,
    cluster_to_class,
    clustering_accuracy,
    confusion_matrix,
    neighbor_purity,
)


def test_accuracy_is_one_for_a_relabelled_perfect_clustering():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1])
    metrics = cluster_metrics(pred, labels)
    assert metrics == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_hungarian_accuracy_on_a_hand_computed_case():
    # Cluster 0 holds classes (0,0,0,1), cluster 1 holds (1,1,2), cluster 2 holds (2,2,0).
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    pred = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Best one-to-one map: 0->0 (3), 1->1 (2), 2->2 (2) = 7 of 10.
    assert clustering_accuracy(pred, labels) == pytest.approx(0.7)


def test_one_to_one_mapping_never_reuses_a_class():
    # Both clusters are mostly class 0; one-to-one must send one of them elsewhere.
    labels = np.array([0, 0, 0, 0, 1, 0])
    pred = np.array([0, 0, 0, 1, 1, 1])
    assert clustering_accuracy(pred, labels) == pytest.approx(4 / 6)


def test_over_clustering_maps_many_to_one_by_majority():
    labels = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])
    counts = confusion_matrix(pred, labels, 3, 2)
    assert cluster_to_class(counts).tolist() == [0, 0, 1]
    assert clustering_accuracy(pred, labels, num_clusters=3, num_classes=2) == 1.0


def test_nmi_and_ari_match_hand_values_for_independent_clusterings():
    # pred is independent of labels: NMI 0; ARI of this balanced 2x2 case is -0.5.
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 0, 1])
    metrics = cluster_metrics(pred, labels)
    assert metrics["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["ari"] == pytest.approx(-0.5)
    assert metrics["acc"] == pytest.approx(0.5)


def test_confusion_matrix_counts_rows_as_clusters():
    counts = confusion_matrix(np.array([0, 1, 1, 2]), np.array([1, 1, 0, 0]), 3, 2)
    assert counts.tolist() == [[0, 1], [1, 1], [1, 0]]


def test_unlabelled_samples_are_ignored():
    labels = np.array([0, 1, -1, -1])
    pred = np.array([1, 0, 0, 0])
    assert clustering_accuracy(pred, labels) == 1.0


def test_neighbor_purity_is_the_fraction_of_same_class_neighbors():
    labels = np.array([0, 0, 1, 1])
    neighbors = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    assert neighbor_purity(neighbors, labels) == pytest.approx(0.5)
    assert neighbor_purity(neighbors[:, :1], labels) == pytest.approx(1.0)
