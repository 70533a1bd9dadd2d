import numpy as np
import pytest

from trainer.errors import TrainerError
from trainer.neighbors import assign, kmeans, mine_neighbors


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_mined_neighbors_equal_brute_force_cosine_top_k():
    rng = np.random.default_rng(0)
    feats = _unit(rng.normal(size=(300, 16)))
    idx, sims = mine_neighbors(feats, k=5)
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1)[:, :5]
    assert idx.shape == (300, 5) and idx.dtype == np.int64
    assert (idx == expected).mean() > 0.999  # ties in float32 may swap order
    np.testing.assert_allclose(sims, np.take_along_axis(sim, expected, 1), rtol=1e-5)


def test_a_sample_is_never_its_own_neighbor_even_with_duplicates():
    feats = _unit(np.repeat(np.eye(4, 8), 3, axis=0))  # 4 groups of 3 identical vectors
    idx, _ = mine_neighbors(feats, k=2)
    assert not (idx == np.arange(12)[:, None]).any()
    assert (idx // 3 == np.arange(12)[:, None] // 3).all()  # neighbors are the duplicates


def test_k_must_be_smaller_than_the_set():
    with pytest.raises(TrainerError, match="k \\+ 1"):
        mine_neighbors(_unit(np.ones((3, 2))), k=3)


def test_kmeans_recovers_well_separated_groups():
    rng = np.random.default_rng(1)
    centers = _unit(rng.normal(size=(4, 32)))
    feats = _unit(np.repeat(centers, 50, axis=0) + 0.05 * rng.normal(size=(200, 32)))
    pred = assign(feats, kmeans(feats, 4, seed=0))
    groups = np.arange(200) // 50
    # each true group lands in one cluster, and the four clusters are distinct
    assert all(len(set(pred[groups == g])) == 1 for g in range(4))
    assert len(set(pred)) == 4
