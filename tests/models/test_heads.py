"""Projection MLP and SCAN cluster heads."""

from __future__ import annotations

import pytest
import torch

from trainer.models.heads import ClusterHeads, ProjectionHead


def test_projection_head_layout_and_shape():
    head = ProjectionHead(32, 64, 16)
    assert isinstance(head.fc1, torch.nn.Linear) and head.fc1.weight.shape == (64, 32)
    assert isinstance(head.bn1, torch.nn.BatchNorm1d) and head.bn1.num_features == 64
    assert head.fc2.weight.shape == (16, 64)
    assert head(torch.randn(8, 32)).shape == (8, 16)


def test_projection_head_applies_relu_after_bn():
    head = ProjectionHead(4, 6, 3).eval()
    with torch.no_grad():
        head.fc2.weight.copy_(torch.eye(3, 6))
        head.fc2.bias.zero_()
        out = head(torch.randn(20, 4))
    assert bool((out >= 0).all())  # fc2 is identity on the first 3 hidden units, which passed ReLU


def test_cluster_heads_shape():
    heads = ClusterHeads(in_dim=32, num_clusters=10, num_heads=5)
    assert isinstance(heads.heads, torch.nn.ModuleList) and len(heads.heads) == 5
    x = torch.randn(7, 32)
    logits = heads(x)
    assert logits.shape == (5, 7, 10)
    for h in range(5):
        assert torch.equal(logits[h], heads.heads[h](x))


def test_cluster_heads_are_independent():
    torch.manual_seed(0)
    heads = ClusterHeads(in_dim=16, num_clusters=4, num_heads=3)
    weights = [h.weight for h in heads.heads]
    assert len({w.data_ptr() for w in weights}) == 3
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    x = torch.randn(5, 16)
    logits = heads(x)
    assert torch.allclose(logits[2], heads.heads[2](x))
    # a gradient through one head touches that head only
    logits[1].sum().backward()
    assert heads.heads[1].weight.grad.abs().sum() > 0
    for other in (heads.heads[0], heads.heads[2]):
        assert other.weight.grad is None or not other.weight.grad.any()


def test_cluster_heads_state_dict_names():
    keys = list(ClusterHeads(8, 3, 2).state_dict())
    assert keys == ["heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"]


@pytest.mark.parametrize("kwargs", [dict(num_clusters=1), dict(num_heads=0)])
def test_cluster_heads_reject_bad_sizes(kwargs):
    args = dict(in_dim=8, num_clusters=3, num_heads=1) | kwargs
    with pytest.raises(ValueError):
        ClusterHeads(**args)
