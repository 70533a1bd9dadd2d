import numpy as np

from trainer.prototypes import find_prototypes


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
