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
    one = SimCLRAugment(28, 1, CFG)
    assert one.grayscale_p == 0.0 and one.jitter[2:] == (0.0, 0.0)
    params = one.sample(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert not params.grayscale.any()
    assert (params.saturation == 1).all() and (params.hue == 0).all()
    assert SimCLRAugment(32, 3, CFG).grayscale_p == CFG.grayscale_p


# ---------------------------------------------------------------- strong augmentation


def strong_apply_ops(strong: StrongAugment, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The colour-op stage alone, with parameters drawn from `seed`."""
    params = strong.sample(x.shape[0], x.device, torch.Generator().manual_seed(seed))
    return strong.apply_colour_ops(x, params)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", STRONG_OPS)
def test_each_strong_op_keeps_shape_and_unit_range_on_random_and_constant_images(op: str, channels: int) -> None:
    if channels == 1 and op == "color":
        pytest.skip("color is a 3-channel op")
    strong = StrongAugment(32, channels, AugmentConfig(strong_ops=2), ops=[op])
    x = random_batch(12, channels, 32)
    x[0] = 0
    x[1] = 255
    out = strong(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if op == "identity":
        assert torch.equal(strong_apply_ops(strong, x.float() / 255), x.float() / 255)


def test_strong_ops_are_drawn_per_sample_not_per_batch() -> None:
    # Two ops, one slot: identical inputs must split into exactly two outcomes within one batch
    # (kornia's RandAugment would give the whole batch the same op).
    strong = StrongAugment(32, 3, AugmentConfig(strong_ops=1), ops=["identity", "equalize"])
    x = repeated(3, 32, 64).float() / 255
    out = strong_apply_ops(strong, x)
    is_identity = (out == x).flatten(1).all(dim=1)
    assert 10 < int(is_identity.sum()) < 54
    equalized = out[~is_identity]
    assert (equalized == equalized[:1]).all()


def test_strong_magnitudes_are_drawn_per_sample() -> None:
    strong = StrongAugment(32, 1, AugmentConfig(strong_ops=1), ops=["brightness"])
    x = repeated(1, 32, 64).float() / 255
    means = strong_apply_ops(strong, x).mean(dim=(1, 2, 3))
    assert torch.unique(means).numel() >= 60


@pytest.mark.parametrize("channels", [1, 3])
def test_default_strong_ops_give_varying_statistics_for_identical_inputs(channels: int) -> None:
    strong = StrongAugment(32, channels, CFG)
    out = strong(repeated(channels, 32, 64), generator=torch.Generator().manual_seed(0))
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
def test_cutout_fills_one_square_of_random_side_with_half_gray(size: int) -> None:
    largest = round(CFG.cutout_fraction * size)
    strong = StrongAugment(size, 3, CFG, ops=["identity"])
    out = strong(random_batch(64, 3, size), generator=torch.Generator().manual_seed(0))
    gray_px = (out == 0.5).all(dim=1)  # uint8 / 255 is never exactly 0.5, so only cutout pixels match
    sides = []
    for mask in gray_px:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert int(mask.sum()) == rows.numel() * cols.numel()  # a (possibly clipped) rectangle
        assert rows.numel() <= largest and cols.numel() <= largest
        if 0 < rows[0] and rows[-1] < size - 1 and 0 < cols[0] and cols[-1] < size - 1:
            assert rows.numel() == cols.numel()  # unclipped: a square
            sides.append(rows.numel())
    assert len(set(sides)) > 5  # the side is drawn per sample
    corners = torch.stack([(mask.nonzero()[0]) for mask in gray_px])
    assert torch.unique(corners, dim=0).shape[0] > 32  # the square moves from sample to sample


def test_cutout_side_is_uniform_from_one_to_the_largest() -> None:
    strong = StrongAugment(32, 3, CFG)
    params = strong.sample(20000, torch.device("cpu"), torch.Generator().manual_seed(0))
    side = params.cutout[:, 2]
    assert side.min() == 1 and side.max() == 16
    counts = torch.bincount(side.long(), minlength=17)[1:].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.15


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


# ---------------------------------------------------------------- each op against a reference (PIL, kornia, torch)
# Fixed parameters; the references are the libraries our fused ops replace.

import numpy as np  # noqa: E402
import kornia.enhance as KE  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from trainer import augment as A  # noqa: E402


def pil(image_chw: torch.Tensor) -> Image.Image:
    array = image_chw.numpy()
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def from_pil(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(array if array.ndim == 3 else array[:, :, None]).permute(2, 0, 1)


def photo(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 images with smooth structure plus noise (gradients, a bright blob), distinct per sample."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    out = []
    for i in range(n):
        a, b, cx, cy = torch.rand(4, generator=gen)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
        base = 0.5 * a * xx + 0.3 * b * yy + 0.4 * blob
        tint = 0.5 + 0.5 * torch.rand(channels, 1, 1, generator=gen)
        image = base * tint + 0.08 * torch.rand(channels, size, size, generator=gen)
        out.append((image.clamp(0, 1) * 255).round())
    return torch.stack(out).to(torch.uint8)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("op", "enhancer"), [("brightness", ImageEnhance.Brightness),
                                              ("contrast", ImageEnhance.Contrast),
                                              ("color", ImageEnhance.Color)])
def test_brightness_contrast_color_match_pil_imageenhance(op: str, enhancer, channels: int) -> None:
    if op == "color" and channels == 1:
        pytest.skip("color is a 3-channel op")
    x = photo(4, channels, 32)
    factors = torch.tensor([0.3, 0.8, 1.0, 1.35])
    one = torch.ones(4)
    args = {"brightness": (factors, one, one), "contrast": (one, factors, one), "color": (one, one, factors)}[op]
    ours = A.blend_colour(unit(x), *args).clamp(0, 1)
    for i, f in enumerate(factors.tolist()):
        reference = from_pil(enhancer(pil(x[i])).enhance(f))
        # PIL rounds to 8 bits after each step and its contrast uses the integer-rounded mean
        torch.testing.assert_close(ours[i], reference, atol=2.6 / 255, rtol=0)


def test_fused_jitter_equals_the_three_kornia_ops_in_sequence_without_clipping() -> None:
    x = unit(photo(6, 3, 32))
    b, c, s = torch.tensor([0.7, 1.2, 0.9, 1.0, 0.65, 1.1]), torch.linspace(0.6, 1.4, 6), torch.linspace(1.4, 0.6, 6)
    ours = A.blend_colour(x, b, c, s)
    reference = x * b.view(-1, 1, 1, 1)  # kornia's adjust_brightness_accumulative, unclipped
    mean = A.gray(reference).mean(dim=(1, 2, 3), keepdim=True)
    reference = mean + c.view(-1, 1, 1, 1) * (reference - mean)
    luma = A.gray(reference)
    reference = luma + s.view(-1, 1, 1, 1) * (reference - luma)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # and with clipping each op in kornia (torchvision's semantics) the difference stays small
    clipped = KE.adjust_saturation_with_gray_subtraction(
        KE.adjust_contrast_with_mean_subtraction(KE.adjust_brightness_accumulative(x, b), c), s)
    assert (ours.clamp(0, 1) - clipped).abs().mean() < 0.01


def test_hue_matches_kornia_adjust_hue() -> None:
    x = unit(photo(5, 3, 32))
    shift = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1])  # turns
    ours = A.adjust_hue(x, shift)
    reference = KE.adjust_hue(x, shift * 2 * torch.pi)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(5)), x, atol=1e-6, rtol=0)


def test_grayscale_matches_pil_convert_l() -> None:
    x = photo(3, 3, 32)
    ours = A.to_grayscale(unit(x), torch.tensor([True, False, True]))
    for i in (0, 2):
        reference = from_pil(pil(x[i]).convert("L")).expand(3, -1, -1)
        torch.testing.assert_close(ours[i], reference, atol=1 / 255, rtol=0)
    assert torch.equal(ours[1], unit(x[1]))


@pytest.mark.parametrize("channels", [1, 3])
def test_solarize_posterize_equalize_autocontrast_match_pil_imageops(channels: int) -> None:
    x = photo(3, channels, 32)
    for i in range(3):
        image = pil(x[i])
        one = unit(x[i : i + 1])
        threshold = [40, 128, 200][i]
        torch.testing.assert_close(A.solarize(one, torch.tensor([threshold / 255]))[0],
                                   from_pil(ImageOps.solarize(image, threshold)), atol=1e-6, rtol=0)
        bits = [4, 6, 8][i]
        torch.testing.assert_close(A.posterize(one, torch.tensor([float(bits)]))[0],
                                   from_pil(ImageOps.posterize(image, bits)), atol=1e-6, rtol=0)
        torch.testing.assert_close(A.equalize(one)[0], from_pil(ImageOps.equalize(image)), atol=1e-6, rtol=0)
        # PIL's autocontrast rounds through a lookup table: one level of difference at most
        torch.testing.assert_close(A.autocontrast(one)[0], from_pil(ImageOps.autocontrast(image)), atol=1.01 / 255,
                                   rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_sharpness_matches_pil_imageenhance(channels: int) -> None:
    x = photo(3, channels, 32)
    factors = torch.tensor([0.1, 0.5, 1.8])
    ours = A.sharpness(unit(x), factors).clamp(0, 1)
    for i, f in enumerate(factors.tolist()):
        reference = from_pil(ImageEnhance.Sharpness(pil(x[i])).enhance(f))
        # PIL rounds its smoothed image to 8 bits before blending: (1 + |1 - f|) / 2 levels at most
        torch.testing.assert_close(ours[i], reference, atol=1.5 / 255, rtol=0)


def test_equalize_also_matches_kornia() -> None:
    x = unit(photo(4, 3, 32))
    torch.testing.assert_close(A.equalize(x), KE.equalize(x), atol=1.01 / 255, rtol=0)


def test_resized_crop_matches_interpolating_the_cropped_box() -> None:
    x = unit(photo(3, 3, 32))
    boxes = torch.tensor([[4.0, 6.0, 20.0, 14.0], [0.0, 0.0, 32.0, 32.0], [10.0, 3.0, 9.0, 17.0]])
    left, top, width, height = boxes.unbind(1)
    ours = A.warp(x, A.crop_matrices(left, top, width, height, 32), 32)
    for i, (l, t, w, h) in enumerate(boxes.long().tolist()):
        reference = F.interpolate(x[i : i + 1, :, t : t + h, l : l + w], size=(32, 32), mode="bilinear",
                                  align_corners=False)[0]
        # interpolate clamps at the box edge where we read the pixel beyond it: compare the interior
        torch.testing.assert_close(ours[i, :, 2:-2, 2:-2], reference[:, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_flip_and_weak_crop_are_exact_pixel_moves_with_reflect_padding() -> None:
    x = unit(photo(4, 1, 32))
    flip = torch.tensor([True, False, True, False])
    assert torch.equal(A.warp(x, A.flip_matrices(flip, 32), 32, mode="nearest"),
                       torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x))
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    shifts = [(-4, 3), (0, 0), (4, -4), (2, 1)]
    matrices = torch.eye(3).repeat(4, 1, 1)
    for i, (dx, dy) in enumerate(shifts):
        matrices[i, 0, 2], matrices[i, 1, 2] = dx, dy
    ours = A.warp(x, matrices, 32, mode="nearest")
    for i, (dx, dy) in enumerate(shifts):
        assert torch.equal(ours[i], padded[i, :, 4 + dy : 36 + dy, 4 + dx : 36 + dx])


def test_rotation_by_90_degrees_is_rot90_and_shear_matches_kornia_warp_affine() -> None:
    from kornia.geometry.transform import warp_affine

    x = unit(photo(2, 3, 32))
    quarter = A.centred_matrices(A.rotation_linear(torch.tensor([90.0, -90.0])), torch.zeros(2, 2), 32)
    ours = A.warp(x, quarter, 32)
    torch.testing.assert_close(ours[0], torch.rot90(x[0], k=1, dims=(1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], torch.rot90(x[1], k=-1, dims=(1, 2)), atol=1e-5, rtol=0)
    shear = A.centred_matrices(A.shear_linear(torch.tensor([0.1, 0.0]), torch.tensor([0.0, -0.1])), torch.zeros(2, 2), 32)
    ours = A.warp(x, shear, 32)
    forward = torch.linalg.inv(shear)[:, :2]  # kornia's matrix maps source to destination
    reference = warp_affine(x, forward, dsize=(32, 32), mode="bilinear", padding_mode="reflection", align_corners=True)
    torch.testing.assert_close(ours[:, :, 4:-4, 4:-4], reference[:, :, 4:-4, 4:-4], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- distributions of the random parameters


def test_resized_crop_boxes_follow_the_scale_and_ratio_ranges() -> None:
    draw = A._Draw(torch.device("cpu"), torch.Generator().manual_seed(0))
    boxes = A.resized_crop_boxes(draw, 20000, 32, (0.2, 1.0))
    left, top, width, height = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + width <= 32).all() and (top + height <= 32).all()
    assert (left == left.round()).all() and (width == width.round()).all()
    area = width * height / 32**2
    ratio = width / height
    accepted = area < 1.0
    assert area[accepted].min() > 0.2 - 0.05 and area.max() <= 1.0
    assert ratio[accepted].min() > 0.75 - 0.1 and ratio[accepted].max() < 4 / 3 + 0.12
    assert 0.55 < float(area.mean()) < 0.62  # uniform in [0.2, 1] with a few whole-image fallbacks
    assert float((left[width < 16]).float().std()) > 3  # offsets move


def test_simclr_flip_jitter_and_grayscale_rates_and_factor_ranges() -> None:
    cfg = AugmentConfig(jitter=(0.4, 0.3, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2, flip_p=0.5)
    params = SimCLRAugment(32, 3, cfg).sample(20000, torch.device("cpu"), torch.Generator().manual_seed(1))
    flipped = params.geometry[:, 0, 0] < 0
    assert abs(float(flipped.float().mean()) - 0.5) < 0.02
    jittered = params.brightness != 1
    assert abs(float(jittered.float().mean()) - 0.8) < 0.02
    for values, spread in ((params.brightness, 0.4), (params.contrast, 0.3), (params.saturation, 0.2)):
        assert values.min() >= 1 - spread and values.max() <= 1 + spread
        assert float(values[jittered].std()) == pytest.approx(2 * spread / 12**0.5, rel=0.05)  # uniform
    assert params.hue.abs().max() <= 0.1 and (params.hue[~jittered] == 0).all()
    assert abs(float(params.grayscale.float().mean()) - 0.2) < 0.02


def test_strong_ops_and_magnitudes_are_uniform_per_sample() -> None:
    strong = StrongAugment(32, 3, CFG)
    params = strong.sample(20000, torch.device("cpu"), torch.Generator().manual_seed(2))
    assert params.ops.shape == (CFG.strong_ops, 20000)
    counts = torch.bincount(params.ops.flatten(), minlength=len(strong.ops)).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.06
    assert params.magnitude.min() >= 0 and params.magnitude.max() < 1
    assert float(params.magnitude.mean()) == pytest.approx(0.5, abs=0.01)


def test_strong_geometry_stays_within_the_reference_magnitudes() -> None:
    cfg = AugmentConfig(strong_ops=1, flip_p=0.0)
    strong = StrongAugment(32, 3, cfg, ops=["rotate"])
    params = strong.sample(4000, torch.device("cpu"), torch.Generator().manual_seed(3))
    angles = torch.rad2deg(torch.atan2(params.geometry[:, 1, 0], params.geometry[:, 0, 0]))
    assert angles.abs().max() <= 30.0 + 1e-4 and angles.abs().max() > 29
    strong = StrongAugment(32, 3, cfg, ops=["translate_x"])
    params = strong.sample(4000, torch.device("cpu"), torch.Generator().manual_seed(3))
    shift = params.geometry[:, 0, 2]  # translate + the weak crop's integer offset of at most 4 px
    assert shift.abs().max() <= 0.1 * 32 + 4 + 1e-4


def test_posterize_bits_cover_the_configured_range_uniformly() -> None:
    cfg = AugmentConfig(strong_ops=1)
    strong = StrongAugment(32, 1, cfg, ops=["posterize"])
    x = unit(photo(2000, 1, 8 + 8)).expand(-1, -1, -1, -1)
    params = strong.sample(2000, torch.device("cpu"), torch.Generator().manual_seed(4))
    bits = torch.floor(4 + params.magnitude[0] * 5).clamp(max=8)
    counts = torch.bincount(bits.long(), minlength=9)[4:].float()
    assert counts.min() > 300  # each of 4..8 bits about 400 times
    assert x.shape[0] == 2000


# ---------------------------------------------------------------- explicit generators


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_a_seeded_generator_gives_identical_views_and_leaves_the_global_stream_alone(kind: str) -> None:
    augment = build_augment(kind, 32, 3, CFG)
    x = random_batch(16, 3, 32)
    torch.manual_seed(5)
    expected_global = torch.rand(3)
    torch.manual_seed(5)
    first = augment(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.rand(3), expected_global)  # the default generator was not used
    second = augment(x, generator=torch.Generator().manual_seed(11))
    other = augment(x, generator=torch.Generator().manual_seed(12))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_views_of_a_sample_do_not_depend_on_how_the_batch_is_split_into_threads() -> None:
    augment = build_augment("strong", 32, 3, CFG)
    x = random_batch(32, 3, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = augment(x, generator=torch.Generator().manual_seed(0))
        torch.set_num_threads(2)
        two = augment(x, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, atol=1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", RANDOM_KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_views_equal_cpu_views_for_the_same_parameters(kind: str, channels: int) -> None:
    device = torch.device("cuda")
    augment = build_augment(kind, 32, channels, CFG)
    x = unit(photo(64, channels, 32))
    params = augment.sample(64, torch.device("cpu"), torch.Generator().manual_seed(0))
    on_cpu = augment.apply(x, params)
    on_gpu = augment.apply(x.to(device), type(params)(*(p.to(device) for p in params))).cpu()
    close = (on_cpu - on_gpu).abs() < 1e-4
    # posterize/equalize/solarize thresholds can flip a pixel whose value lies on a level boundary
    assert close.float().mean() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_generator_drives_cuda_views_and_a_cpu_generator_is_refused() -> None:
    device = torch.device("cuda")
    augment = build_augment("simclr", 32, 3, CFG)
    x = random_batch(16, 3, 32).to(device)
    first = augment(x, generator=torch.Generator(device).manual_seed(3))
    assert torch.equal(first, augment(x, generator=torch.Generator(device).manual_seed(3)))
    with pytest.raises(ValueError, match="generator lives on cpu"):
        augment(x, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_colour_ops_give_the_same_views_on_the_gpu_path_and_the_cpu_path(channels: int, monkeypatch) -> None:
    # The GPU path runs every op on the whole batch (identity where not drawn, no host sync); the CPU path
    # runs each op on the rows that drew it. Force the GPU path on the CPU and compare.
    strong = StrongAugment(32, channels, AugmentConfig(strong_ops=4))
    x = unit(photo(128, channels, 32))
    params = strong.sample(128, torch.device("cpu"), torch.Generator().manual_seed(9))
    rows_path = strong.apply_colour_ops(x, params)
    monkeypatch.setattr(A, "_masked_rows", A._masked_batch)
    batch_path = strong.apply_colour_ops(x, params)
    torch.testing.assert_close(rows_path, batch_path, atol=1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_views_are_drawn_without_a_single_host_sync(kind: str) -> None:
    from tests.cuda_sync import no_sync

    device = torch.device("cuda")
    augment = build_augment(kind, 32, 3, CFG)
    x = random_batch(64, 3, 32).to(device)
    generator = torch.Generator(device).manual_seed(0)
    augment(x, generator=generator)  # warm-up: first calls may load kernels
    with no_sync():
        out = augment(x, generator=generator)
    assert out.shape == (64, 3, 32, 32)
