import numpy as np

from export.prototypes import PrototypeIndex, PrototypeSelection
from trainer.prototypes import find_prototypes


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def selection_of_three_clusters():
    rng = np.random.default_rng(0)
    centers = unit(np.eye(3, 8))
    embeddings = unit(np.repeat(centers, 20, axis=0) + 0.1 * rng.standard_normal((60, 8)))
    probs = np.full((60, 3), 0.05, np.float32)
    probs[np.arange(60), np.repeat(np.arange(3), 20)] = 0.9
    return PrototypeSelection.from_predictions(probs, embeddings, lambda i: f"img{i}.png", 4, 0.5), embeddings, probs


def test_selection_is_trainer_find_prototypes_with_sources():
    selection, embeddings, probs = selection_of_three_clusters()
    ids, centers, sims = find_prototypes(probs, embeddings, 4, 0.5)
    assert selection.ids == ids and selection.similarity == sims
    np.testing.assert_array_equal(selection.centers, centers)
    assert selection.sources[1] == [f"img{i}.png" for i in ids[1]]
    assert selection.flat_ids == ids[0] + ids[1] + ids[2]


def test_index_finds_the_prototypes_of_the_querys_cluster_and_survives_save_and_load(tmp_path):
    selection, embeddings, _ = selection_of_three_clusters()
    index = PrototypeIndex.build(selection, embeddings[selection.flat_ids])
    index.save(tmp_path)
    loaded = PrototypeIndex.load(tmp_path)
    assert len(loaded) == 12 and loaded.num_clusters == 3
    query = unit(np.eye(3, 8)[[2]] + 0.01)
    sims, rows = loaded.search(query, 4)
    assert set(loaded.cluster[rows[0]]) == {2}
    assert np.all(np.diff(sims[0]) <= 1e-6)  # most similar first
    np.testing.assert_allclose(sims[0], embeddings[loaded.image_id[rows[0]]] @ query[0], rtol=1e-5)
    assert [p["image_id"] for p in loaded.of_cluster(1)] == selection.ids[1]
    assert loaded.of_cluster(1)[0]["source"] == f"img{selection.ids[1][0]}.png"
    sims_all, rows_all = loaded.search(query, 50)  # more than there are: capped
    assert rows_all.shape == (1, 12)


def test_an_empty_cluster_has_no_prototypes_and_is_never_returned(tmp_path):
    _, embeddings, probs = selection_of_three_clusters()
    probs = probs[:40]  # cluster 2 loses all its members
    selection = PrototypeSelection.from_predictions(probs, embeddings[:40], str, 4, 0.5)
    assert selection.ids[2] == []
    index = PrototypeIndex.build(selection, embeddings[selection.flat_ids])
    index.save(tmp_path)
    loaded = PrototypeIndex.load(tmp_path)
    assert loaded.of_cluster(2) == []
    _, rows = loaded.search(unit(np.eye(3, 8)[[2]]), 8)
    assert 2 not in set(loaded.cluster[rows[0]]) and len(loaded) == 8
