import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import nt_xent


def reference_nt_xent(z1, z2, temperature):
    """Plain loop version of NT-Xent, written from the SimCLR paper's definition."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        numerator = torch.exp(z[i] @ z[j] / temperature)
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(n2) if k != i)
        total += -torch.log(numerator / denominator)
    return total / n2


def test_nt_xent_matches_a_loop_reference_on_random_views():
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 16), torch.randn(7, 16)
    for t in (0.1, 0.5, 1.0):
        assert nt_xent(z1, z2, t).item() == pytest.approx(reference_nt_xent(z1, z2, t).item(), rel=1e-5)


def test_nt_xent_of_identical_orthogonal_views_has_the_closed_form():
    # Views identical, different images orthogonal: the partner scores 1/T, the 2N-2 others 0.
    n, t = 5, 0.5  # a temperature where float32 resolves the loss well
    z = torch.eye(n, 8)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_of_all_identical_vectors_is_log_of_candidates():
    # Every candidate is equally similar: a uniform choice among 2N - 1 views.
    n = 6
    z = torch.ones(n, 4)
    assert nt_xent(z, z, 0.1).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_nt_xent_is_lower_for_matching_views_than_for_shuffled_ones():
    torch.manual_seed(1)
    z1 = torch.randn(32, 16)
    z2 = z1 + 0.05 * torch.randn(32, 16)
    assert nt_xent(z1, z2, 0.1) < nt_xent(z1, z2[torch.randperm(32)], 0.1)


def test_nt_xent_gradients_flow_and_are_finite():
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4, requires_grad=True)
    nt_xent(z1, z2, 0.1).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_nt_xent_rejects_mismatched_shapes_and_single_pairs():
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(torch.randn(1, 3), torch.randn(1, 3))


# ---------------------------------------------------------------- SCAN loss

from trainer.losses import pseudo_label_targets, scan_loss, selflabel_loss  # noqa: E402


def _one_hot_logits(clusters, num_clusters, scale=50.0):
    return F.one_hot(torch.as_tensor(clusters), num_clusters).float() * scale


def test_scan_loss_is_minimal_for_confident_consistent_pairs_spread_over_clusters():
    c, w = 4, 5.0
    logits = _one_hot_logits([0, 1, 2, 3] * 4, c)
    total, consistency, entropy = scan_loss(logits, logits.clone(), w)
    assert consistency.item() == pytest.approx(0.0, abs=1e-6)
    assert entropy.item() == pytest.approx(math.log(c), rel=1e-6)
    assert total.item() == pytest.approx(-w * math.log(c), rel=1e-6)  # the lowest value the loss can take
    torch.manual_seed(0)
    for _ in range(20):
        a, n = torch.randn(16, c) * 3, torch.randn(16, c) * 3
        assert scan_loss(a, n, w)[0].item() > total.item()


def test_scan_entropy_term_penalises_a_single_cluster():
    c, w = 4, 5.0
    collapsed = _one_hot_logits([2] * 16, c)
    total, consistency, entropy = scan_loss(collapsed, collapsed, w)
    assert consistency.item() == pytest.approx(0.0, abs=1e-6) and entropy.item() == pytest.approx(0.0, abs=1e-6)
    spread = _one_hot_logits([0, 1, 2, 3] * 4, c)
    assert total.item() - scan_loss(spread, spread, w)[0].item() == pytest.approx(w * math.log(c), rel=1e-5)


def test_scan_loss_of_uniform_predictions_has_known_parts():
    # p = 1/C everywhere: <p, p> = 1/C so consistency = log C; the mean is uniform so entropy = log C.
    c, w = 10, 5.0
    total, consistency, entropy = scan_loss(torch.zeros(8, c), torch.zeros(8, c), w)
    assert consistency.item() == pytest.approx(math.log(c), rel=1e-6)
    assert entropy.item() == pytest.approx(math.log(c), rel=1e-6)
    assert total.item() == pytest.approx((1 - w) * math.log(c), rel=1e-6)


def test_scan_loss_of_several_heads_at_once_is_each_heads_own_loss():
    g = torch.Generator().manual_seed(0)
    anchors, neighbors = torch.randn(4, 32, 6, generator=g) * 3, torch.randn(4, 32, 6, generator=g) * 3
    parts = torch.stack(scan_loss(anchors, neighbors, 5.0))
    assert parts.shape == (3, 4)
    for h in range(4):
        assert torch.equal(parts[:, h], torch.stack(scan_loss(anchors[h], neighbors[h], 5.0)))

def test_scan_loss_punishes_confident_but_inconsistent_neighbors():
    anchors = _one_hot_logits([0, 1, 2, 3], 4, scale=10.0)
    agreeing = scan_loss(anchors, anchors.clone(), 0.0)[1]
    disagreeing = scan_loss(anchors, _one_hot_logits([1, 2, 3, 0], 4, scale=10.0), 0.0)[1]
    assert disagreeing.item() > agreeing.item() + 5  # log(1 / ~2e-4)


# ---------------------------------------------------------------- self-labeling loss


def test_pseudo_labels_mask_unconfident_samples_and_balance_classes():
    logits = torch.tensor([
        [9.0, 0.0, 0.0],  # confident, class 0
        [9.0, 0.0, 0.0],  # confident, class 0
        [9.0, 0.0, 0.0],  # confident, class 0
        [0.0, 9.0, 0.0],  # confident, class 1
        [1.0, 1.0, 0.9],  # not confident
    ])
    mask, targets, weights = pseudo_label_targets(logits, threshold=0.99)
    assert mask.tolist() == [True, True, True, True, False]
    assert targets[:4].tolist() == [0, 0, 0, 1]
    # frequencies among masked: class 0 3/4, class 1 1/4, class 2 none -> weights 4/3, 4, 0
    assert weights.tolist() == pytest.approx([4 / 3, 4.0, 0.0])
    assert pseudo_label_targets(logits, 0.99, class_balance=False)[2] is None


def test_selflabel_loss_is_weighted_cross_entropy_on_masked_strong_views():
    weak = torch.tensor([[9.0, 0.0], [9.0, 0.0], [0.0, 9.0], [0.2, 0.0]])
    strong = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, -5.0]])
    loss, fraction = selflabel_loss(weak, strong, threshold=0.99)
    ce = F.cross_entropy(strong[:3], torch.tensor([0, 0, 1]), reduction="none")
    w = torch.tensor([1.5, 1.5, 3.0])  # class 0 is 2/3 of the masked samples, class 1 is 1/3
    assert loss.item() == pytest.approx(((ce * w).sum() / w.sum()).item(), rel=1e-6)
    assert fraction.item() == pytest.approx(0.75)


def test_selflabel_loss_without_confident_samples_is_zero_and_differentiable():
    strong = torch.randn(4, 3, requires_grad=True)
    loss, fraction = selflabel_loss(torch.zeros(4, 3), strong, threshold=0.99)
    assert loss.item() == 0.0 and fraction.item() == 0.0
    loss.backward()
    assert strong.grad is not None and strong.grad.abs().sum() == 0


@pytest.mark.parametrize("class_balance", [True, False])
def test_selflabel_loss_equals_cross_entropy_on_the_masked_rows_of_random_batches(class_balance):
    # The loss weights rows by the mask instead of indexing them (no host sync); the value must not change.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        weak, strong = torch.randn(64, 5, generator=g) * 3, torch.randn(64, 5, generator=g)
        mask, targets, weights = pseudo_label_targets(weak, 0.6, class_balance)
        loss, fraction = selflabel_loss(weak, strong, 0.6, class_balance)
        expected = F.cross_entropy(strong[mask], targets[mask], weight=weights)
        assert 0 < mask.sum() < 64 and fraction.item() == mask.float().mean().item()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

