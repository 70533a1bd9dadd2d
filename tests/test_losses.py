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
