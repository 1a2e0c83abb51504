"""``bundle/initialise.py``: centres of mass in world mm on non-unit, flipped grids; overlap and size checks."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.initialise import centre_of_mass_translation, check_network_size, check_overlap, intensity_centre_mm


def _blob(shape, centre_vox, sigma_vox) -> np.ndarray:
    axes = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return np.exp(-sum((a - c) ** 2 / (2 * s**2) for a, c, s in zip(axes, centre_vox, sigma_vox)))


def test_centre_of_a_single_voxel_is_its_world_position():
    img = np.zeros((6, 7, 8), dtype=np.float32)
    img[1, 5, 2] = 3.0
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -4.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(intensity_centre_mm(img, affine), affine[:3, :3] @ [1, 5, 2] + affine[:3, 3])


def test_the_minimum_is_background_not_mass():
    """A constant offset (or negative background) does not pull the centre to the middle of the grid."""
    img = np.full((10, 10), -50.0)
    img[2, 3] = img[2, 5] = 10.0
    np.testing.assert_allclose(intensity_centre_mm(img, np.eye(3)), [2.0, 4.0])


def test_constant_image_has_no_centre():
    with pytest.raises(ValueError, match=r"image of shape \(4, 5\) has no intensity above its minimum"):
        intensity_centre_mm(np.ones((4, 5)), np.eye(3))


def test_known_mm_offset_is_recovered_on_anisotropic_flipped_grids():
    """Fixed grid 1.5 x 2.5 x 3 mm with x flipped; moving grid 2 x 2 x 2 mm elsewhere; the blob moves by a known mm offset."""
    fixed_affine = np.array([[-1.5, 0, 0, 40.0], [0, 2.5, 0, -30.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
    moving_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    moving_affine[:3, 3] = [-12.0, -25.0, -18.0]
    centre_mm = np.array([20.0, -5.0, 4.0])
    offset_mm = np.array([7.3, -4.1, 2.6])

    def blob_at(world, affine, shape):
        idx = np.linalg.solve(affine[:3, :3], world - affine[:3, 3])
        return _blob(shape, idx, 6.0 / np.abs(np.diag(affine[:3, :3])))  # 6 mm wide whatever the spacing

    fixed = blob_at(centre_mm, fixed_affine, (32, 20, 16))
    moving = blob_at(centre_mm + offset_mm, moving_affine, (32, 28, 24))
    np.testing.assert_allclose(intensity_centre_mm(fixed, fixed_affine), centre_mm, atol=0.05)
    t = centre_of_mass_translation(fixed, fixed_affine, moving, moving_affine)
    assert np.all(np.abs(t - offset_mm) < 0.5 * 1.5), t  # within half of the smallest voxel
    np.testing.assert_allclose(t, offset_mm, atol=0.05)


def test_translation_in_2d_is_moving_minus_fixed():
    fixed = np.zeros((16, 16))
    fixed[4, 6] = 1.0
    moving = np.zeros((16, 16))
    moving[10, 3] = 1.0
    a = np.diag([0.5, 2.0, 1.0])
    np.testing.assert_allclose(centre_of_mass_translation(fixed, a, moving, a), [3.0, -6.0])


def test_disjoint_extents_raise_naming_both_images_and_the_axis():
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])  # y extent [0, 38] mm
    moving_affine = fixed_affine.copy()
    moving_affine[1, 3] = -100.0  # y extent [-100, -62] mm
    with pytest.raises(ValueError) as exc:
        check_overlap(fixed_affine, (20, 20, 20), moving_affine, (20, 20, 20), ("fixed.nii.gz", "moving.nii.gz"))
    msg = str(exc.value)
    assert msg.startswith("moving.nii.gz and fixed.nii.gz: the images do not overlap in physical space")
    assert "(y: moving [-100.0, -62.0] mm, fixed [0.0, 38.0] mm)" in msg
    assert "--initialise true" in msg and "\n" not in msg


def test_touching_and_flipped_extents_overlap():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    touching = a.copy()
    touching[0, 3] = 38.0  # x [38, 76] meets [0, 38]
    check_overlap(a, (20, 20, 20), touching, (20, 20, 20))
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    flipped[0, 3] = 30.0  # x [-8, 30] mm: the extent is the box of the voxel centres, whatever the axis sign
    check_overlap(a, (20, 20, 20), flipped, (20, 20, 20))
    flipped[0, 3] = -1.0  # x [-39, -1]
    with pytest.raises(ValueError, match=r"\(x: moving \[-39.0, -1.0\] mm, fixed \[0.0, 38.0\] mm\)"):
        check_overlap(a, (20, 20, 20), flipped, (20, 20, 20))


def test_network_size_counts_voxels_at_the_network_spacing():
    a = np.diag([1.0, 3.0, 1.0])  # 2D: 30 x 10 voxels span 29 x 27 mm: 15 x 14 voxels of 2 mm
    check_network_size((30, 10), a, 2.0, 14)
    with pytest.raises(ValueError, match=r"^moving.nii: image too small for the network: it spans 15x14 voxels at 2 mm, .* at least 16 per axis$"):
        check_network_size((30, 10), a, 2.0, 16, "moving.nii")
