"""``bundle.fields``: world-space maps, inverses and inverse consistency, on known fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.fields import (
    affine_to_ddf,
    apply_affine,
    compose_affine_ddf,
    compose_ddf,
    compose_theta,
    inverse_consistency_mm,
    invert_displacement,
    jacobian_determinant,
    linear_part,
    lps_flip,
    ras_to_lps,
    spacing_from_affine,
)
from bundle.resample import grid_world_points

from conftest import affine_ddf


def _smooth_field(shape, amplitude=1.5):
    axes = torch.meshgrid(*[torch.linspace(0, np.pi, s) for s in shape], indexing="ij")
    return torch.stack([amplitude * torch.sin(a + k) for k, a in enumerate(axes)])[None]


def test_fixed_point_inverse_composes_to_the_identity():
    from monai.networks.blocks import Warp

    u = _smooth_field((24, 20, 16))
    v = invert_displacement(u)
    residual = compose_ddf(u, v, Warp(mode="bilinear", padding_mode="border"))  # x + v(x), then u
    inner = residual[:, :, 3:-3, 3:-3, 3:-3].abs().max()
    assert inner < 0.05, f"|u(x + v(x)) + v(x)| up to {float(inner):.3f} voxels"


@pytest.mark.parametrize("dims", [2, 3])
def test_exact_affine_composition_equals_resampling_inside_and_extends_the_affine_outside(dims):
    from monai.networks.blocks import Warp

    shape = (20, 18, 16)[:dims]
    theta = torch.cat([torch.eye(dims) + 0.05 * torch.randn(dims, dims, generator=torch.Generator().manual_seed(1)),
                       torch.tensor([1.5, -2.0, 0.5][:dims]).view(dims, 1)], 1)[None]
    first = affine_to_ddf(theta, shape)
    second = _smooth_field(shape, amplitude=1.0)
    exact = compose_affine_ddf(theta, first, second)
    resampled = compose_ddf(first, second, Warp(mode="bilinear", padding_mode="border"))
    inner = tuple(slice(2, -2) for _ in shape)  # where x + second(x) stays on the grid, bilinear is exact for a linear field
    torch.testing.assert_close(exact[(..., *inner)], resampled[(..., *inner)], atol=1e-4, rtol=0)
    # everywhere, also where x + second(x) leaves the grid: second(x) + first(x) + (M - I) second(x)
    expected = second + first + torch.einsum("ij,bj...->bi...", theta[0, :, :dims] - torch.eye(dims), second)
    torch.testing.assert_close(exact, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_composed_theta_is_warping_by_the_first_then_the_second(dims):
    from monai.networks.blocks import Warp

    shape = (32, 32, 24)[:dims]
    c, s = np.cos(np.deg2rad(15)), np.sin(np.deg2rad(15))
    rot = torch.eye(dims)
    rot[:2, :2] = torch.tensor([[c, -s], [s, c]])
    first = torch.cat([rot, torch.zeros(dims, 1)], 1)[None]  # turns about the grid centre, then ...
    second = torch.cat([1.1 * torch.eye(dims), torch.tensor([3.0, -2.0, 1.0][:dims]).view(dims, 1)], 1)[None]  # ... scales and shifts
    image = _smooth_field(shape)[:, :1]
    warp = Warp(mode="bilinear", padding_mode="border")
    twice = warp(warp(image, affine_to_ddf(first, shape)), affine_to_ddf(second, shape))
    once = warp(image, affine_to_ddf(compose_theta(first, second), shape))
    inner = tuple(slice(n // 4, -(n // 4)) for n in shape)  # points that stay on the grid in between
    reverse = warp(image, affine_to_ddf(compose_theta(second, first), shape))
    error = (once - twice)[(..., *inner)].abs().max()
    assert error < 0.05 and error < 0.25 * (reverse - twice)[(..., *inner)].abs().max()  # bilinear resampling twice vs once


def test_inverse_consistency_of_an_exact_affine_pair_is_zero():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (10, 12, 8)
    a = np.eye(4)
    a[:3, 3] = [3.0, -1.0, 2.0]
    a[0, 1] = 0.05
    x = grid_world_points(affine, shape)
    forward = apply_affine(a, x) - x
    inverse = apply_affine(np.linalg.inv(a), x) - x  # the moving grid is the same grid here
    ic = inverse_consistency_mm(forward, affine, inverse, affine)
    assert ic["voxels"] > 0 and ic["max"] < 1e-4
    # and a wrong inverse is measured as wrong
    assert inverse_consistency_mm(forward, affine, -inverse * 0.5, affine)["mean"] > 1.0


def test_ras_to_lps_flips_x_and_y():
    a = np.eye(4)
    a[:3, 3] = [1.0, 2.0, 3.0]
    assert np.allclose(ras_to_lps(a)[:3, 3], [-1.0, -2.0, 3.0])
    assert np.allclose(lps_flip(2), np.diag([-1.0, -1.0]))


# ----------------------------------------------------------------------------- Jacobian


@pytest.mark.parametrize("dims", [2, 3])
def test_jacobian_of_affine_field(dims):
    rng = np.random.default_rng(dims)
    mat = np.eye(dims) + 0.2 * rng.standard_normal((dims, dims))
    shape = (9, 11, 7)[:dims]
    ddf = affine_ddf(mat, shape)
    expected = float(np.linalg.det(mat))
    for t in (ddf, ddf.float()):
        det = jacobian_determinant(t)
        assert det.shape == (1, 1, *shape)
        assert torch.allclose(det.double(), torch.full_like(det.double(), expected), atol=1e-5)
    # spacing does not change the determinant (similarity transform)
    det_sp = jacobian_determinant(ddf, spacing=[0.5, 2.0, 3.0][:dims])
    assert torch.allclose(det_sp, torch.full_like(det_sp, expected), atol=1e-10)
    # batch of two, second one with a reflection
    flip = mat.copy()
    flip[0] *= -1
    det2 = jacobian_determinant(torch.cat([ddf, affine_ddf(flip, shape)]))
    assert torch.allclose(det2[1], torch.full_like(det2[1], -expected), atol=1e-10)


def test_jacobian_matches_numpy_gradient():
    rng = np.random.default_rng(0)
    ddf = rng.standard_normal((3, 6, 7, 8))
    det = jacobian_determinant(torch.as_tensor(ddf)[None])[0, 0].numpy()
    jac = np.stack([np.stack(np.gradient(ddf[i]), 0) for i in range(3)], 0) + np.eye(3)[:, :, None, None, None]
    expected = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    np.testing.assert_allclose(det, expected, atol=1e-10)


def test_jacobian_singleton_axis_and_errors():
    ddf = torch.zeros(1, 3, 5, 6, 1)
    assert torch.all(jacobian_determinant(ddf) == 1)
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 6, 1\)"):
        jacobian_determinant(torch.zeros(1, 2, 5, 6, 1))


def test_spacing_and_linear_part_of_oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 1.5, 3.0])
    aff[:3, 3] = [-90, 12, 40]
    assert spacing_from_affine(aff, 3) == pytest.approx([0.8, 1.5, 3.0])
    assert spacing_from_affine(aff, 2) == pytest.approx([0.8, 1.5])
    assert torch.equal(linear_part(2.0, 2, 3), torch.eye(2, dtype=torch.float64).expand(3, 2, 2) * 2)
    with pytest.raises(ValueError, match="3 voxel spacings"):
        linear_part([1.0, 2.0], 3, 1)
