"""Output files: displacement fields and affines that ITK reads with the meaning we intend."""

from __future__ import annotations

import itk
import numpy as np
import pytest

from bundle.fields import ras_to_lps, theta_to_world
from bundle.io import load_displacement, save_displacement, save_itk_affine


def _affine(dims):
    a = np.eye(4)
    a[0, 0], a[1, 1], a[2, 2] = -2.0, 1.5, 3.0  # LAS-like, anisotropic
    a[:3, 3] = [90.0, -126.0, -72.0]
    return a


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 8)])
def test_displacement_round_trip(tmp_path, shape):
    rng = np.random.default_rng(0)
    ddf = rng.normal(size=(len(shape), *shape))
    path = save_displacement(tmp_path / "ddf.nii.gz", ddf, _affine(len(shape)))
    back, aff = load_displacement(path)
    assert np.allclose(back, ddf, atol=1e-5) and np.allclose(aff, _affine(len(shape)))


def test_itk_reads_displacement_as_lps_millimetres(tmp_path):
    shape = (6, 5, 4)
    ddf = np.zeros((3, *shape))
    ddf[0] = 1.0  # +1 voxel along array axis 0, which is -x (L) in RAS: 2 mm towards Right... x decreases
    path = save_displacement(tmp_path / "ddf.nii.gz", ddf, _affine(3))
    field = itk.imread(str(path))
    vec = itk.array_from_image(field)  # (z, y, x, 3) in ITK physical (LPS) units
    # one voxel along axis 0 = -2 mm in RAS x = +2 mm in LPS x
    assert np.allclose(vec[..., 0], 2.0, atol=1e-5) and np.allclose(vec[..., 1:], 0.0, atol=1e-5)


def test_itk_reads_affine_transform_file(tmp_path):
    matrix = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.9]])
    path = save_itk_affine(tmp_path / "affine.tfm", matrix, np.array([1.0, -2.0, 3.0]))
    tfm = itk.transformread(str(path))[0]
    point = tfm.TransformPoint([10.0, 20.0, 30.0])
    assert np.allclose(list(point), matrix @ [10.0, 20.0, 30.0] + [1.0, -2.0, 3.0])


def test_theta_translation_becomes_lps_translation():
    net_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    theta = np.hstack([np.eye(3), np.array([[1.0], [0.0], [-2.0]])])  # voxels on a RAS grid
    lps = ras_to_lps(theta_to_world(theta, net_affine, (8, 8, 8)))
    mat, trans = lps[:3, :3], lps[:3, 3]
    assert np.allclose(mat, np.eye(3))
    assert np.allclose(trans, [-2.0, 0.0, -4.0])  # +2 mm R -> -2 mm in LPS x; -4 mm S stays
