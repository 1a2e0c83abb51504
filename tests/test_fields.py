"""``bundle.fields``: world-space maps, inverses and inverse consistency, on known fields."""

from __future__ import annotations

import numpy as np
import torch

from bundle.fields import apply_affine, compose_ddf, inverse_consistency_mm, invert_displacement, lps_flip, ras_to_lps
from bundle.resample import grid_world_points


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
