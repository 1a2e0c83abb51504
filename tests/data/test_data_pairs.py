"""The seeded pair generator: the ground truth undoes the deformation (2D and 3D)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from monai.networks.blocks import Warp

from bundle.data import pairs, templates
from bundle.data.grid import axial_slice, resample_to_spacing
from bundle.data.templates import load_spm_templates
from bundle.fields import jacobian_determinant

# The SPM templates come from spm-runtime, installed apart from the extras (--no-deps).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("spm_runtime") is None,
    reason="needs spm-runtime: pip install --no-deps spm-runtime matlab-runtime",
)

SPACING = 4.0  # 46x55x46 voxels: fast, still anatomical


def warp(image: np.ndarray, ddf: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Warp a spatial-first array with MONAI ``Warp`` (border padding), as the networks do."""
    block = Warp(mode=mode, padding_mode="border")
    with torch.no_grad():
        image_t = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
        return block(image_t, torch.as_tensor(ddf, dtype=torch.float32)[None])[0, 0].numpy()


def mean_dice(a: np.ndarray, b: np.ndarray, labels=(1, 2, 3)) -> float:
    """Mean Dice over ``labels``."""
    return float(np.mean([2.0 * np.sum((a == k) & (b == k)) / max(np.sum(a == k) + np.sum(b == k), 1) for k in labels]))


@pytest.fixture(scope="module", params=[(2, "t2"), (2, "flair"), (3, "pd"), (3, "t2")], ids=lambda p: f"{p[0]}d-{p[1]}")
def pair(request):
    dims, contrast = request.param
    return pairs.generate_pair(seed=7, contrast=contrast, spatial_dims=dims, spacing_mm=SPACING)


def test_shapes_and_types(pair):
    dims = pair.gt_ddf.shape[0]
    shape = pair.fixed.shape
    assert len(shape) == dims and shape[:2] == (46, 55)
    assert pair.moving.shape == pair.fixed_label.shape == pair.moving_label.shape == shape
    assert pair.gt_ddf.shape == (dims, *shape) and pair.gt_ddf.dtype == np.float32
    assert pair.fixed.dtype == pair.moving.dtype == np.float32
    assert pair.fixed_label.dtype == pair.moving_label.dtype == np.uint8
    assert set(np.unique(pair.fixed_label)) == {0, 1, 2, 3}
    assert 0.0 <= pair.moving.min() and pair.moving.max() <= 1.0
    assert pair.affine.shape == (4, 4)
    assert jacobian_determinant(torch.from_numpy(pair.gt_ddf)[None]).min() > 0


def test_ground_truth_warps_moving_back(pair):
    brain = pair.fixed_label > 0
    restored = warp(pair.moving, pair.gt_ddf)
    r_gt = np.corrcoef(restored[brain], pair.moving_undeformed[brain])[0, 1]
    r_identity = np.corrcoef(pair.moving[brain], pair.moving_undeformed[brain])[0, 1]
    assert r_gt > 0.98, r_gt
    assert r_identity < r_gt - 0.1


@pytest.mark.parametrize("dims", [2, 3])
def test_ground_truth_warps_labels_back(dims):
    # Nearest-neighbour resampling twice on a 4 mm grid costs a few % of Dice on thin CSF/GM,
    # most when the sampled affine shrinks the moving image; average over a few seeds.
    dice_gt, dice_identity = [], []
    for seed in (7, 8, 9):
        pair = pairs.generate_pair(seed, "t2", dims, SPACING)
        restored = np.rint(warp(pair.moving_label, pair.gt_ddf, mode="nearest")).astype(np.uint8)
        dice_gt.append(mean_dice(restored, pair.fixed_label))
        dice_identity.append(mean_dice(pair.moving_label, pair.fixed_label))
    assert np.mean(dice_gt) > 0.95 and min(dice_gt) > 0.93, dice_gt
    assert np.mean(dice_identity) < np.mean(dice_gt) - 0.1, (dice_identity, dice_gt)


