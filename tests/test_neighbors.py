import numpy as np
import pytest
import torch

from trainer.errors import TrainerError
from trainer.neighbors import assign, kmeans, knn_backend, mine_neighbors, torch_knn


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


def test_torch_knn_finds_the_same_neighbors_as_faiss_exact_search():
    # The path CUDA devices take when faiss has no GPU support; here on the CPU, in small row chunks.
    rng = np.random.default_rng(3)
    feats = _unit(rng.normal(size=(500, 24)))
    expected_idx, expected_sims = mine_neighbors(feats, k=7)
    idx, sims = torch_knn(torch.from_numpy(feats), 7, torch.device("cpu"), chunk_bytes=64 * 500 * 4)
    assert idx.dtype == torch.int64 and sims.dtype == torch.float32 and idx.shape == (500, 7)
    np.testing.assert_allclose(sims.numpy(), expected_sims, rtol=1e-5, atol=1e-6)
    same = idx.numpy() == expected_idx
    assert same.mean() > 0.999
    # where the order differs, the two neighbors are equally similar (a tie in float32)
    for row, col in zip(*np.nonzero(~same)):
        assert feats[row] @ feats[idx[row, col]] == pytest.approx(feats[row] @ feats[expected_idx[row, col]], abs=1e-6)


def test_mining_on_a_torch_device_keeps_samples_out_of_their_own_neighbors():
    feats = _unit(np.repeat(np.eye(4, 8), 3, axis=0))  # 4 groups of 3 identical vectors
    idx, sims = mine_neighbors(feats, k=2, device=torch.device("cpu"))
    assert idx.dtype == np.int64 and sims.dtype == np.float32
    assert not (idx == np.arange(12)[:, None]).any()
    assert (idx // 3 == np.arange(12)[:, None] // 3).all()


def test_the_torch_path_is_for_cuda_devices_without_faiss_gpu():
    assert knn_backend(False, torch.device("cuda")) == "torch"
    assert knn_backend(True, torch.device("cuda")) == "faiss-gpu"
    assert knn_backend(False, torch.device("cpu")) == "faiss-cpu"


@pytest.mark.gpu
def test_torch_knn_on_cuda_is_faiss_exact_search_even_with_tf32_allowed():
    rng = np.random.default_rng(4)
    feats = _unit(rng.normal(size=(3000, 64)))
    expected_idx, expected_sims = mine_neighbors(feats, k=10)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # what a training script may have switched on
    try:
        idx, sims = torch_knn(torch.from_numpy(feats), 10, torch.device("cuda"), chunk_bytes=500 * 3000 * 4)
        assert torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    np.testing.assert_allclose(sims.numpy(), expected_sims, rtol=1e-5, atol=1e-6)
    assert (idx.numpy() == expected_idx).mean() > 0.999
