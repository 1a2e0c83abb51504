"""Hand-computed checks of bundle.metrics (2D and 3D)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bundle.evaluate import registration_metrics
from bundle.fields import jacobian_determinant, spacing_from_affine
from bundle.metrics import (
    dice_per_label,
    displacement_error_mm,
    folding_percent,
    hd95_per_label,
    mean_dice,
    normalized_mutual_information,
    sd_log_jacobian,
)
from bundle.resample import warp_labels

from conftest import affine_ddf

# ----------------------------------------------------------------------------- Dice


def _two_rectangles():
    pred = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[:, 0, 0:4, 0:4] = 1  # 16 voxels
    target[:, 0, 2:6, 0:4] = 1  # 16 voxels, 8 shared
    pred[:, 0, 8:10, 0:5] = 2  # 10 voxels
    target[:, 0, 8:9, 0:5] = 2  # 5 voxels, all shared
    pred[1, 0, 11, 11] = 3  # label 3: only in the prediction of case 1
    return pred, target


def test_dice_known_overlaps():
    pred, target = _two_rectangles()
    dice = dice_per_label(pred, target, labels=(1, 2, 3))
    assert dice.shape == (2, 3)
    assert dice[0, 0].item() == pytest.approx(2 * 8 / 32)
    assert dice[0, 1].item() == pytest.approx(2 * 5 / 15)
    assert math.isnan(dice[0, 2].item())  # absent from both -> nan
    assert dice[1, 2].item() == 0.0  # false positive only -> 0
    assert torch.allclose(dice[1, :2], dice[0, :2])
    assert dice_per_label(pred, target, labels=(1, 2, 3), empty_value=1.0)[0, 2].item() == 1.0
    md = mean_dice(pred, target, labels=(1, 2, 3))
    assert md[0].item() == pytest.approx((0.5 + 2 / 3) / 2)  # nan skipped
    assert md[1].item() == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    # single label, float input (rounded), order of labels respected
    assert dice_per_label(pred.float(), target.float(), labels=(2,))[0, 0].item() == pytest.approx(2 / 3)
    assert dice_per_label(pred, target, labels=(2, 1))[0].tolist() == pytest.approx([2 / 3, 0.5])


def test_dice_3d_identity_and_shape_errors():
    lab = torch.randint(0, 4, (1, 1, 8, 9, 10))
    assert torch.allclose(dice_per_label(lab, lab), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 9, 10\)"):
        dice_per_label(lab, lab[..., :5])
    with pytest.raises(ValueError, match=r"\(1, 2, 8, 9, 10\)"):
        dice_per_label(lab.repeat(1, 2, 1, 1, 1), lab.repeat(1, 2, 1, 1, 1))


# ----------------------------------------------------------------------------- HD95


@pytest.mark.parametrize("dims", [2, 3])
def test_hd95_shifted_squares(dims):
    shape = (24,) * dims
    a = torch.zeros(1, 1, *shape, dtype=torch.long)
    b = torch.zeros_like(a)
    sl = (slice(5, 15),) * dims
    a[(0, 0, *sl)] = 1
    b[(0, 0, slice(8, 18), *sl[1:])] = 1  # shifted by 3 voxels along axis 0
    spacing = [2.0, 0.7, 1.3][:dims]
    hd = hd95_per_label(a, b, labels=(1,), spacing=spacing)
    assert hd.shape == (1, 1)
    assert hd.item() == pytest.approx(3 * spacing[0], rel=1e-5)
    assert hd95_per_label(a, b, labels=(1,)).item() == pytest.approx(3.0, rel=1e-5)
    assert hd95_per_label(a, a, labels=(1,), spacing=spacing).item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(hd95_per_label(a, b, labels=(2,)).item())  # absent from both


@pytest.mark.parametrize("dims", [2, 3])
def test_folding_of_known_folded_field(dims):
    n = 30
    shape = (n,) * dims
    x0 = torch.arange(n, dtype=torch.float64)
    a, b = 10, 16
    # phi(x) = x, then slope -1 on [a, b], then slope +1: continuous, reverses order on [a, b]
    phi = torch.where(x0 <= a, x0, torch.where(x0 <= b, 2 * a - x0, x0 - 2 * (b - a)))
    u0 = (phi - x0).view(n, *([1] * (dims - 1)))
    rows = slice(5, 20)  # fold only within these indices of axis 1
    ddf = torch.zeros(1, dims, *shape, dtype=torch.float64)
    ddf[(0, 0, slice(None), rows)] = u0.expand(n, *shape[1:])[(slice(None), rows)]
    det = jacobian_determinant(ddf)
    # central differences give det = 0 exactly at x = a and x = b, -1 inside, +1 elsewhere
    folded = (b - a + 1) * (rows.stop - rows.start) * n ** (dims - 2)
    assert folding_percent(ddf).item() == pytest.approx(100.0 * folded / n**dims)
    assert folding_percent(ddf.float()).item() == pytest.approx(100.0 * folded / n**dims)
    assert int((det <= 0).sum()) == folded
    # mask: the folded band only -> 100 %, the complement -> 0 %
    band = torch.zeros(1, 1, *shape, dtype=torch.bool)
    band[(0, 0, slice(a, b + 1), rows)] = True
    assert folding_percent(ddf, band).item() == pytest.approx(100.0)
    assert folding_percent(ddf, ~band).item() == 0.0
    assert folding_percent(torch.zeros(2, dims, *shape)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dims", [2, 3])
def test_sd_log_jacobian(dims):
    shape = (12,) * dims
    mat = np.diag([1.2, 0.9, 1.1][:dims])
    mat[0, 1] = 0.1
    ddf = affine_ddf(mat, shape).float()
    assert sd_log_jacobian(ddf).item() == pytest.approx(0.0, abs=1e-6)
    # two halves with det 2 and det 1 (a stretch along axis 0 on half of axis 1) -> std of {log 2, 0}
    ddf = torch.zeros(1, dims, *shape, dtype=torch.float64)
    ddf[0, 0, :, 6:] = torch.arange(12, dtype=torch.float64).view(12, *([1] * (dims - 1)))
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    mask[0, 0, :, 1:5] = True
    mask[0, 0, :, 7:11] = True  # away from the seam, where u0 jumps along axis 1
    assert sd_log_jacobian(ddf, mask).item() == pytest.approx(math.log(2) / 2, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(1, 1, 5\)"):
        sd_log_jacobian(ddf, torch.ones(1, 1, 5))


# ----------------------------------------------------------------------------- displacement error


def test_displacement_error_constant_offset_anisotropic():
    shape = (6, 7, 8)
    spacing = np.array([2.0, 0.5, 3.0])
    offset = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1, 1)
    gt = torch.randn(1, 3, *shape)
    ddf = gt + offset
    expected = math.sqrt((1 * 2.0) ** 2 + (2 * 0.5) ** 2 + (0.5 * 3.0) ** 2)  # sqrt(7.25)
    for a in (spacing, np.diag(np.append(spacing, 1.0))):
        err = displacement_error_mm(ddf, gt, a)
        assert err["mean"].item() == pytest.approx(expected, rel=1e-5)
        assert err["p95"].item() == pytest.approx(expected, rel=1e-5)
    # an oblique direction (rotation about axis 2, with a translation) keeps the norm
    c, s = math.cos(0.3), math.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = [-90, 12, 40]
    assert displacement_error_mm(ddf, gt, aff)["mean"].item() == pytest.approx(expected, rel=1e-5)
    assert spacing_from_affine(aff, 3) == pytest.approx(spacing.tolist())


def test_displacement_error_2d_mask_and_percentile():
    shape = (10, 10)
    aff = np.diag([0.5, 4.0, 1.0, 1.0])  # a 2D image with a 4x4 affine: top-left 2x2 used
    gt = torch.zeros(1, 2, *shape)
    ddf = torch.zeros(1, 2, *shape)
    ddf[0, 1, :5] = 1.0  # 1 voxel along axis 1 = 4 mm on the top half
    ddf[0, 0, 5:] = 2.0  # 2 voxels along axis 0 = 1 mm on the bottom half
    mask = torch.zeros(1, 1, *shape)
    mask[0, 0, :5] = 1
    err = displacement_error_mm(ddf, gt, aff, mask)
    assert err["mean"].item() == pytest.approx(4.0)
    assert displacement_error_mm(ddf, gt, aff, 1 - mask)["mean"].item() == pytest.approx(1.0)
    full = displacement_error_mm(ddf, gt, aff)
    assert full["mean"].item() == pytest.approx(2.5)
    assert full["p95"].item() == pytest.approx(4.0)
    # p95 follows numpy.percentile (linear interpolation)
    ddf = torch.rand(2, 2, *shape, dtype=torch.float64)
    err = displacement_error_mm(ddf, gt.double().expand(2, -1, -1, -1), [1.5, 0.5])
    for b in range(2):
        norms = np.linalg.norm(ddf[b].numpy() * np.array([1.5, 0.5])[:, None, None], axis=0)
        assert err["p95"][b].item() == pytest.approx(np.percentile(norms, 95), rel=1e-10)
        assert err["mean"][b].item() == pytest.approx(norms.mean(), rel=1e-10)
    with pytest.raises(ValueError, match=r"\(2, 2, 10, 9\)"):
        displacement_error_mm(ddf, ddf[..., :9], [1.5, 0.5])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        displacement_error_mm(ddf, ddf, [1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- NMI


def test_nmi_self_remap_and_independent():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 64, 64, 64, generator=g)
    b = torch.rand(1, 1, 64, 64, 64, generator=g)
    assert normalized_mutual_information(a, a).item() == pytest.approx(2.0, abs=1e-12)
    assert normalized_mutual_information(a, 3 * a + 5).item() == pytest.approx(2.0, abs=1e-6)
    nmi_ind = normalized_mutual_information(a, b).item()
    assert 1.0 <= nmi_ind < 1.01
    # 2D, batch, mask
    a2, b2 = a[:, :, 0], b[:, :, 0]
    both = normalized_mutual_information(torch.cat([a2, a2]), torch.cat([a2, b2]), bins=16)
    assert both[0].item() == pytest.approx(2.0) and 1.0 <= both[1].item() < 1.05
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., :32, :] = True
    mixed = a2.clone()
    mixed[..., 32:, :] = b2[..., 32:, :]
    assert normalized_mutual_information(a2, mixed, mask=mask).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\(1, 1, 64, 63\)"):
        normalized_mutual_information(a2, a2[..., :63])


# ----------------------------------------------------------------------------- summary


def test_registration_metrics_keys_and_values():
    shape = (20, 20, 20)
    fixed_label = torch.zeros(1, 1, *shape, dtype=torch.long)
    fixed_label[0, 0, 4:16, 4:16, 4:16] = 1
    fixed_label[0, 0, 7:13, 7:13, 7:13] = 2
    fixed_label[0, 0, 9:11, 9:11, 9:11] = 3
    ddf = torch.zeros(1, 3, *shape)
    gt = torch.zeros_like(ddf)
    gt[:, 0] = 1.0
    aff = np.diag([1.5, 1.0, 2.0, 1.0])
    img = torch.rand(1, 1, *shape)
    m = registration_metrics(fixed_label, fixed_label, ddf, gt_ddf=gt, affine=aff, warped=img, fixed=img)
    assert list(m) == [
        "dice_1",
        "dice_2",
        "dice_3",
        "dice_mean",
        "hd95_mean",
        "folding_percent",
        "sdlogj",
        "disp_error_mean_mm",
        "disp_error_p95_mm",
        "nmi",
    ]
    assert all(isinstance(v, float) for v in m.values())
    assert m["dice_mean"] == 1.0 and m["hd95_mean"] == 0.0
    assert m["folding_percent"] == 0.0 and m["sdlogj"] == 0.0
    assert m["disp_error_mean_mm"] == pytest.approx(1.5) and m["disp_error_p95_mm"] == pytest.approx(1.5)
    assert m["nmi"] == pytest.approx(2.0)
    # optional parts omitted; a warped label shifted by one voxel along axis 2 (2 mm)
    moved = warp_labels(fixed_label, torch.zeros(1, 3, *shape).index_fill_(1, torch.tensor([2]), 1.0))
    m2 = registration_metrics(moved, fixed_label, ddf, affine=aff, labels=(1, 2))
    assert set(m2) == {"dice_1", "dice_2", "dice_mean", "hd95_mean", "folding_percent", "sdlogj"}
    assert m2["dice_1"] < 1.0 and m2["hd95_mean"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\(2, 3, 20, 20, 20\)"):
        registration_metrics(fixed_label, fixed_label, ddf.expand(2, -1, -1, -1, -1))
