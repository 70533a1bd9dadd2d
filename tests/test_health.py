import math

import numpy as np
import pytest

from trainer.health import CollapseGuard, measure_health


def _probs(clusters, num_clusters, confidence=0.995):
    p = np.full((len(clusters), num_clusters), (1 - confidence) / (num_clusters - 1))
    p[np.arange(len(clusters)), clusters] = confidence
    return p


def test_health_of_an_even_confident_clustering():
    h = measure_health(_probs([0, 1, 2, 3] * 25, 4), threshold=0.99)
    assert h.populated == h.nonempty == h.clusters == 4
    assert h.size_entropy == pytest.approx(1.0)
    assert h.confident_fraction == 1.0
    assert h.sizes == (25, 25, 25, 25) and h.agreement is None


def test_health_sees_collapse_small_clusters_and_low_confidence():
    clusters = [0] * 90 + [1] * 9 + [2]
    h = measure_health(_probs(clusters, 4, confidence=0.9), threshold=0.99, reference=np.array([0] * 100))
    assert h.nonempty == 3
    assert h.populated == 2  # cluster 2 holds 1 sample, under 0.1 * 100 / 4
    shares = np.array([0.9, 0.09, 0.01])
    assert h.size_entropy == pytest.approx(-(shares * np.log(shares)).sum() / math.log(4))
    assert h.confident_fraction == 0.0
    assert h.agreement == pytest.approx(0.9)


def test_guard_names_every_way_a_candidate_is_worse():
    baseline = measure_health(_probs([0, 1, 2, 3] * 25, 4, 0.9), 0.99)
    guard = CollapseGuard(baseline, min_agreement=0.6, entropy_drop=0.05)
    reference = np.array([0, 1, 2, 3] * 25)
    healthy = measure_health(_probs([0, 1, 2, 3] * 25, 4), 0.99, reference)
    assert guard.problems(healthy) == [] and guard.rejects_as_final(healthy) == []
    collapsed = measure_health(_probs([0, 1] * 50, 4), 0.99, reference)
    problems = guard.problems(collapsed)
    assert any("populated clusters fell from 4 to 2" in p for p in problems)
    assert any("non-empty clusters fell" in p for p in problems)
    assert any("cluster-size entropy fell" in p for p in problems)
    assert any("agreement with the starting model is 0.500" in p for p in problems)


def test_a_final_model_must_be_at_least_as_confident_as_its_start():
    baseline = measure_health(_probs([0, 1] * 50, 2, 0.995), 0.99)
    guard = CollapseGuard(baseline)
    less_sure = measure_health(_probs([0, 1] * 50, 2, 0.9), 0.99, np.array([0, 1] * 50))
    assert guard.problems(less_sure) == []
    assert "confident fraction 0.000 is below the starting 1.000" in guard.rejects_as_final(less_sure)[0]
