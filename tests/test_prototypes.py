import numpy as np
import pytest

from trainer.prototypes import find_prototypes, mutually_linked_clusters


def test_prototypes_are_the_members_nearest_the_confident_center():
    # cluster 0: confident samples sit at direction e0; sample 3 is a member far from it
    emb = np.array([[1, 0], [0.99, 0.14], [0.95, 0.31], [0.0, 1.0], [0, 1], [0.1, 0.99]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    probs = np.array([[0.99, 0.01], [0.98, 0.02], [0.9, 0.1], [0.6, 0.4], [0.01, 0.99], [0.2, 0.8]])
    ids, centers, sims = find_prototypes(probs, emb, per_cluster=3, confident_share=0.25)
    assert ids[0] == [0, 1, 2]  # nearest to the most confident sample's direction; 3 is left out
    assert ids[1] == [4, 5]
    assert np.allclose(centers[0], [1, 0]) and sims[0][0] > sims[0][-1]


def test_an_empty_cluster_has_no_prototypes_and_a_zero_center():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    ids, centers, sims = find_prototypes(probs, np.eye(2, dtype=np.float32), per_cluster=2)
    assert ids[1] == [] and ids[2] == [] and not centers[2].any()



def _three_groups_one_split(n=200, k=10, seed=0):
    """Three 2-D Gaussian groups (1 and 2 touching, 0 far away), group 0 cut at random into clusters 0
    and 3; each point's k nearest neighbors (exact, itself excluded)."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(3), n)
    points = np.array([[0.0, 0.0], [8.0, 0.0], [8.0, 4.0]])[group] + rng.standard_normal((3 * n, 2))
    pred = np.where((group == 0) & (rng.random(3 * n) < 0.5), 3, group)
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1)[:, :k], pred


def test_a_group_cut_in_two_is_linked_far_more_than_two_touching_groups():
    neighbors, pred = _three_groups_one_split()
    pairs = mutually_linked_clusters(neighbors, pred, 5)  # cluster 4 stays empty
    assert [p.clusters for p in pairs] == [(0, 3), (1, 2)]  # most linked first
    split, touching = pairs
    assert 0.35 < split.link < 0.65 and 0.0 < touching.link < 0.1
    assert split.sizes == (int((pred == 0).sum()), int((pred == 3).sum()))
    assert split.to_dict() == {"clusters": [0, 3], "link": round(split.link, 4), "sizes": list(split.sizes)}


def test_linked_pairs_need_two_populated_clusters_and_matching_neighbors():
    neighbors, pred = _three_groups_one_split(n=20, k=3)
    assert mutually_linked_clusters(neighbors, np.zeros_like(pred), 3) == []
    with pytest.raises(ValueError, match="neighbors must be"):
        mutually_linked_clusters(neighbors[:5], pred, 4)
