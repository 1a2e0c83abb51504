"""bundle/networks/affine_head.py: AffineHead starts at the identity; the affine algebra it re-exports (affine_to_ddf)."""

import pytest
import torch
from monai.networks.blocks import Warp

from bundle.networks import AffineHead, affine_to_ddf

torch.manual_seed(0)


def test_affine_ddf_translation_moves_image_by_known_voxels():
    theta = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]])
    ddf = affine_to_ddf(theta, (20, 24))
    assert torch.allclose(ddf[0, 0], torch.full((20, 24), 3.0)) and torch.allclose(ddf[0, 1], torch.full((20, 24), -2.0))
    img = torch.zeros(1, 1, 20, 24)
    img[0, 0, 10, 12] = 1
    warped = Warp(mode="nearest")(img, ddf)
    assert warped[0, 0, 7, 14] == 1  # warped(x) = img(x + ddf)


def test_affine_ddf_rotation_about_centre():
    c, s = torch.cos(torch.tensor(0.3)), torch.sin(torch.tensor(0.3))
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]])
    ddf = affine_to_ddf(theta, (21, 21))
    assert ddf[0, :, 10, 10].abs().max() < 1e-6  # the centre is fixed
    with pytest.raises(ValueError, match="theta"):
        affine_to_ddf(theta, (21, 21, 21))


def test_affine_head_starts_at_identity_and_scales_translation():
    head = AffineHead(2, 8)
    theta = head(torch.rand(1, 8, 4, 4), (32, 32))
    assert torch.allclose(theta, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    with torch.no_grad():
        head.fc.bias[2] = 0.5  # translation along axis 0, fraction of the half size
    assert torch.isclose(head(torch.rand(1, 8, 4, 4), (32, 32))[0, 0, 2], torch.tensor(8.0))


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 24, 32))])
def test_affine_head_translation_bias_is_a_fraction_of_each_half_size(dims, size):
    head = AffineHead(dims, 6, hidden_channels=8)
    feats = torch.rand(2, 6, *[s // 8 for s in size])
    eye = torch.cat([torch.eye(dims), torch.zeros(dims, 1)], dim=1).expand(2, dims, dims + 1)
    assert torch.equal(head(feats, size), eye)
    with torch.no_grad():
        for axis in range(dims):
            head.fc.bias[axis * (dims + 1) + dims] = 0.5  # row `axis`, translation column
        head.fc.bias[0] = 0.1  # M[0, 0]
    theta = head(feats, size)
    assert theta.shape == (2, dims, dims + 1)
    assert torch.allclose(theta[:, :, dims], torch.tensor([s / 4.0 for s in size]).expand(2, dims))
    assert torch.allclose(theta[:, 0, 0], torch.full((2,), 1.1))


def test_affine_head_sees_where_features_are():
    # CoordConv: with trained (here random) weights, moving a feature blob moves the regressed translation
    head = AffineHead(2, 4, hidden_channels=8)
    with torch.no_grad():
        head.fc.weight.normal_(std=1.0)
    feats = torch.zeros(1, 4, 8, 8)
    feats[:, :, 1:3, 1:3] = 1.0
    a, b = head(feats, (64, 64)), head(torch.roll(feats, (4, 4), dims=(2, 3)), (64, 64))
    assert float((a - b).abs().max()) > 1e-3


def test_centered_grid_is_symmetric_about_the_centre():
    from bundle.networks import centered_grid

    grid = centered_grid((3, 4))
    assert grid.shape == (2, 3, 4)
    assert torch.equal(grid[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(grid[1, 0], torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    assert float(grid.sum()) == 0.0
