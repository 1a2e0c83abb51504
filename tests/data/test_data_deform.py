"""Random transforms, composition and inversion (2D and 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.data import deform
from bundle.fields import jacobian_determinant

SHAPES = {2: (40, 48), 3: (24, 28, 20)}


@pytest.mark.parametrize("dims", [2, 3])
def test_random_affine_is_centred_and_seeded(dims):
    center = (np.array(SHAPES[dims]) - 1) / 2
    a = deform.random_affine(3, dims, rotation_deg=15, translation_vox=0, scale=0.1, shear=0.05, center=center)
    assert a.shape == (dims + 1, dims + 1) and np.linalg.det(a[:dims, :dims]) > 0
    np.testing.assert_allclose(deform.transform_points(a, center[:, None]), center[:, None], atol=1e-4)
    np.testing.assert_array_equal(a, deform.random_affine(3, dims, 15, 0, 0.1, 0.05, center))
    assert not np.allclose(a, deform.random_affine(4, dims, 15, 0, 0.1, 0.05, center))
    shifted = deform.random_affine(3, dims, 0, 5, 0, 0)
    np.testing.assert_allclose(shifted[:dims, :dims], np.eye(dims))
    assert np.all(np.abs(shifted[:dims, dims]) <= 5)


@pytest.mark.parametrize("dims", [2, 3])
def test_random_elastic_is_bounded_smooth_and_invertible(dims):
    shape = SHAPES[dims]
    field = deform.random_elastic(0, shape, max_disp_vox=2.0, control_spacing=8.0)
    assert field.shape == (dims, *shape) and field.dtype == np.float32
    assert np.abs(field).max() <= 2.0 + 1e-5 and np.abs(field).max() > 0.3
    assert jacobian_determinant(torch.from_numpy(field)[None]).min() > 0
    np.testing.assert_array_equal(field, deform.random_elastic(0, shape, 2.0, 8.0))
    with pytest.raises(ValueError, match="invertible"):
        deform.random_elastic(0, shape, max_disp_vox=4.0, control_spacing=8.0)


@pytest.mark.parametrize("dims", [2, 3])
def test_invert_map_at_round_trip(dims):
    """The preimages solve ``w + ddf(w) = z`` (how pairs are resampled from the ground truth)."""
    shape = SHAPES[dims]
    field = deform.random_elastic(1, shape, max_disp_vox=2.0, control_spacing=8.0)
    grid = deform.identity_grid(shape)
    w = deform.invert_map_at(field, grid, strict=True)
    assert np.abs(w - grid).max() > 0.3
    interior = tuple(slice(3, -3) for _ in shape)  # away from the clamped border
    residual = w + deform.sample_linear(field, w) - grid
    assert np.abs(residual[(slice(None), *interior)]).max() < 0.05


def test_invert_map_at_strict_failure():
    field = np.zeros((2, 10, 10), dtype=np.float32)
    field[0] = np.arange(10)[:, None] * 1.5  # gradient 1.5: not a contraction
    with pytest.raises(RuntimeError, match="did not converge"):
        deform.invert_map_at(field, deform.identity_grid((10, 10)) + 0.5, strict=True)


@pytest.mark.parametrize("dims", [2, 3])
def test_compose_affine_ddf_is_affine_after_ddf(dims):
    shape = SHAPES[dims]
    a = deform.random_affine(2, dims, 10, 2, 0.1, 0.05, (np.array(shape) - 1) / 2)
    e = deform.random_elastic(2, shape, 1.5, 8.0)
    grid = deform.identity_grid(shape)
    expected = deform.transform_points(a, grid + e) - grid
    np.testing.assert_allclose(deform.compose_affine_ddf(a, e), expected, atol=1e-5)
    np.testing.assert_allclose(deform.invert_affine(a) @ a, np.eye(dims + 1), atol=1e-10)


@pytest.mark.parametrize("dims", [2, 3])
def test_sample_linear_matches_scipy(dims):
    rng = np.random.default_rng(0)
    shape = SHAPES[dims]
    field = rng.random((2, *shape), dtype=np.float32)
    points = rng.uniform(-2, np.array(shape)[:, None] + 1, size=(dims, 50)).astype(np.float32)
    got = deform.sample_linear(field, points)
    for c in range(2):
        expected = ndimage.map_coordinates(field[c], points, order=1, mode="nearest")
        np.testing.assert_allclose(got[c], expected, atol=1e-5)
    np.testing.assert_allclose(deform.resample(field[0], points, order=1), got[0], atol=1e-6)
    labels = (field[0] > 0.5).astype(np.uint8)
    assert deform.resample(labels, points, order=0).dtype == np.uint8
