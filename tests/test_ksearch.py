"""The K search: candidate heads train as they would alone, and the rule finds clear structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainer.config import config_from_dict
from trainer.errors import ConfigError
from trainer.ksearch import CandidateHeads, choose_k, head_stability, score_candidate, train_candidates
from trainer.losses import scan_loss
from trainer.neighbors import torch_knn
from trainer.stages.scan import pair_batches

CPU = torch.device("cpu")


def _batches(source, neighbors, batch_size, generator):
    return pair_batches(source, neighbors, batch_size, generator)


def clusters(groups: int, n: int = 1200, dim: int = 32, separation: float = 6.0, seed: int = 0):
    """`n` points in `groups` unit Gaussians at `separation` along distinct axes (all equally far
    apart, so no merge of groups is better than another), and their 10 exact cosine neighbors."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((max(groups, 1), dim))
    centers[np.arange(groups), np.arange(groups)] = separation if groups > 1 else 0.0
    labels = np.arange(n) % groups
    points = torch.tensor(centers[labels] + rng.normal(size=(n, dim)), dtype=torch.float32)
    neighbors = torch_knn(nn.functional.normalize(points, dim=1), 10, CPU)[0]
    return points, neighbors.numpy()


def search(points, neighbors, k_values, heads=6, epochs=40):
    """Scores of every K in `k_values`; lr 1e-2 so that 40 short epochs converge (at 1e-3 some heads
    of 8 groups have not separated them yet, and the search would measure that instead)."""
    candidates = CandidateHeads(points.shape[1], k_values, heads, torch.Generator().manual_seed(0))
    train_candidates(candidates, points, torch.from_numpy(neighbors), epochs, 128, 1e-2, 1e-4, 5.0, 0, _batches)
    unit = nn.functional.normalize(points, dim=1).numpy()
    return [score_candidate(p, unit, neighbors, 5.0, 0) for p in candidates.probabilities(points)]


def test_a_masked_candidate_is_a_k_way_linear_head():
    heads = CandidateHeads(8, [2, 5], 3, torch.Generator().manual_seed(1))
    x = torch.randn(7, 8)
    logits = heads(x).unflatten(0, (2, 3))  # (candidates, heads, N, K_max)
    linear = nn.Linear(8, 2)
    with torch.no_grad():
        linear.weight.copy_(heads.weight[0, 1, :2]), linear.bias.copy_(heads.bias[0, 1, :2])
    assert torch.allclose(logits[0, 1, :, :2], linear(x), atol=1e-6)
    assert torch.isneginf(logits[0, :, :, 2:]).all() and torch.isfinite(logits[1]).all()
    probs = heads.probabilities(x)
    assert [p.shape for p in probs] == [(3, 7, 2), (3, 7, 5)]
    assert np.allclose(probs[0][1], torch.softmax(linear(x), dim=1).detach().numpy(), atol=1e-6)


def test_candidates_trained_together_end_as_each_trained_alone():
    points, neighbors = clusters(3, n=300)
    together = CandidateHeads(32, [2, 3, 4], 2, torch.Generator().manual_seed(0))
    alone = CandidateHeads(32, [3], 2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        alone.weight.copy_(together.weight[1:2, :, :3]), alone.bias.copy_(together.bias[1:2, :, :3])
    for heads in (together, alone):
        train_candidates(heads, points, torch.from_numpy(neighbors), 3, 64, 1e-2, 1e-4, 5.0, 0, _batches)
    assert not torch.allclose(alone.weight[0], together.weight[0, :, :3, :][:, :3])  # the heads did move apart
    assert torch.allclose(together.weight[1, :, :3], alone.weight[0], atol=1e-5)
    assert torch.allclose(together.bias[1, :, :3], alone.bias[0], atol=1e-5)


@pytest.mark.parametrize("groups", [3, 5, 8])
def test_the_rule_finds_the_number_of_well_separated_groups(groups):
    points, neighbors = clusters(groups)
    scores = search(points, neighbors, list(range(2, 11)))
    choice = choose_k(scores)
    assert choice.k == groups and choice.structure == "clear", choice.message
    assert choice.message.startswith(f"chose K={groups}: its heads agree most")
    by_k = {s.k: s for s in scores}
    assert by_k[groups].stability > 0.8 and sum(by_k[groups].sizes) == len(points)
    assert len(choice.lines(scores)) == len(scores) + 1 and "<- chosen" in choice.lines(scores)[groups - 2]


def test_on_a_single_blob_the_rule_takes_the_smallest_k_and_says_the_structure_is_weak():
    points, neighbors = clusters(1)
    scores = search(points, neighbors, list(range(3, 9)))
    choice = choose_k(scores)
    assert choice.k == 3 and choice.structure == "weak"
    assert choice.message.startswith("weak structure: no K in 3..8 gives a partition the heads agree on")
    assert max(s.stability for s in scores) < 0.4


def test_head_stability_is_one_for_equal_partitions_up_to_renaming_and_errs_by_head():
    same = np.array([[0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1], [1, 1, 2, 2, 0, 0]])
    assert head_stability(same) == (1.0, 0.0)
    assert head_stability(same[:1]) == (1.0, 0.0)
    mixed = np.vstack([same[:2], [[0, 1, 2, 0, 1, 2]]])
    mean, error = head_stability(mixed)
    assert mean < 0.5 and error > 0.0


@pytest.mark.parametrize("scan, key", [
    ({"num_clusters": "many"}, "scan.num_clusters"),
    ({"num_clusters": "auto", "k_range": [1, 5]}, "scan.k_range"),
    ({"num_clusters": "auto", "k_range": [6, 3]}, "scan.k_range"),
])
def test_bad_k_settings_are_config_errors_naming_the_key(scan, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"scan": scan})


def test_k_range_comes_from_yaml_lists():
    config = config_from_dict({"scan": {"num_clusters": "auto", "k_range": [3, 30]}})
    assert config.scan.num_clusters == "auto" and tuple(config.scan.k_range) == (3, 30)
