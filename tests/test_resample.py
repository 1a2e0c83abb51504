"""``bundle.resample``: world-space sampling of images and labels, voxel-space label warping (2D and 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.resample import (
    grid_world_points,
    label_dtype,
    physical_extent,
    ras_grid_for,
    sample_at_world,
    sample_labels_at_world,
    spatial_affine,
    warp_labels,
)


def _oblique_affine(dims, spacing=(1.5, 2.0, 2.5), angle=0.4, origin=(-30.0, 12.0, 5.0)):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.eye(dims)
    rot[:2, :2] = [[c, -s], [s, c]]
    a = np.eye(dims + 1)
    a[:dims, :dims] = rot @ np.diag(spacing[:dims])
    a[:dims, dims] = origin[:dims]
    return a


@pytest.mark.parametrize("dims", [2, 3])
def test_sampling_an_image_at_its_own_voxels_is_exact(dims):
    shape = (9, 8, 7)[:dims]
    aff = _oblique_affine(dims)
    img = torch.rand(2, *shape, dtype=torch.float64)
    out = sample_at_world(img, aff, grid_world_points(aff, shape, dtype=torch.float64))
    torch.testing.assert_close(out, img, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_world_shift_moves_content_by_whole_voxels(dims):
    """A linear ramp along axis 0 sampled 2 voxels further reads the ramp + 2 (oblique grid)."""
    shape = (12, 10, 8)[:dims]
    aff = _oblique_affine(dims)
    ramp = torch.arange(shape[0], dtype=torch.float64).view(1, -1, *([1] * (dims - 1))).expand(1, *shape)
    pts = grid_world_points(aff, shape, dtype=torch.float64)
    step = torch.as_tensor(aff[:dims, 0] * 2.0).view(dims, *([1] * dims))  # two voxels along axis 0 in mm
    out = sample_at_world(ramp, aff, pts + step, padding_mode="border")
    inner = (slice(None), slice(0, shape[0] - 2))
    torch.testing.assert_close(out[inner], ramp[inner] + 2.0, atol=1e-9, rtol=0)


def test_labels_keep_their_values_and_type_and_fall_to_zero_outside():
    shape = (10, 10, 6)
    aff = _oblique_affine(3)
    lab = np.zeros(shape, dtype=np.int16)
    lab[2:8, 2:8, 1:5] = 300
    lab[4:6, 4:6, 2:4] = 7
    pts = grid_world_points(aff, shape)
    np.testing.assert_array_equal(sample_labels_at_world(lab, aff, pts), lab)
    far = sample_labels_at_world(lab, aff, pts + 1000.0)
    assert np.all(far == 0)
    assert label_dtype(lab) == np.int16 and label_dtype(lab.clip(0, 7)) == np.uint8 and label_dtype(np.array([70000])) == np.int32


def test_spatial_affine_and_ras_grid_cover_the_image():
    a4 = _oblique_affine(3)
    np.testing.assert_array_equal(spatial_affine(a4, 2), a4[np.ix_([0, 1, 3], [0, 1, 3])])
    shape = (20, 18, 9)
    net_aff, net_shape = ras_grid_for(a4, shape, spacing_mm=2.0, divisor=8)
    assert all(n % 8 == 0 for n in net_shape) and np.allclose(np.diag(net_aff)[:3], 2.0)
    lo, hi = physical_extent(a4, shape)
    net_lo, net_hi = physical_extent(net_aff, net_shape)
    assert np.all(net_lo <= lo + 1e-9) and np.all(net_hi >= hi - 1e-9)
    np.testing.assert_allclose((net_lo + net_hi) / 2, (lo + hi) / 2, atol=1e-9)


# ----------------------------------------------------------------------------- warp_labels


@pytest.mark.parametrize("dims", [2, 3])
def test_warp_labels_identity_and_shift(dims):
    g = torch.Generator().manual_seed(dims)
    shape = (16, 14, 12)[:dims]
    lab = torch.randint(0, 4, (1, 1, *shape), generator=g)
    zero = torch.zeros(1, dims, *shape)
    out = warp_labels(lab, zero)
    assert out.dtype == torch.long and out.shape == lab.shape
    assert torch.equal(out, lab)
    shift = [2, -3, 1][:dims]
    ddf = torch.tensor(shift, dtype=torch.float32).view(1, dims, *([1] * dims)).expand(1, dims, *shape).contiguous()
    out = warp_labels(lab, ddf)
    # warped(x) = label(x + s) = np.roll(label, -s)
    expected = np.roll(lab[0, 0].numpy(), [-s for s in shift], axis=tuple(range(dims)))
    inner = tuple(slice(3, n - 3) for n in shape)
    np.testing.assert_array_equal(out[0, 0].numpy()[inner], expected[inner])
    # labels not listed become background
    only1 = warp_labels(lab, zero, labels=(1,))
    assert torch.equal(only1, torch.where(lab == 1, lab, torch.zeros_like(lab)))


def test_warp_labels_gradient_free_and_zero_padding():
    lab = torch.ones(1, 1, 8, 8, dtype=torch.long)
    ddf = torch.full((1, 2, 8, 8), 20.0)  # samples entirely outside the image
    assert torch.all(warp_labels(lab, ddf, padding_mode="zeros") == 0)
    assert torch.all(warp_labels(lab, ddf) == 1)  # border padding replicates
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 7\)"):
        warp_labels(lab[..., :7], ddf)
