"""HOG descriptors: shapes, norms and the orientation bins of known edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.hog import hog_features


def _step(vertical: bool, size: int = 32) -> torch.Tensor:
    image = torch.zeros((1, 1, size, size), dtype=torch.uint8)
    if vertical:
        image[..., :, size // 2:] = 200  # a vertical edge: gradients along x only
    else:
        image[..., size // 2:, :] = 200  # a horizontal edge: gradients along y only
    return image


def test_descriptors_have_the_documented_length_and_unit_norm():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (5, 3, 40, 40), dtype=np.uint8))
    features = hog_features(images)
    assert features.shape == (5, 3 * 3 * 4 * 9) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert hog_features(images[:0]).shape == (0, 324)
    with pytest.raises(ValueError, match="multiple of cell"):
        hog_features(images, size=30, cell=8)


def _bin_mass(image: torch.Tensor) -> np.ndarray:
    """Descriptor mass per orientation bin: each 36-value block is 9 bins x 4 cells (bin-major)."""
    return hog_features(image).reshape(9, 9, 4).sum(axis=(0, 2))


def test_an_edge_puts_all_its_mass_in_the_bins_around_its_gradient_direction():
    # a vertical edge has gradients at 0 degrees: half way between the centres of bins 8 (170) and 0 (10)
    mass = _bin_mass(_step(vertical=True))
    assert mass[0] == pytest.approx(mass[8]) and mass[0] > 0 and mass[1:8].sum() == 0
    # a horizontal edge has gradients at 90 degrees: the centre of bin 4
    mass = _bin_mass(_step(vertical=False))
    assert mass[4] == pytest.approx(mass.sum(), rel=1e-5)


def test_uniform_brightness_changes_do_not_change_the_descriptor():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 200, (4, 1, 32, 32), dtype=np.uint8))
    np.testing.assert_allclose(hog_features(images), hog_features(images + 50), atol=1e-6)
