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


def _reference_scan_epoch(model, batches, optimizer, entropy_weight):
    """The loop as it was, reading every head's parts on the host after each step."""
    from trainer.losses import scan_loss

    model.train()
    model.backbone.eval()
    sums, seen = torch.zeros(3, model.cluster_heads.num_heads, dtype=torch.float64), 0
    for anchors, neighbors in batches:
        logits = model.cluster_logits_from_features(torch.cat([anchors, neighbors]))
        b = anchors.shape[0]
        parts = [scan_loss(logits[h, :b], logits[h, b:], entropy_weight) for h in range(len(logits))]
        loss = torch.stack([total for total, _, _ in parts]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += torch.tensor([[p[i].item() for p in parts] for i in range(3)], dtype=torch.float64) * b
        seen += b
    return sums / seen


def test_scan_epoch_metrics_equal_a_loop_that_reads_every_step_on_the_host():
    torch.manual_seed(1)
    model = ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=4, num_heads=3)
    model.backbone.requires_grad_(False)
    features = torch.randn(90, model.feature_dim)
    neighbors = torch.randint(90, (90, 4), generator=torch.Generator().manual_seed(2))
    twin = ScanModel.from_args(model.model_args())
    twin.load_state_dict(model.state_dict())
    twin.backbone.requires_grad_(False)
    optimizers = [torch.optim.Adam(m.cluster_heads.parameters(), lr=1e-2) for m in (model, twin)]

    metrics = train_scan_epoch(model, pair_batches(features, neighbors, 20, torch.Generator().manual_seed(3)),
                               optimizers[0], torch.device("cpu"), 5.0, head_only=True, cached_features=True)
    means = _reference_scan_epoch(twin, pair_batches(features, neighbors, 20, torch.Generator().manual_seed(3)),
                                  optimizers[1], 5.0)
    assert metrics["images"] == 80  # 4 full batches of 20; the partial one is dropped
    assert metrics["loss"] == float(means[0].mean())
    assert metrics["consistency"] == float(means[1].mean()) and metrics["entropy"] == float(means[2].mean())
    assert metrics["head_loss"] == [round(float(v), 5) for v in means[0]]
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same updates, step for step


def test_a_scan_head_with_non_finite_weights_stops_the_epoch_loudly():
    from trainer.errors import TrainerError

    torch.manual_seed(0)
    model = ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=3, num_heads=2)
    with torch.no_grad():
        model.cluster_heads.heads[1].weight.fill_(float("nan"))
    features, neighbors = torch.randn(40, model.feature_dim), torch.randint(40, (40, 3))
    optimizer = torch.optim.SGD(model.cluster_heads.parameters(), lr=0.1)
    with pytest.raises(TrainerError, match=r"^scan: the loss became nan at step 0; lower scan.lr and restart$"):
        train_scan_epoch(model, pair_batches(features, neighbors, 10, torch.Generator().manual_seed(0)), optimizer,
                         torch.device("cpu"), 5.0, head_only=True, cached_features=True)


@pytest.mark.gpu
def test_scan_epoch_on_cuda_slices_device_features_and_never_waits_for_the_gpu():
    from tests.cuda_sync import strict

    cuda = torch.device("cuda")
    torch.manual_seed(1)
    model = ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=4, num_heads=3)
    model.backbone.requires_grad_(False)
    twin = ScanModel.from_args(model.model_args())
    twin.load_state_dict(model.state_dict())
    twin.backbone.requires_grad_(False)
    model.to(cuda)
    features = torch.randn(400, model.feature_dim)
    neighbors = torch.randint(400, (400, 4), generator=torch.Generator().manual_seed(2))
    runs = []
    for m, source, device in ((model, features.to(cuda), cuda), (twin, features, torch.device("cpu"))):
        batches = pair_batches(source, neighbors, 40, torch.Generator().manual_seed(3))
        if device.type == "cuda":
            first = next(iter(pair_batches(source, neighbors, 40, torch.Generator().manual_seed(3))))
            assert first[0].device.type == first[1].device.type == "cuda"
            batches = strict(batches)
        optimizer = torch.optim.Adam(m.cluster_heads.parameters(), lr=1e-2)
        runs.append(train_scan_epoch(m, batches, optimizer, device, 5.0, head_only=True, cached_features=True))
    on_cuda, on_cpu = runs
    assert on_cuda["images"] == on_cpu["images"] == 400
    for key in ("loss", "consistency", "entropy"):  # bf16 autocast on CUDA: close, not equal
        assert on_cuda[key] == pytest.approx(on_cpu[key], rel=2e-2, abs=2e-2), key
