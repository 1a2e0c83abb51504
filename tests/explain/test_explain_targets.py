"""Explained scalars: affine decomposition round trips, target registry, gradients at the identity."""

import math

import pytest
import torch

from bundle.explain.targets import (
    affine_parameter_names,
    compose_affine,
    decompose_affine,
    expand_target_names,
    make_target,
    target_names,
)
from bundle.networks.regnet import RegistrationOutput, StageResult


def test_decompose_2d_recovers_known_rotation_scale_shear_translation():
    theta = compose_affine(
        torch.tensor([[3.0, -2.0]]), torch.tensor([math.radians(12.0)]), torch.tensor([[1.1, 0.9]]), torch.tensor([[0.05]])
    )
    p = decompose_affine(theta, spacing_mm=2.0)
    assert math.degrees(float(p["rotation"])) == pytest.approx(12.0, abs=1e-4)
    assert float(p["scale_x"]) == pytest.approx(1.1, abs=1e-5) and float(p["scale_y"]) == pytest.approx(0.9, abs=1e-5)
    assert float(p["shear_xy"]) == pytest.approx(0.05, abs=1e-5)
    assert float(p["translation_x"]) == 3.0 and float(p["translation_y"]) == -2.0
    assert float(p["translation_x_mm"]) == 6.0 and float(p["translation_y_mm"]) == -4.0
    assert set(affine_parameter_names(2)) <= set(p)


def test_decompose_3d_round_trip_and_known_single_axis_rotation():
    torch.manual_seed(0)
    t = torch.randn(4, 3)
    angles = (torch.rand(4, 3) - 0.5) * 0.6
    scales = 1 + (torch.rand(4, 3) - 0.5) * 0.3
    shears = (torch.rand(4, 3) - 0.5) * 0.2
    p = decompose_affine(compose_affine(t, angles, scales, shears).double())
    assert torch.allclose(torch.stack([p["rotation_x"], p["rotation_y"], p["rotation_z"]], 1), angles.double(), atol=1e-5)
    assert torch.allclose(torch.stack([p[f"scale_{a}"] for a in "xyz"], 1), scales.double(), atol=1e-5)
    assert torch.allclose(torch.stack([p[n] for n in ("shear_xy", "shear_xz", "shear_yz")], 1), shears.double(), atol=1e-5)
    assert torch.allclose(torch.stack([p[f"translation_{a}"] for a in "xyz"], 1), t.double())
    # a pure 20 degree rotation about the z (superior) axis, in the axial x-y plane
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    theta = torch.tensor([[[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    q = decompose_affine(theta)
    assert math.degrees(float(q["rotation_z"])) == pytest.approx(20.0, abs=1e-4)
    assert abs(float(q["rotation_x"])) < 1e-6 and abs(float(q["rotation_y"])) < 1e-6
    assert all(float(q[f"scale_{a}"]) == pytest.approx(1.0, abs=1e-6) for a in "xyz")


def test_reflection_shows_as_negative_last_scale():
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]])
    p = decompose_affine(theta)
    assert float(p["scale_x"]) == pytest.approx(1.0) and float(p["scale_y"]) == pytest.approx(-1.0)


def test_gradient_is_finite_at_the_identity():
    theta = torch.eye(3, 4)[None].clone().requires_grad_(True)
    p = decompose_affine(theta)
    total = sum(v.sum() for v in p.values())
    (grad,) = torch.autograd.grad(total, theta)
    assert torch.isfinite(grad).all()


def test_bad_theta_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, dims, dims \+ 1\)"):
        decompose_affine(torch.zeros(1, 2, 2))


def _output(dims, ddf_def):
    b = ddf_def.shape[0]
    theta = torch.eye(dims, dims + 1).expand(b, -1, -1)
    z = torch.zeros_like(ddf_def)
    img = torch.zeros(b, 1, *ddf_def.shape[2:])
    return RegistrationOutput(StageResult(theta, z, ddf_def, ddf_def, z, img, img))


def test_displacement_targets_mean_rms_roi_and_mm():
    ddf = torch.zeros(1, 2, 8, 8)
    ddf[:, 0, :4] = 3.0  # half of the grid moves 3 voxels along x
    out, img = _output(2, ddf), torch.zeros(1, 1, 8, 8)
    roi = torch.zeros(8, 8)
    roi[:4] = 1
    assert float(make_target("displacement", 2)(out, img, img)) == pytest.approx(1.5, abs=1e-4)
    assert float(make_target("displacement_rms", 2)(out, img, img)) == pytest.approx(math.sqrt(4.5), abs=1e-4)
    assert float(make_target("displacement_roi_mm", 2, spacing_mm=2.0, roi_mask=roi)(out, img, img)) == pytest.approx(6.0, abs=1e-4)


def test_target_registry_and_errors():
    assert len(expand_target_names("affine", 3)) == 12 and len(expand_target_names("affine", 2)) == 6
    assert "translation_x_mm" in expand_target_names("affine_mm", 2)
    assert "rotation_z" in target_names(3) and "rotation" in target_names(2)
    with pytest.raises(ValueError, match="unknown target 'rotation_q'"):
        expand_target_names(["rotation_q"], 3)
    with pytest.raises(ValueError, match="needs spacing_mm"):
        make_target("displacement_mm", 2)
    with pytest.raises(ValueError, match="needs a roi_mask"):
        make_target("displacement_roi", 2)
    with pytest.raises(ValueError, match="non-empty"):
        make_target("displacement_roi", 2, roi_mask=torch.zeros(4, 4))


def test_similarity_target_is_the_training_similarity_per_item():
    """``similarity`` is minus the MI term that ``RegistrationLoss`` optimises, one value per pair."""
    from bundle.losses import RegistrationLoss
    from bundle.losses.mutual_information import SparseMutualInformationLoss

    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(2, 1, 16, 16, generator=g)
    warped = torch.stack([fixed[0], torch.rand(1, 16, 16, generator=g)])  # item 0 aligned, item 1 noise
    z = torch.zeros(2, 2, 16, 16)
    theta = torch.eye(2, 3).expand(2, -1, -1)
    out = RegistrationOutput(StageResult(theta, z, z, z, z, warped, warped))
    value = make_target("similarity", 2)(out, warped, fixed)
    assert value.shape == (2,) and float(value[0]) > float(value[1]) + 0.5
    loss = RegistrationLoss(spatial_dims=2, similarity="mi")
    assert loss.mi.num_bins == 32
    for i in range(2):
        expected = -SparseMutualInformationLoss(num_bins=loss.mi.num_bins)(warped[i : i + 1], fixed[i : i + 1])
        assert float(value[i]) == pytest.approx(float(expected), rel=1e-5)
