"""``bundle/inference.py``: ``PairRegistrar``'s pieces on tiny 2D arrays with known headers (no files, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.inference import PairRegistrar
from bundle.initialise import centre_of_mass_translation
from bundle.networks import RegistrationBundleNet

SHAPE = (24, 20)
SHIFT_MM = np.array([6.0, -4.0])  # moving world = fixed world + SHIFT_MM for the same array index


def _affine(origin) -> np.ndarray:
    a = np.diag([2.0, 2.0, 1.0])
    a[:2, 2] = origin
    return a


FIXED_AFFINE = _affine([-20.0, -10.0])
MOVING_AFFINE = _affine(np.array([-20.0, -10.0]) + SHIFT_MM)


def _blob(centre=(11.0, 9.0), sigma=3.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    return (100.0 * np.exp(-((i - centre[0]) ** 2 + (j - centre[1]) ** 2) / (2 * sigma**2))).astype(np.float32)


def _identity_network() -> RegistrationBundleNet:
    """Untrained tiny network whose deformable field is exactly zero (the affine head starts at the identity)."""
    torch.manual_seed(0)
    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8), affine_channels=8, integration_steps=3)
    torch.nn.init.zeros_(net.deformable_head.output.conv.weight)
    return net


def _registrar(**kwargs) -> PairRegistrar:
    net = _identity_network()
    return PairRegistrar(net, spacing_mm=2.0, size_divisor=net.size_divisor, **kwargs)


def test_scale_intensity_maps_percentiles_to_unit_range():
    reg = _registrar()
    array = np.linspace(0.0, 200.0, 1000, dtype=np.float32).reshape(40, 25)
    img = reg.scale_intensity(array)
    assert img.shape == (1, 40, 25) and img.dtype == torch.float32
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    lo, hi = np.percentile(array, [0.5, 99.5])
    np.testing.assert_allclose(img[0].numpy(), np.clip((array - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_scale_intensity_falls_back_to_min_max_when_the_percentile_range_collapses():
    array = np.zeros((32, 32), dtype=np.float32)
    array[3, 4] = 5.0  # one voxel of 1024: the 99.5th percentile is 0
    img = PairRegistrar(_identity_network()).scale_intensity(array)
    expected = np.zeros((32, 32), dtype=np.float32)
    expected[3, 4] = 1.0
    np.testing.assert_array_equal(img[0].numpy(), expected)


def test_scale_intensity_uses_the_given_transform():
    reg = _registrar(intensity=lambda x: x / 4.0)
    np.testing.assert_allclose(reg.scale_intensity(np.array([[0.0, 2.0], [4.0, 8.0]]))[0].numpy(), [[0.0, 0.5], [1.0, 2.0]])


def test_switches_are_parsed_and_checkpoints_loaded_lazily(tmp_path):
    reg = PairRegistrar(_identity_network(), checkpoint=tmp_path / "missing.pt", overwrite="false", initialise="off")
    assert reg.overwrite is False and reg.initialise is False and reg.dims == 2
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        reg.load_weights()
    with pytest.raises(ValueError, match="overwrite must be true or false, got 'maybe'"):
        PairRegistrar(_identity_network(), overwrite="maybe")


def test_initial_translation_is_the_centre_of_mass_offset():
    fixed, moving = _blob(sigma=2.0), _blob(centre=(13.0, 8.0), sigma=2.0)  # narrow: the grid edges cut off nothing
    t = _registrar().initial_translation(fixed, FIXED_AFFINE, moving, MOVING_AFFINE)
    np.testing.assert_allclose(t, SHIFT_MM + 2.0 * np.array([2.0, -1.0]), atol=1e-3)  # header shift + 2 mm voxels of blob motion
    np.testing.assert_allclose(t, centre_of_mass_translation(fixed, FIXED_AFFINE, moving, MOVING_AFFINE))


def test_initial_translation_is_zero_when_off_and_refuses_disjoint_images():
    reg = _registrar(initialise=False)
    np.testing.assert_array_equal(reg.initial_translation(_blob(), FIXED_AFFINE, _blob(), MOVING_AFFINE), [0.0, 0.0])
    far = _affine([500.0, -10.0])
    with pytest.raises(ValueError, match=r"^mov.nii and fix.nii: the images do not overlap in physical space \(x:"):
        reg.initial_translation(_blob(), FIXED_AFFINE, _blob(), far, names=("fix.nii", "mov.nii"))


def test_to_network_grid_covers_the_fixed_image_at_the_network_spacing():
    reg = _registrar()
    fixed = _blob()
    m, f, net_affine, net_shape = reg.to_network_grid(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, SHIFT_MM)
    assert net_shape == (24, 24)  # 24 x 20 voxels of 2 mm span 46 x 38 mm: 24 x 20 network voxels, padded to multiples of 8
    assert all(n % reg.size_divisor == 0 for n in net_shape)
    np.testing.assert_allclose(np.diag(net_affine)[:2], [2.0, 2.0])
    # the grid is centred on the fixed image: centre (-20 + 23, -10 + 19) mm
    np.testing.assert_allclose(net_affine[:2, :2] @ ((np.array(net_shape) - 1) / 2) + net_affine[:2, 2], [3.0, 9.0])
    assert m.shape == f.shape == (1, 1, *net_shape)
    assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    # the moving image, sampled at the grid points moved by the header shift, is the fixed image
    torch.testing.assert_close(m, f, atol=1e-5, rtol=0)
    # the fixed image sits in rows 0..23 and columns 2..21 of the grid (origin at -20, -14 mm)
    np.testing.assert_allclose(net_affine[:2, 2], [-20.0, -14.0])
    torch.testing.assert_close(f[0, 0, :, 2:22], reg.scale_intensity(fixed)[0], atol=1e-5, rtol=0)
    assert float(f[0, 0, :, :2].abs().max()) < 1e-6 and float(f[0, 0, :, 22:].abs().max()) < 1e-6  # zero padding


def test_register_arrays_with_an_identity_network_returns_the_initialisation():
    reg = _registrar()
    fixed = _blob()
    res = reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, inverse=True)
    assert res["ddf_mm"].shape == res["ddf_voxel"].shape == (2, *SHAPE)
    assert set(res["seconds"]) == {"preprocess", "network", "refine", "resample", "inverse"}
    assert all(v >= 0 for v in res["seconds"].values())
    np.testing.assert_allclose(res["initial_translation_mm"], SHIFT_MM, atol=1e-6)
    np.testing.assert_allclose(res["theta"], [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(res["affine_world"], [[1, 0, 6], [0, 1, -4], [0, 0, 1]], atol=1e-5)
    np.testing.assert_allclose(res["ddf_mm"], np.broadcast_to(SHIFT_MM[:, None, None], (2, *SHAPE)), atol=1e-4)
    np.testing.assert_allclose(res["ddf_voxel"], np.broadcast_to(SHIFT_MM[:, None, None] / 2.0, (2, *SHAPE)), atol=1e-4)
    np.testing.assert_allclose(res["warped"], fixed, atol=1e-3)  # moving through the field is the fixed image again
    np.testing.assert_allclose(res["ddf_inverse_mm"], np.broadcast_to(-SHIFT_MM[:, None, None], (2, *SHAPE)), atol=1e-4)
    assert res["refinement"] == {}


def test_register_arrays_without_initialisation_leaves_the_header_shift():
    reg = _registrar(initialise=False)
    fixed = _blob()
    res = reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, stage="affine")
    assert set(res["seconds"]) == {"preprocess", "network", "refine", "resample"} and "ddf_inverse_mm" not in res
    np.testing.assert_allclose(res["initial_translation_mm"], [0.0, 0.0])
    assert np.abs(res["ddf_mm"]).max() < 1e-4
    # warped(x) = moving at the fixed point x: the array moved by -SHIFT_MM / 2 mm = (-3, 2) voxels, zero outside
    expected = np.zeros_like(fixed)
    expected[3:, :-2] = fixed[:-3, 2:]
    np.testing.assert_allclose(res["warped"], expected, atol=1e-3)


def test_register_arrays_refuses_bad_requests():
    reg = _registrar()
    fixed = _blob()
    with pytest.raises(ValueError, match="stage must be 'full' or 'affine', got 'rigid'"):
        reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, stage="rigid")
    with pytest.raises(ValueError, match="refine=True needs a refiner"):
        reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, refine=True)
    with pytest.raises(ValueError, match="^small: image too small for the network: it spans 4x20 voxels"):
        reg.register_arrays(fixed[:4], FIXED_AFFINE, fixed, MOVING_AFFINE, names=("small", "moving"))
    d = reg.size_divisor  # a fixed image of exactly one coarsest network cell: refused before instance norm fails
    cell = np.zeros((d, d), dtype=np.float32)
    cell[d // 4: 3 * d // 4, d // 4: 3 * d // 4] = 1.0
    with pytest.raises(ValueError, match=rf"^cell: image too small for the network: its network grid is {d}x{d} voxels"):
        reg.register_arrays(cell, FIXED_AFFINE, fixed, MOVING_AFFINE, names=("cell", "moving"))
    reg.register_arrays(fixed, FIXED_AFFINE, cell, MOVING_AFFINE)  # a moving image that small is fine: the fixed sets the grid


def test_existing_results_are_kept_unless_overwrite(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds results \\(metrics.json\\); pass overwrite=True"):
        _registrar()._check_output_dir(tmp_path)
    _registrar(overwrite=True)._check_output_dir(tmp_path)


def test_keypoints_are_returned_in_world_coordinates_of_each_image(tmp_path):
    """Same array under a header shift: each moving keypoint is its fixed keypoint plus the shift, and the fit agrees."""
    from bundle.keypoints import read_keypoints, world_to_voxel, write_keypoints

    torch.manual_seed(0)
    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8), affine="keypoints", num_keypoints=5)
    reg = PairRegistrar(net, spacing_mm=2.0, size_divisor=net.size_divisor)
    fixed = _blob()
    assert "keypoints" not in reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE)  # only when asked
    res = reg.register_arrays(fixed, FIXED_AFFINE, fixed, MOVING_AFFINE, keypoints=True)
    kp = res["keypoints"]
    assert kp["fixed_ras"].shape == kp["moving_ras"].shape == (5, 2) and kp["weight"].shape == (5,)
    np.testing.assert_allclose(kp["moving_ras"] - kp["fixed_ras"], np.broadcast_to(SHIFT_MM, (5, 2)), atol=1e-4)
    np.testing.assert_allclose(kp["residual_mm"], 0.0, atol=1e-3)
    np.testing.assert_allclose(res["affine_world"], [[1, 0, 6], [0, 1, -4], [0, 0, 1]], atol=1e-4)
    fixed_vox = world_to_voxel(kp["fixed_ras"], np.array([[2.0, 0, 0, -20.0], [0, 2.0, 0, -10.0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    moving_vox = world_to_voxel(kp["moving_ras"], np.array([[2.0, 0, 0, -14.0], [0, 2.0, 0, -14.0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    np.testing.assert_allclose(fixed_vox, moving_vox, atol=1e-4)  # the same voxels of the same array
    assert (fixed_vox > -8).all() and (fixed_vox < np.array(SHAPE) + 8).all()  # on the (padded) network grid
    path = write_keypoints(tmp_path / "keypoints.csv", kp)
    back = read_keypoints(path, 2)
    np.testing.assert_allclose(back["fixed"], kp["fixed_ras"], atol=1e-5)
    np.testing.assert_allclose(back["moving"], kp["moving_ras"], atol=1e-5)
