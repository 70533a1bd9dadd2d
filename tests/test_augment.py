"""Batched augmentation pipelines (trainer.augment): shapes, per-sample randomness, seeding, edge cases."""

from __future__ import annotations

import pytest
import torch

from trainer.augment import (
    AUGMENT_KINDS,
    STRONG_OPS,
    SimCLRAugment,
    StrongAugment,
    WeakAugment,
    build_augment,
    seeded,
)
from trainer.config import AugmentConfig

CFG = AugmentConfig()
RANDOM_KINDS = ("simclr", "weak", "strong")


def textured(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """One uint8 image (C, H, W) with smooth gradients plus noise, so every crop/flip/op changes it."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = ramp.view(1, 1, size) * 0.6 + ramp.view(1, size, 1) * 0.3
    image = base.expand(channels, size, size) + 0.1 * torch.rand(channels, size, size, generator=gen)
    image = image * torch.linspace(0.6, 1.0, channels).view(channels, 1, 1)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def repeated(channels: int, size: int, n: int) -> torch.Tensor:
    return textured(channels, size).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def random_batch(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)


def distinct_pair_fraction(out: torch.Tensor) -> float:
    flat = out.flatten(1)
    n = flat.shape[0]
    same = (torch.cdist(flat, flat) < 1e-6).float()
    return 1.0 - (same.sum().item() - n) / (n * (n - 1))


# ---------------------------------------------------------------- shapes, dtype, range


@pytest.mark.parametrize("size", [28, 32, 96])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_every_kind_returns_float32_unit_range_of_input_shape(kind: str, channels: int, size: int) -> None:
    augment = build_augment(kind, size, channels, CFG)
    out = augment(random_batch(6, channels, size))
    assert out.shape == (6, channels, size, size)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_none_kind_is_exact_uint8_to_unit_float() -> None:
    x = random_batch(4, 3, 32)
    torch.testing.assert_close(build_augment("none", 32, 3, CFG)(x), x.float() / 255, rtol=0, atol=0)


@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_input_of_another_size_comes_out_at_image_size(kind: str) -> None:
    out = build_augment(kind, 32, 3, CFG)(random_batch(3, 3, 40))
    assert out.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_empty_batch_gives_empty_output(kind: str) -> None:
    out = build_augment(kind, 28, 1, CFG)(torch.zeros(0, 1, 28, 28, dtype=torch.uint8))
    assert out.shape == (0, 1, 28, 28) and out.dtype == torch.float32


def test_float_input_and_wrong_channel_count_are_rejected() -> None:
    augment = build_augment("weak", 32, 3, CFG)
    with pytest.raises(TypeError, match="uint8"):
        augment(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3 channel"):
        augment(random_batch(2, 1, 32))


def test_build_augment_rejects_unknown_kind_by_name() -> None:
    with pytest.raises(ValueError, match="bogus"):
        build_augment("bogus", 32, 3, CFG)


# ---------------------------------------------------------------- per-sample randomness


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["simclr", "strong"])
def test_same_image_repeated_gives_different_output_per_sample(kind: str, channels: int) -> None:
    torch.manual_seed(0)
    out = build_augment(kind, 32, channels, CFG)(repeated(channels, 32, 48))
    assert distinct_pair_fraction(out) > 0.98


def test_weak_augment_varies_crop_and_flip_per_sample() -> None:
    torch.manual_seed(0)
    out = WeakAugment(32, 3, CFG)(repeated(3, 32, 48))
    # 9 x 9 crop offsets x 2 flips = 162 outcomes; 48 draws give few collisions
    assert distinct_pair_fraction(out) > 0.95


def test_weak_augment_uses_reflect_padding_not_black_borders() -> None:
    torch.manual_seed(0)
    x = torch.full((64, 1, 32, 32), 200, dtype=torch.uint8)
    out = WeakAugment(32, 1, CFG)(x)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))


# ---------------------------------------------------------------- seeding


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_same_seed_gives_identical_output_and_other_seed_differs(kind: str) -> None:
    augment = build_augment(kind, 32, 3, CFG)
    x = random_batch(16, 3, 32)
    with seeded(7, x.device):
        first = augment(x)
    with seeded(7, x.device):
        second = augment(x)
    with seeded(8, x.device):
        other = augment(x)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_manual_seed_before_a_call_makes_it_deterministic(kind: str) -> None:
    augment = build_augment(kind, 28, 1, CFG)
    x = random_batch(16, 1, 28)
    torch.manual_seed(3)
    first = augment(x)
    torch.manual_seed(3)
    assert torch.equal(first, augment(x))


def test_seeded_restores_the_callers_random_stream() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    with seeded(0, "cpu"):
        build_augment("strong", 32, 3, CFG)(random_batch(4, 3, 32))
    assert torch.equal(torch.rand(5), expected)


# ---------------------------------------------------------------- one-channel robustness


@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_one_channel_batches_with_constant_images_never_crash(kind: str) -> None:
    augment = build_augment(kind, 28, 1, CFG)
    torch.manual_seed(0)
    for step in range(20):
        x = random_batch(16, 1, 28, seed=step)
        x[0] = 0
        x[1] = 255
        x[2] = 127
        x[3, :, :, :14] = 0  # half black, half white
        x[3, :, :, 14:] = 255
        out = augment(x)
        assert out.shape == (16, 1, 28, 28)
        assert torch.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_three_channel_constant_images_never_crash() -> None:
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    x[4:] = 255
    for kind in AUGMENT_KINDS:
        out = build_augment(kind, 32, 3, CFG)(x)
        assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_simclr_one_channel_jitters_brightness_and_contrast_only_and_has_no_grayscale() -> None:
    names = [type(m).__name__ for m in SimCLRAugment(28, 1, CFG).steps]
    assert "RandomGrayscale" not in names
    jitter = [m for m in SimCLRAugment(28, 1, CFG).steps if type(m).__name__ == "ColorJitter"][0]
    assert jitter.saturation == 0.0 and jitter.hue == 0.0
    names3 = [type(m).__name__ for m in SimCLRAugment(32, 3, CFG).steps]
    assert "RandomGrayscale" in names3


# ---------------------------------------------------------------- strong augmentation


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", STRONG_OPS)
def test_each_strong_op_keeps_shape_and_unit_range_on_random_and_constant_images(op: str, channels: int) -> None:
    if channels == 1 and op == "color":
        pytest.skip("color is a 3-channel op")
    strong = StrongAugment(32, channels, AugmentConfig(strong_ops=2), ops=[op])
    x = random_batch(12, channels, 32).float() / 255
    x[0] = 0.0
    x[1] = 1.0
    torch.manual_seed(0)
    out = strong.apply_ops(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if op == "identity":
        assert torch.equal(out, x)


def test_strong_ops_are_drawn_per_sample_not_per_batch() -> None:
    # Two ops, one slot: identical inputs must split into exactly two outcomes within one batch
    # (kornia's RandAugment would give the whole batch the same op).
    strong = StrongAugment(32, 3, AugmentConfig(strong_ops=1), ops=["identity", "equalize"])
    x = repeated(3, 32, 64).float() / 255
    torch.manual_seed(0)
    out = strong.apply_ops(x)
    is_identity = (out == x).flatten(1).all(dim=1)
    assert 10 < int(is_identity.sum()) < 54
    equalized = out[~is_identity]
    assert (equalized == equalized[:1]).all()


def test_strong_magnitudes_are_drawn_per_sample() -> None:
    strong = StrongAugment(32, 1, AugmentConfig(strong_ops=1), ops=["brightness"])
    x = repeated(1, 32, 64).float() / 255
    torch.manual_seed(0)
    means = strong.apply_ops(x).mean(dim=(1, 2, 3))
    assert torch.unique(means).numel() >= 60


@pytest.mark.parametrize("channels", [1, 3])
def test_default_strong_ops_give_varying_statistics_for_identical_inputs(channels: int) -> None:
    strong = StrongAugment(32, channels, CFG)
    x = repeated(channels, 32, 64).float() / 255
    torch.manual_seed(0)
    out = strong.apply_ops(x)
    means, stds = out.mean(dim=(1, 2, 3)), out.std(dim=(1, 2, 3))
    assert distinct_pair_fraction(out) > 0.95
    assert means.std() > 0.02 and stds.std() > 0.01


def test_one_channel_default_op_list_leaves_out_color_and_rejects_it_explicitly() -> None:
    assert "color" not in StrongAugment(28, 1, CFG).ops
    assert "color" in StrongAugment(32, 3, CFG).ops
    with pytest.raises(ValueError, match="color"):
        StrongAugment(28, 1, CFG, ops=["color"])
    with pytest.raises(ValueError, match="warp_speed"):
        StrongAugment(32, 3, CFG, ops=["warp_speed"])


@pytest.mark.parametrize("size", [28, 32, 96])
def test_cutout_fills_one_whole_square_with_half_gray(size: int) -> None:
    side = round(CFG.cutout_fraction * size)
    strong = StrongAugment(size, 3, CFG, ops=["identity"])
    torch.manual_seed(0)
    out = strong(random_batch(32, 3, size))
    gray = (out == 0.5).all(dim=1)  # uint8 / 255 is never exactly 0.5, so only cutout pixels match
    for mask in gray:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert rows.numel() == side and cols.numel() == side
        assert int(mask.sum()) == side * side  # a full square, not a clipped one
        assert rows[-1] - rows[0] == side - 1 and cols[-1] - cols[0] == side - 1
    corners = torch.stack([(mask.nonzero()[0]) for mask in gray])
    assert torch.unique(corners, dim=0).shape[0] > 16  # the square moves from sample to sample


def test_cutout_fraction_zero_disables_cutout() -> None:
    strong = StrongAugment(32, 1, AugmentConfig(cutout_fraction=0.0), ops=["identity"])
    out = strong(random_batch(16, 1, 32))
    assert not (out == 0.5).any()


def test_zero_strong_ops_leaves_only_flip_crop_and_cutout() -> None:
    strong = StrongAugment(32, 3, AugmentConfig(strong_ops=0, flip_p=0.0, cutout_fraction=0.0))
    x = torch.full((4, 3, 32, 32), 90, dtype=torch.uint8)
    torch.testing.assert_close(strong(x), torch.full((4, 3, 32, 32), 90 / 255))


# ---------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_runs_on_the_input_device(kind: str) -> None:
    device = torch.device("cuda")
    x = random_batch(32, 3, 32).to(device)
    augment = build_augment(kind, 32, 3, CFG)
    with seeded(1, device):
        first = augment(x)
    with seeded(1, device):
        second = augment(x)
    assert first.device.type == "cuda" and first.dtype == torch.float32
    assert torch.equal(first, second)
