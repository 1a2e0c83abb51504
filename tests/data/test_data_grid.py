"""``bundle/data/grid.py``: reorientation to RAS, resampling to a voxel size and axial slices keep the world positions."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.data.grid import axial_slice, reorient_to_ras, resample_to_spacing


def _world(affine, idx) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(idx, dtype=np.float64) + affine[:3, 3]


def _ramp(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_reorient_flips_a_las_array():
    affine = np.diag([-2.0, 3.0, 1.5, 1.0])
    affine[:3, 3] = [10.0, -5.0, 2.0]
    array = _ramp((4, 5, 6))
    out, new = reorient_to_ras(array, affine)
    np.testing.assert_array_equal(out, array[::-1])
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(new[:3, :3], np.diag([2.0, 3.0, 1.5]))
    np.testing.assert_allclose(new[:3, 3], [4.0, -5.0, 2.0])  # the old last x voxel: 10 - 2 * 3
    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:  # same value at the same world point
        old = np.linalg.solve(affine[:3, :3], _world(new, idx) - affine[:3, 3])
        assert out[idx] == array[tuple(np.rint(old).astype(int))]


def test_reorient_permutes_and_flips_axes():
    # array axes: 0 runs posterior (-y), 1 runs right (+x), 2 runs superior (+z): PRS
    affine = np.array([[0.0, 2.0, 0.0, -8.0], [-1.0, 0.0, 0.0, 6.0], [0.0, 0.0, 3.0, 0.0], [0, 0, 0, 1]])
    array = _ramp((4, 5, 6))
    out, new = reorient_to_ras(array, affine)
    assert out.shape == (5, 4, 6)
    np.testing.assert_allclose(new[:3, :3], np.diag([2.0, 1.0, 3.0]))
    for idx in [(0, 0, 0), (4, 3, 5), (2, 1, 3)]:
        old = np.linalg.solve(affine[:3, :3], _world(new, idx) - affine[:3, 3])
        assert out[idx] == array[tuple(np.rint(old).astype(int))]


def test_ras_input_is_unchanged():
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    array = _ramp((2, 3, 4))
    out, new = reorient_to_ras(array, affine)
    np.testing.assert_array_equal(out, array)
    np.testing.assert_allclose(new, affine)


def test_resample_to_spacing_sizes_and_centred_grid():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-5.0, 3.0, 7.0]
    array = _ramp((10, 9, 8))
    out, new = resample_to_spacing(array, affine, 2.0)
    assert out.shape == (5, 5, 4) and out.dtype == np.float32  # floor((n - 1) / 2) + 1
    np.testing.assert_allclose(np.diag(new)[:3], [2.0, 2.0, 2.0])
    # the new grid is centred in the old one: voxel centres span [0.5, 8.5], [0, 8], [0.5, 6.5] old voxels
    np.testing.assert_allclose(new[:3, 3], [-4.5, 3.0, 7.5])
    old_centre = _world(affine, (np.array(array.shape) - 1) / 2)
    np.testing.assert_allclose(_world(new, (np.array(out.shape) - 1) / 2), old_centre)


@pytest.mark.filterwarnings("error")
def test_resample_to_spacing_raises_no_warning():
    """SciPy warns on a 1-D matrix for ``affine_transform``; the resampler gives it the diagonal matrix."""
    out, _ = resample_to_spacing(_ramp((10, 9, 8)), np.eye(4), 2.0)
    assert out.shape == (5, 5, 4)


def test_resample_reproduces_a_linear_ramp_at_the_world_positions():
    """A linear ramp survives the anti-aliasing blur and linear interpolation unchanged away from the border."""
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (16, 16, 16)], indexing="ij")
    world = [1.5 * i, 1.5 * j, 1.5 * k]
    array = (0.5 * world[0] - 0.25 * world[1] + 2.0 * world[2]).astype(np.float32)
    for spacing in (3.0, 1.0):  # down (blurred) and up
        out, new = resample_to_spacing(array, affine, spacing)
        ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in out.shape], indexing="ij")
        w = [new[a, a] * idx + new[a, 3] for a, idx in enumerate((ii, jj, kk))]
        expected = 0.5 * w[0] - 0.25 * w[1] + 2.0 * w[2]
        inner = tuple(slice(2, n - 2) for n in out.shape)
        np.testing.assert_allclose(out[inner], expected[inner], atol=1e-3)


def test_resample_at_the_same_spacing_is_a_copy():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    array = _ramp((3, 4, 5))
    out, new = resample_to_spacing(array, affine, 2.0)
    np.testing.assert_array_equal(out, array)
    assert out is not array
    np.testing.assert_allclose(new, affine)


@pytest.mark.parametrize("shape,spacing,match", [((4, 5), 2.0, "expected a 3D volume"), ((4, 5, 6), 0.0, "spacing_mm must be positive")])
def test_resample_refuses_bad_requests(shape, spacing, match):
    with pytest.raises(ValueError, match=match):
        resample_to_spacing(np.zeros(shape), np.eye(4), spacing)


def test_axial_slice_affine_maps_to_the_slice_world_position():
    affine = np.array([[0.0, -2.0, 0.0, 4.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 2.5, 10.0], [0, 0, 0, 1]])
    array = _ramp((3, 4, 5))
    img, a = axial_slice(array, affine, 3)
    np.testing.assert_array_equal(img, array[:, :, 3])
    for i, j in [(0, 0), (2, 3)]:
        np.testing.assert_allclose(_world(a, (i, j, 0)), _world(affine, (i, j, 3)))
    np.testing.assert_allclose(a[:3, 2], affine[:3, 2])  # slice direction and thickness kept
    for bad in (-1, 5):
        with pytest.raises(ValueError, match=rf"slice index {bad} outside \[0, 5\)"):
            axial_slice(array, affine, bad)
