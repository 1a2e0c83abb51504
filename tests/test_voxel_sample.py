"""``bundle.voxel_sample``: the sampled maps equal the dense ones at the sampled voxels (2D and 3D)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.blocks import DVF2DDF, Warp

from bundle.fields import affine_to_ddf, compose_ddf
from bundle.networks.deformable_head import field_to_ddf
from bundle.voxel_sample import VoxelSample


@pytest.mark.parametrize("size", [(32, 28), (20, 24, 16)])
@pytest.mark.parametrize("share", [3, 20])  # a third of the grid (the field upsampled whole) or a twentieth (at the points)
def test_sampled_maps_equal_the_dense_maps(size, share):
    g = torch.Generator().manual_seed(len(size))
    d = len(size)
    image = torch.rand(1, 1, *size, generator=g)
    theta = torch.cat([torch.eye(d) + 0.05 * torch.randn(d, d, generator=g), torch.randn(d, 1, generator=g)], 1)[None]
    velocity = 0.5 * torch.randn(1, d, *[s // 4 for s in size], generator=g)
    integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")
    warp = Warp(mode="bilinear", padding_mode="zeros")
    deformable = field_to_ddf(velocity, size, integrate)
    n = math.prod(size) // share
    vs = VoxelSample(size, n, seed=1)
    assert vs.index.shape == (n,) and len(set(vs.index.tolist())) == n
    flat = vs.index.clone()
    for axis in reversed(range(d)):  # the points are the voxels of the flat indices
        assert torch.equal(vs.points[:, axis].long(), flat % size[axis])
        flat = flat // size[axis]
    # the coarse field upsampled at the samples, as field_to_ddf does on the whole grid
    torch.testing.assert_close(vs.field_at(integrate(velocity)), vs.values(deformable).transpose(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(vs.field_at(integrate(velocity), channels_first=True), vs.values(deformable), atol=1e-5, rtol=0)
    # the affine map alone: exactly Warp(affine_to_ddf)
    dense_affine = warp(image, affine_to_ddf(theta, size))
    torch.testing.assert_close(vs.sample(image, vs.affine_positions(theta)), vs.values(dense_affine), atol=1e-5, rtol=0)
    # deformable then affine: compose_ddf clamps the affine field at the border, the samples do not;
    # they agree wherever the deformed point stays inside the grid
    dense = warp(image, compose_ddf(affine_to_ddf(theta, size), deformable, Warp(mode="bilinear", padding_mode="border")))
    y = vs.points[None] + vs.field_at(integrate(velocity))
    sampled = vs.sample(image, vs.affine_positions(theta, y))
    inside = ((y >= 0) & (y <= torch.as_tensor(size) - 1)).all(dim=-1)
    assert inside.float().mean() > 0.6
    torch.testing.assert_close(sampled[:, :, inside[0]], vs.values(dense)[:, :, inside[0]], atol=1e-5, rtol=0)
    # the same map with the affine part computed once (what a deformable refinement level evaluates)
    torch.testing.assert_close(vs.sample_grid(image, vs.affine_grid(theta)((y - vs.points[None]).transpose(1, 2))), sampled, atol=1e-5, rtol=0)


def test_all_voxels_when_the_sample_is_larger_than_the_grid():
    vs = VoxelSample((4, 5), 100)
    assert torch.equal(vs.index, torch.arange(20))
    image = torch.arange(20.0).view(1, 1, 4, 5)
    torch.testing.assert_close(vs.sample(image, vs.points[None]), image.flatten(2))
    outside = vs.sample(image, vs.points[None] + 10.0)
    assert torch.all(outside == 0)


def test_a_masked_sample_draws_from_the_mask_only():
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[1:4, 2:6] = True  # 12 voxels
    everything = VoxelSample((6, 7), None, mask=mask)
    assert torch.equal(everything.index, torch.nonzero(mask.reshape(-1))[:, 0])
    some = VoxelSample((6, 7), 5, seed=3, mask=mask)
    assert len(some.index) == 5 and bool(mask.reshape(-1)[some.index].all())
    assert torch.equal(VoxelSample((6, 7), 50, mask=mask).index, everything.index)
    with pytest.raises(ValueError, match="does not match"):
        VoxelSample((6, 8), None, mask=mask)
