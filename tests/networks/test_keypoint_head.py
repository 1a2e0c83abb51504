"""bundle/networks/keypoint_head.py: soft-argmax positions, the closed-form affine fit, the head in MultiModalRegNet."""

import math

import pytest
import torch

from bundle.fields import affine_to_ddf
from bundle.networks import KeypointAffineHead, MultiModalRegNet, fit_affine, soft_argmax

torch.manual_seed(0)


def _rotation_theta(dims: int, degrees: float, shift) -> torch.Tensor:
    a = math.radians(degrees)
    if dims == 2:
        m = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    else:
        m = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]]) * torch.tensor([1.05, 0.97, 1.0])
    return torch.cat([m, torch.tensor(shift, dtype=torch.float32)[:, None]], dim=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_fit_recovers_a_known_affine_from_exact_correspondences(dims):
    size = torch.tensor([40.0, 48.0, 36.0][:dims])
    theta = _rotation_theta(dims, 10.0, [3.0, -1.5, 2.0][:dims])
    fixed = (torch.rand(2, 24, dims) - 0.5) * size
    moving = fixed @ theta[:, :dims].T + theta[:, dims]
    fitted = fit_affine(fixed, moving, torch.ones(24), size / 2, ridge=1e-8)
    assert torch.allclose(fitted, theta.expand(2, -1, -1), atol=1e-3)


def test_fit_ignores_points_of_zero_weight_and_degenerate_sets_give_identity():
    theta = _rotation_theta(2, 10.0, [3.0, -1.5])
    fixed = (torch.rand(1, 12, 2) - 0.5) * 40
    moving = fixed @ theta[:, :2].T + theta[:, 2]
    moving[:, 0] += 25.0  # an outlier, given no weight
    w = torch.ones(12)
    w[0] = 0
    assert torch.allclose(fit_affine(fixed, moving, w, torch.tensor([20.0, 20.0]), ridge=1e-8)[0], theta, atol=1e-3)
    same = torch.zeros(1, 5, 2)  # all points at one place: no information, the ridge gives the identity
    eye = torch.cat([torch.eye(2), torch.zeros(2, 1)], dim=1)
    assert torch.allclose(fit_affine(same, same, torch.ones(5), torch.tensor([20.0, 20.0]))[0], eye, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_soft_argmax_of_a_sharp_peak_is_the_centre_of_its_cell_on_the_full_grid(dims):
    coarse, full = [8, 10, 6][:dims], [16, 20, 12][:dims]
    cell = [1, 7, 4][:dims]
    logits = torch.full((1, 1, *coarse), -1e4)
    logits[(0, 0, *cell)] = 0.0
    point = soft_argmax(logits, full)[0, 0]
    # coarse cell i covers full voxels 2i and 2i + 1: centre 2i + 0.5, centred by (S - 1) / 2
    expected = torch.tensor([2 * c + 0.5 - (s - 1) / 2 for c, s in zip(cell, full)])
    assert torch.allclose(point, expected, atol=1e-5)


@pytest.mark.parametrize("dims,size", [(2, (32, 40)), (3, (24, 32, 24))])
def test_identical_images_give_the_identity_and_gradients_reach_every_layer(dims, size):
    head = KeypointAffineHead(dims, 1, channels=(4, 8, 8, 8), num_keypoints=6)
    image = torch.rand(2, 1, *size)
    theta = head(image, image, size)
    eye = torch.cat([torch.eye(dims), torch.zeros(dims, 1)], dim=1)
    assert torch.allclose(theta, eye.expand(2, -1, -1), atol=1e-4)
    moved = torch.roll(image, 3, dims=2)
    head(moved, image, size).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in head.named_parameters()), [
        n for n, p in head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]


@pytest.mark.parametrize("dims,size,down", [(2, (32, 48), 0), (3, (32, 32, 32), 1)])
def test_affine_only_forward_has_no_deformable_field_and_shares_the_keypoints(dims, size, down):
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), input_downsample=down, affine="keypoints", num_keypoints=6)
    m, f = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    out = net(m, f, synthesis=False, deformable=False)
    for stage in (out.forward, out.backward):
        assert stage.ddf_deformable.abs().max() == 0
        assert torch.equal(stage.ddf, stage.ddf_affine)
        assert torch.allclose(stage.ddf, affine_to_ddf(stage.theta, size))
    # the same keypoint pass as the full forward's affine stage
    full = net(m, f, synthesis=False)
    assert torch.allclose(full.forward.theta, out.forward.theta, atol=1e-5)
    pm, pf = net.keypoints(m, f)
    assert pm.shape == (1, 6, dims) and torch.allclose(net.affine_head.fit(pf, pm, size), out.forward.theta, atol=1e-5)
    with pytest.raises(ValueError, match="keypoints"):
        MultiModalRegNet(dims, encoder_channels=(4, 8, 8))(m, f, synthesis=False, deformable=False)


def test_cascade_pass_composes_a_fit_to_the_points_of_the_warped_source():
    from bundle.fields import compose_theta

    size = (32, 48)
    torch.manual_seed(0)
    one = MultiModalRegNet(2, encoder_channels=(4, 8, 8), affine="keypoints", num_keypoints=6).eval()
    two = MultiModalRegNet(2, encoder_channels=(4, 8, 8), affine="keypoints", num_keypoints=6, affine_passes=2).eval()
    two.load_state_dict(one.state_dict())
    fixed = torch.rand(1, 1, *size)
    moving = torch.roll(fixed, (3, -2), dims=(2, 3))
    with torch.no_grad():
        theta1 = one(moving, fixed, synthesis=False, deformable=False).forward.theta
        out = two(moving, fixed, synthesis=False, deformable=False)
        warped = one.warp(moving, affine_to_ddf(theta1, size))
        pw, pf = one.keypoints(warped, fixed)
        expected = compose_theta(theta1, one.affine_head.fit(pf, pw, size))
        assert torch.allclose(out.forward.theta, expected, atol=1e-5)
        assert not torch.allclose(out.forward.theta, theta1, atol=1e-3)
        same = two(fixed, fixed, synthesis=False, deformable=False).forward.theta
    assert torch.allclose(same, torch.cat([torch.eye(2), torch.zeros(2, 1)], 1)[None], atol=1e-4)
    with pytest.raises(ValueError, match="affine_passes"):
        MultiModalRegNet(2, encoder_channels=(4, 8, 8), affine_passes=2)
