import numpy as np
import pytest
import torch

from trainer.models.scan_model import ScanModel
from trainer.stages.scan import head_losses, pair_batches, select_head, train_scan_epoch


def _confident(clusters, num_clusters, confidence=0.97):
    p = np.full((len(clusters), num_clusters), (1 - confidence) / (num_clusters - 1))
    p[np.arange(len(clusters)), clusters] = confidence
    return p


def test_head_selection_picks_the_lowest_scan_loss():
    # 40 samples in 4 groups of 10; every sample's neighbors are in its own group.
    groups = np.repeat(np.arange(4), 10)
    neighbors = np.array([[j for j in np.flatnonzero(groups == groups[i]) if j != i][:5] for i in range(40)])
    good = _confident(groups, 4)                           # consistent and spread
    collapsed = _confident(np.zeros(40, dtype=int), 4)     # consistent but one cluster
    noisy = _confident(np.random.default_rng(0).integers(0, 4, 40), 4)  # spread, inconsistent
    losses = head_losses(np.stack([collapsed, noisy, good]), neighbors, entropy_weight=5.0)
    assert select_head(losses) == 2
    assert losses[0]["entropy"] == pytest.approx(losses[0]["entropy"]) and losses[0]["entropy"] < 0.3
    assert losses[1]["consistency"] > losses[2]["consistency"] + 1


def test_pair_batches_pair_each_anchor_with_one_of_its_neighbors():
    n = 50
    source = torch.arange(n).float()[:, None]  # sample i "is" the value i
    neighbors = torch.tensor([[(i + d) % n for d in (1, 2, 3)] for i in range(n)])
    seen = []
    for anchors, partners in pair_batches(source, neighbors, 16, torch.Generator().manual_seed(0)):
        for a, p in zip(anchors[:, 0].long().tolist(), partners[:, 0].long().tolist()):
            assert p in neighbors[a].tolist()
            seen.append(a)
    assert len(seen) == 48 and len(set(seen)) == 48  # one epoch: distinct anchors, last partial batch dropped


def test_training_heads_on_cached_features_lowers_the_scan_loss():
    torch.manual_seed(0)
    model = ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=3, num_heads=2)
    centers = torch.randn(3, model.feature_dim) * 3
    groups = torch.arange(300) % 3
    features = centers[groups] + 0.3 * torch.randn(300, model.feature_dim)
    neighbors = torch.stack([torch.nonzero(groups == groups[i]).flatten()[:6] for i in range(300)])
    model.backbone.requires_grad_(False)
    optimizer = torch.optim.Adam(model.cluster_heads.parameters(), lr=1e-2)
    losses = []
    for epoch in range(15):
        batches = pair_batches(features, neighbors, 100, torch.Generator().manual_seed(epoch))
        metrics = train_scan_epoch(model, batches, optimizer, torch.device("cpu"), 5.0, head_only=True,
                                   cached_features=True)
        losses.append(metrics["loss"])
    assert len(metrics["head_loss"]) == 2
    assert losses[-1] < losses[0] - 1.0
    pred = model.cluster_logits_from_features(features)[0].argmax(1)
    # each group ends up in one cluster of its own
    assert len({int(pred[groups == g].mode().values) for g in range(3)}) == 3