@pytest.mark.parametrize("dims", [2, 3])
def test_reproducible_from_seed(dims):
    a = pairs.generate_pair(3, "t2", dims, 6.0)
    b = pairs.generate_pair(3, "t2", dims, 6.0)
    c = pairs.generate_pair(4, "t2", dims, 6.0)
    for name in ("moving", "moving_label", "gt_ddf"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name)), name
    np.testing.assert_array_equal(a.fixed, c.fixed)


def test_flair_jitter_depends_on_seed():
    a = pairs.generate_pair(3, "flair", 2, 6.0).moving_undeformed
    b = pairs.generate_pair(4, "flair", 2, 6.0).moving_undeformed
    assert not np.array_equal(a, b) and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_templates_share_the_generator_grid():
    volumes, affine = templates.source_volumes(6.0)
    shapes = {volumes[k].shape for k in ("t1", "t2", "pd", "csf", "grey", "white", "labels")}
    assert shapes == {(31, 37, 31)}
    np.testing.assert_allclose(np.diag(affine)[:3], [6.0, 6.0, 6.0])  # stored RAS
    # voxel centres of the coarse grid land on the 2 mm grid: same world space
    spm = load_spm_templates()
    coarse = affine @ np.array([10, 12, 14, 1.0])
    fine = np.linalg.solve(spm.affine, coarse)[:3]
    np.testing.assert_allclose(fine, np.round(fine), atol=1e-6)
    assert templates.source_volumes(6.0)[0] is volumes  # cached


def test_source_volumes_are_the_templates_stored_ras():
    volumes, affine = templates.source_volumes(2.0)
    spm = load_spm_templates()
    for ijk in ([10, 20, 30], [45, 54, 45], [80, 100, 60]):
        world = affine @ np.array([*ijk, 1.0])
        i, j, k = np.rint(np.linalg.solve(spm.affine, world)[:3]).astype(int)
        assert volumes["t2"][tuple(ijk)] == spm.t2[i, j, k]


def test_resample_to_spacing_keeps_world_position():
    spm = load_spm_templates()
    coarse, affine = resample_to_spacing(spm.t1, spm.affine, 4.0)
    idx = np.array([23, 27, 23])
    fine = np.linalg.solve(spm.affine, affine @ np.append(idx, 1.0))[:3]
    assert np.all(np.abs(fine - np.round(fine)) < 1e-6)  # factor 2: aligned voxel centres
    same, same_affine = resample_to_spacing(spm.t1, spm.affine, 2.0)
    np.testing.assert_array_equal(same, spm.t1)
    np.testing.assert_allclose(same_affine, spm.affine)


def test_2d_pair_is_an_axial_slice():
    pair = pairs.generate_pair(0, "t2", 2, SPACING)
    volumes, affine = templates.source_volumes(SPACING)
    assert pair.slice_index == templates.default_slice_index(SPACING)
    brain_area = (volumes["labels"] > 0).sum(axis=(0, 1))
    assert brain_area[pair.slice_index] == brain_area.max()
    expected, expected_affine = axial_slice(volumes["t1"], affine, pair.slice_index)
    np.testing.assert_array_equal(pair.fixed, expected)
    np.testing.assert_allclose(pair.affine, expected_affine)
    world_z = (pair.affine @ np.array([0, 0, 0, 1.0]))[2]
    assert world_z == pytest.approx(affine[2, 3] + affine[2, 2] * pair.slice_index)
    other = pairs.generate_pair(0, "t2", 2, SPACING, slice_index=5)
    assert other.slice_index == 5 and not np.array_equal(other.fixed, pair.fixed)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="contrast"):
        pairs.generate_pair(0, "dwi")
    with pytest.raises(ValueError, match="spatial_dims"):
        pairs.generate_pair(0, "t2", spatial_dims=4)
    with pytest.raises(ValueError, match="slice index"):
        pairs.generate_pair(0, "t2", 2, SPACING, slice_index=999)
