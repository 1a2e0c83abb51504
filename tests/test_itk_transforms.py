"""``bundle/itk_transforms.py``: the HDF5 layout written, read back with h5py, and points mapped by SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.itk_transforms import ITK_LAYOUT_VERSION, affine_step, field_step, save_composite_transform

h5py = pytest.importorskip("h5py")

FLIP3 = np.diag([-1.0, -1.0, 1.0])

# RAS fixed -> moving affine: a rotation about z, an anisotropic scale and a translation
AFFINE = np.array([[0.9, -0.2, 0.0, 5.0], [0.25, 1.1, 0.0, -3.0], [0.0, 0.1, 1.05, 2.0], [0, 0, 0, 1]])
# a 4 x 5 x 6 grid, 2 x 1.5 x 3 mm, x axis flipped
GRID = np.array([[-2.0, 0, 0, 10.0], [0, 1.5, 0, -7.0], [0, 0, 3.0, 4.0], [0, 0, 0, 1]])


def _field(shape=(4, 5, 6)) -> np.ndarray:
    """A displacement (RAS mm) whose every voxel and component differs: ``u_c(i, j, k) = (c + 1) * (0.1 i + 0.01 j + 0.001 k)``."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    base = 0.1 * i + 0.01 * j + 0.001 * k
    return np.stack([(c + 1) * base for c in range(3)])


def _read(path) -> dict:
    with h5py.File(path, "r") as f:
        g = f["TransformGroup"]
        out = {"itk": f["ITKVersion"][0].decode(), "groups": sorted(g.keys(), key=int)}
        for name in out["groups"]:
            out[name] = {"type": g[name]["TransformType"][0].decode()}
            if "TransformParameters" in g[name]:
                out[name]["params"] = g[name]["TransformParameters"][()]
                out[name]["fixed"] = g[name]["TransformFixedParameters"][()]
                out[name]["compression"] = g[name]["TransformParameters"].compression
        return out


def test_composite_layout_lists_the_steps_in_reverse_with_lps_parameters(tmp_path):
    u = _field()
    path = save_composite_transform(tmp_path / "transform.h5", [field_step(u, GRID), affine_step(AFFINE)])
    assert path == tmp_path / "transform.h5"
    f = _read(path)
    assert f["itk"] == ITK_LAYOUT_VERSION and f["groups"] == ["0", "1", "2"]
    assert f["0"]["type"] == "CompositeTransform_double_3_3"
    # ITK applies the last-listed transform first: the affine (applied last) comes first
    assert f["1"]["type"] == "AffineTransform_double_3_3"
    lps = np.eye(4)
    lps[:3, :3] = FLIP3
    lps = lps @ AFFINE @ lps
    np.testing.assert_array_equal(f["1"]["params"], np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]]))
    np.testing.assert_array_equal(f["1"]["params"][:9], [0.9, -0.2, -0.0, 0.25, 1.1, -0.0, -0.0, -0.1, 1.05])
    np.testing.assert_array_equal(f["1"]["params"][9:], [-5.0, 3.0, 2.0])
    np.testing.assert_array_equal(f["1"]["fixed"], [0.0, 0.0, 0.0])

    assert f["2"]["type"] == "DisplacementFieldTransform_double_3_3"
    assert f["2"]["params"].dtype == np.float64 and f["2"]["compression"] is None  # 360 values: stored plain
    buffer = f["2"]["params"].reshape(6, 5, 4, 3)  # (z, y, x, component), x fastest
    for i, j, k in [(0, 0, 0), (3, 1, 2), (1, 4, 5)]:
        np.testing.assert_allclose(buffer[k, j, i], FLIP3 @ u[:, i, j, k])
    fixed = f["2"]["fixed"]
    np.testing.assert_array_equal(fixed[:3], [4, 5, 6])  # size
    np.testing.assert_array_equal(fixed[3:6], [-10.0, 7.0, 4.0])  # origin, LPS
    np.testing.assert_array_equal(fixed[6:9], [2.0, 1.5, 3.0])  # spacing
    np.testing.assert_array_equal(fixed[9:].reshape(3, 3), np.diag([1.0, -1.0, 1.0]))  # direction, LPS: x flipped twice


def test_large_fields_are_compressed_and_2d_is_written_as_2d(tmp_path):
    big = np.zeros((3, 8, 8, 8))
    f = _read(save_composite_transform(tmp_path / "big.h5", [field_step(big, np.eye(4))]))
    assert f["groups"] == ["0", "1"] and f["1"]["compression"] == "gzip"
    grid2 = np.diag([2.0, 3.0, 1.0])
    u2 = np.stack([np.full((4, 5), 1.0), np.full((4, 5), -2.0)])
    f = _read(save_composite_transform(tmp_path / "t2.h5", [affine_step(np.eye(3)), field_step(u2, grid2)]))
    assert [f[g]["type"] for g in f["groups"]] == ["CompositeTransform_double_2_2", "DisplacementFieldTransform_double_2_2", "AffineTransform_double_2_2"]
    np.testing.assert_array_equal(f["1"]["params"].reshape(5, 4, 2)[0, 0], [-1.0, 2.0])  # RAS (1, -2) mm is LPS (-1, 2)
    np.testing.assert_array_equal(f["1"]["fixed"], [4, 5, 0, 0, 2, 3, -1, 0, 0, -1])


def test_simpleitk_maps_points_through_the_field_then_the_affine(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    u = _field()
    path = save_composite_transform(tmp_path / "transform.h5", [field_step(u, GRID), affine_step(AFFINE)])
    tfm = sitk.ReadTransform(str(path))
    for idx in [(0, 0, 0), (3, 1, 2), (2, 4, 5), (1, 2, 3)]:
        x = GRID[:3, :3] @ idx + GRID[:3, 3]  # a voxel centre: the field is sampled exactly there
        y = AFFINE[:3, :3] @ (x + u[(slice(None), *idx)]) + AFFINE[:3, 3]
        y_itk = FLIP3 @ np.array(tfm.TransformPoint(tuple(float(v) for v in FLIP3 @ x)))
        np.testing.assert_allclose(y_itk, y, atol=1e-9)


def test_simpleitk_reads_an_affine_only_composite(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    a2 = np.array([[1.0, 0.5, 3.0], [0.0, 2.0, -1.0], [0, 0, 1]])
    tfm = sitk.ReadTransform(str(save_composite_transform(tmp_path / "a.h5", [affine_step(a2), affine_step(np.linalg.inv(a2))])))
    np.testing.assert_allclose(tfm.TransformPoint((4.0, -7.0)), (4.0, -7.0), atol=1e-12)  # A^-1 after A
    one = sitk.ReadTransform(str(save_composite_transform(tmp_path / "b.h5", [affine_step(a2)])))
    x = np.array([4.0, -7.0])  # RAS
    y = a2[:2, :2] @ x + a2[:2, 2]
    np.testing.assert_allclose(-np.array(one.TransformPoint(tuple(-x))), y, atol=1e-12)
