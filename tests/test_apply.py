"""Register once, apply anywhere: inverse outputs, transform.h5, the apply command, points.

A T2 image rotated 10 degrees and shifted 6 mm is registered to the T1 template at 4 mm
through ``configs/inference.json``; the moving image lies on a grid of its own (3 mm, other
origin), so that fields on the moving grid are told apart from fields on the fixed grid. The
saved outputs are then read by SimpleITK and ANTs and applied through ``configs/apply.json``
and ``python -m bundle apply``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT, composed, run_bundle

VOXEL_MM = 4.0
ANGLE, SHIFT = 10.0, np.array([6.0, 0.0, 0.0])


def _rotation(dims: int) -> np.ndarray:
    r = math.radians(ANGLE)
    rot = np.eye(dims)
    rot[:2, :2] = [[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]]
    return rot


def _moved_on_grid(image, affine, grid_affine, grid_shape, centre):
    """``image`` moved by ``y = c + R (x - c) + s``, sampled on another grid (so moving(y) = image(x))."""
    from bundle.resample import grid_world_points, sample_at_world

    dims = image.ndim
    rot, shift = _rotation(dims), SHIFT[:dims]
    pts = grid_world_points(grid_affine, grid_shape, dtype=torch.float64).reshape(dims, -1).numpy()
    source = np.linalg.inv(rot) @ (pts - centre[:, None] - shift[:, None]) + centre[:, None]
    out = sample_at_world(torch.from_numpy(image.astype(np.float64))[None], affine, torch.from_numpy(source).reshape(dims, *grid_shape))
    return out[0].numpy().astype(np.float32)


def _true_fixed_point(y, centre):
    """Where moving point ``y`` (``(N, dims)`` RAS) lies in the fixed image."""
    dims = y.shape[1]
    rot, shift = _rotation(dims), SHIFT[:dims]
    return (np.linalg.inv(rot) @ (y.T - centre[:, None] - shift[:, None]) + centre[:, None]).T


def _save(path, array, affine, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), str(path))
    return str(path)


def _apply(*args, check=True):
    return run_bundle("run", "--config_file", "configs/apply.json", *args, check=check)


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bundle", "apply", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64).squeeze()


@pytest.fixture(scope="module")
def reg3d(tmp_path_factory):
    """The 3D pair, its registration output folder and the facts needed to check it."""
    from bundle.data.templates import source_volumes
    from bundle.resample import grid_world_points

    volumes, affine = source_volumes(VOXEL_MM)
    folder = tmp_path_factory.mktemp("apply3d")
    centre = grid_world_points(affine, volumes["t1"].shape, dtype=torch.float64).reshape(3, -1).mean(1).numpy()
    grid = np.diag([3.0, 3.0, 3.0, 1.0])
    grid[:3, 3] = affine[:3, 3] - 6.0
    shape = tuple(int(round(s * VOXEL_MM / 3.0)) + 4 for s in volumes["t1"].shape)
    moving = _moved_on_grid(volumes["t2"], affine, grid, shape, centre)
    labels = _moved_on_grid((volumes["labels"] == 3).astype(np.float32), affine, grid, shape, centre) > 0.5  # one tissue, moved
    paths = {
        "fixed": _save(folder / "t1.nii.gz", volumes["t1"], affine),
        "moving": _save(folder / "t2_moved.nii.gz", moving, grid),
        "moving_label": _save(folder / "t2_label.nii.gz", labels.astype(np.uint8), grid, np.uint8),
    }
    out = folder / "reg"
    run_bundle(
        "run", "--config_file", composed("inference.json"), "--fixed", paths["fixed"], "--moving", paths["moving"],
        "--moving_label", paths["moving_label"], "--output_dir", str(out),
    )
    brain = volumes["labels"] > 0
    return {**paths, "out": out, "folder": folder, "centre": centre, "affine": affine, "grid": grid, "shape": shape, "brain": brain}


def test_inverse_outputs_and_consistency(reg3d):
    out = reg3d["out"]
    for name in ("ddf_inverse_mm.nii.gz", "transform.h5", "transform_inverse.h5"):
        assert (out / name).is_file(), name
    inv = nib.load(str(out / "ddf_inverse_mm.nii.gz"))
    assert inv.shape[:3] == reg3d["shape"] and np.allclose(inv.affine, reg3d["grid"])  # on the moving grid
    ic = json.loads((out / "metrics.json").read_text())["inverse_consistency_mm"]
    print(f"inverse consistency: {ic}")
    assert ic["voxels"] > 1000 and ic["mean"] < 0.1 * VOXEL_MM and ic["p99"] < 0.5 * VOXEL_MM


def test_simpleitk_and_ants_resample_with_transform_h5_like_warped_moving(reg3d):
    import ants
    import SimpleITK as sitk

    out = reg3d["out"]
    fixed = sitk.ReadImage(reg3d["fixed"], sitk.sitkFloat32)
    moving = sitk.ReadImage(reg3d["moving"], sitk.sitkFloat32)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_moving.nii.gz")))
    inside = sitk.GetArrayFromImage(sitk.ReadImage(reg3d["fixed"])) > 0.1 * reference.max()

    def agree(array, name):
        corr = np.corrcoef(array[inside], reference[inside])[0, 1]
        rel = np.abs(array - reference)[inside].mean() / np.abs(reference[inside]).mean()
        assert corr > 0.999 and rel < 0.01, f"{name}: correlation {corr:.5f}, mean relative difference {rel:.4f}"

    for name in ("transform.h5", "ddf_mm.nii.gz"):
        if name.endswith(".h5"):
            tfm = sitk.ReadTransform(str(out / name))
        else:
            tfm = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / name), sitk.sitkVectorFloat64))
        agree(sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tfm, sitk.sitkLinear, 0.0)), f"SimpleITK {name}")
    warped = ants.apply_transforms(ants.image_read(reg3d["fixed"]), ants.image_read(reg3d["moving"]), [str(out / "transform.h5")])
    agree(warped.numpy().transpose(2, 1, 0), "ANTs transform.h5")  # ANTs arrays are (x, y, z)


def test_transform_files_map_points_forward_and_back(reg3d):
    """transform.h5 maps fixed points to moving points, transform_inverse.h5 back, within half a voxel."""
    import SimpleITK as sitk

    out = reg3d["out"]
    fwd, inv = sitk.ReadTransform(str(out / "transform.h5")), sitk.ReadTransform(str(out / "transform_inverse.h5"))
    rng = np.random.default_rng(0)
    idx = np.argwhere(reg3d["brain"])[rng.choice(int(reg3d["brain"].sum()), 50, replace=False)]
    x = (reg3d["affine"][:3, :3] @ idx.T).T + reg3d["affine"][:3, 3]
    flip = np.array([-1.0, -1.0, 1.0])
    y = np.array([flip * np.array(fwd.TransformPoint(tuple(flip * p))) for p in x])
    back = np.array([flip * np.array(inv.TransformPoint(tuple(flip * p))) for p in y])
    assert np.linalg.norm(back - x, axis=1).max() < 0.5 * VOXEL_MM
    # ITK itself reads the same file and maps the points the same way
    import itk

    by_itk = itk.transformread(str(out / "transform.h5"))[0]
    y_itk = np.array([flip * np.array(list(by_itk.TransformPoint([float(v) for v in flip * p]))) for p in x])
    assert np.abs(y_itk - y).max() < 1e-6
    # and transform.h5 agrees with the known motion (fixed x -> moving c + R (x - c) + s) within a voxel
    truth = (_rotation(3) @ (x - reg3d["centre"]).T).T + reg3d["centre"] + SHIFT
    err = np.linalg.norm(y - truth, axis=1)
    print(f"transform.h5 vs known motion: mean {err.mean():.2f} mm, max {err.max():.2f} mm")
    assert err.mean() < VOXEL_MM


def test_apply_image_forward_reproduces_the_registration_and_inverse_returns(reg3d, tmp_path):
    out = reg3d["out"]
    _apply("--transform_dir", str(out), "--image", reg3d["moving"], "--output", str(tmp_path / "w.nii.gz"))
    assert np.array_equal(_load(tmp_path / "w.nii.gz"), _load(out / "warped_moving.nii.gz"))
    _apply("--transform_dir", str(out), "--image", reg3d["moving_label"], "--interp", "label", "--output", str(tmp_path / "l.nii.gz"))
    assert np.array_equal(_load(tmp_path / "l.nii.gz"), _load(out / "warped_moving_label.nii.gz"))
    # the warped image carried back into the moving space matches the moving image inside the brain
    _apply("--transform_dir", str(out), "--image", str(tmp_path / "w.nii.gz"), "--inverse", "true", "--output", str(tmp_path / "back.nii.gz"))
    back_img = nib.load(str(tmp_path / "back.nii.gz"))
    assert back_img.shape == reg3d["shape"] and np.allclose(back_img.affine, reg3d["grid"])
    moving, back = _load(reg3d["moving"]), _load(tmp_path / "back.nii.gz")
    label = _load(reg3d["moving_label"]) > 0
    assert np.corrcoef(moving[label], back[label])[0, 1] > 0.9
    # nearest keeps the label values and type
    _apply("--transform_dir", str(out), "--image", reg3d["moving_label"], "--interp", "nearest", "--output", str(tmp_path / "n.nii.gz"))
    nearest = nib.load(str(tmp_path / "n.nii.gz"))
    assert nearest.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(nearest.dataobj))) <= {0, 1}


def test_points_forward_match_the_known_motion_and_return_with_inverse(reg3d, tmp_path):
    """Moving-space points land where the known motion puts them; forward then inverse returns them."""
    rng = np.random.default_rng(1)
    from bundle.resample import grid_world_points

    x = grid_world_points(reg3d["affine"], reg3d["brain"].shape, dtype=torch.float64).reshape(3, -1).numpy().T[reg3d["brain"].reshape(-1)]
    x = x[rng.choice(len(x), 20, replace=False)]
    y = (_rotation(3) @ (x - reg3d["centre"]).T).T + reg3d["centre"] + SHIFT  # the same anatomy in the moving image
    csv = tmp_path / "points.csv"
    csv.write_text("name,x_ras,y_ras,z_ras\n" + "".join(f"p{i},{a:.4f},{b:.4f},{c:.4f}\n" for i, (a, b, c) in enumerate(y)))
    proc = _cli("--transform_dir", str(reg3d["out"]), "--points", str(csv), "--output", str(tmp_path / "fixed.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    mapped = np.loadtxt(tmp_path / "fixed.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
    assert (tmp_path / "fixed.csv").read_text().splitlines()[1].startswith("p0,")
    err = np.linalg.norm(mapped - x, axis=1)
    print(f"points vs known motion: mean {err.mean():.2f} mm, max {err.max():.2f} mm")
    assert err.mean() < VOXEL_MM
    proc = _cli("--transform_dir", str(reg3d["out"]), "--points", str(tmp_path / "fixed.csv"), "--inverse", "--output", str(tmp_path / "back.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    back = np.loadtxt(tmp_path / "back.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
    assert np.linalg.norm(back - y, axis=1).max() < 0.5 * VOXEL_MM
    # the same points in LPS with plain x,y,z columns give the same result, in LPS
    lps = tmp_path / "lps.csv"
    lps.write_text("x,y,z\n" + "".join(f"{-a:.4f},{-b:.4f},{c:.4f}\n" for a, b, c in y))
    _apply("--transform_dir", str(reg3d["out"]), "--points", str(lps), "--output", str(tmp_path / "lps_out.csv"))
    lps_out = np.loadtxt(tmp_path / "lps_out.csv", delimiter=",", skiprows=1)
    assert np.allclose(lps_out * [-1.0, -1.0, 1.0], mapped, atol=1e-3)
    # antsApplyTransformsToPoints with transform_inverse.h5 moves the points the same way
    import ants
    import pandas as pd

    frame = pd.DataFrame(y * [-1.0, -1.0, 1.0], columns=["x", "y", "z"])
    by_ants = ants.apply_transforms_to_points(3, frame, [str(reg3d["out"] / "transform_inverse.h5")])
    # ITK interpolates the exported displacement on its own grid: agreement within 0.1 mm (1/40 voxel here)
    assert np.abs(by_ants[["x", "y", "z"]].values * [-1.0, -1.0, 1.0] - mapped).max() < 0.1


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for n in needles:
        assert n in last, last
    return last


def test_apply_bad_inputs_fail_with_one_line_and_write_nothing(reg3d, tmp_path):
    out, target = reg3d["out"], tmp_path / "never.nii.gz"
    # missing transform folder, and a folder without the fields
    _one_line_error(_apply("--transform_dir", str(tmp_path / "nope"), "--image", reg3d["moving"], "--output", str(target), check=False), "nope", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_apply("--transform_dir", str(empty), "--image", reg3d["moving"], "--output", str(target), check=False), "ddf_mm.nii.gz", "not found")
    # a foreign file in place of the field
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    _save(foreign / "ddf_mm.nii.gz", np.zeros((8, 8, 8)), np.eye(4))
    _one_line_error(_apply("--transform_dir", str(foreign), "--image", reg3d["moving"], "--output", str(target), check=False), "not a displacement field")
    # an image of another dimensionality
    flat = _save(tmp_path / "slice.nii.gz", np.random.default_rng(0).random((20, 20)), np.eye(4))
    _one_line_error(_apply("--transform_dir", str(out), "--image", flat, "--output", str(target), check=False), "slice.nii.gz", "expected 3D")
    assert not target.exists()
    # CSVs: missing columns, non-numeric values, points outside the field
    cases = {
        "cols.csv": ("x,y\n1,2\n", "missing coordinate column"),
        "text.csv": ("x,y,z\n1,2,3\n4,five,6\n", "line 3, column 'y': not a number"),
        "far.csv": ("x,y,z\n0,0,0\n900,0,0\n", "1 point(s) outside the transform's grid"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        proc = _cli("--transform_dir", str(out), "--points", str(tmp_path / name), "--output", str(tmp_path / f"out_{name}"))
        _one_line_error(proc, name, needle)
        assert not (tmp_path / f"out_{name}").exists()
    # an existing output is not replaced without --overwrite
    target.write_text("keep")
    _one_line_error(_apply("--transform_dir", str(out), "--image", reg3d["moving"], "--output", str(target), check=False), "already exists")
    assert target.read_text() == "keep"


def test_2d_registration_apply_and_points(tmp_path):
    """2D: inverse outputs, SimpleITK reads transform.h5, points round-trip, image apply."""
    import SimpleITK as sitk

    from bundle.data.grid import axial_slice
    from bundle.data.templates import default_slice_index, source_volumes
    from bundle.resample import grid_world_points, spatial_affine

    volumes, affine = source_volumes(2.0)
    k = default_slice_index(2.0)
    t1, a4 = axial_slice(volumes["t1"], affine, k)
    t2, _ = axial_slice(volumes["t2"], affine, k)
    a2 = spatial_affine(a4, 2)
    centre = grid_world_points(a2, t1.shape, dtype=torch.float64).reshape(2, -1).mean(1).numpy()
    moving = _moved_on_grid(t2, a2, a2, t1.shape, centre)
    fixed_path, moving_path = _save(tmp_path / "t1.nii.gz", t1, a4), _save(tmp_path / "t2.nii.gz", moving, a4)
    out = tmp_path / "out"
    run_bundle(
        "run", "--config_file", composed("inference.json"), "--spatial_dims", "2", "--checkpoint", "models/model_2d.pt",
        "--fixed", fixed_path, "--moving", moving_path, "--output_dir", str(out),
    )
    ic = json.loads((out / "metrics.json").read_text())["inverse_consistency_mm"]
    assert ic["mean"] < 0.1 * 2.0
    tfm = sitk.ReadTransform(str(out / "transform.h5"))
    warped = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(moving_path, sitk.sitkFloat32), sitk.ReadImage(fixed_path, sitk.sitkFloat32), tfm))
    reference = _load(out / "warped_moving.nii.gz").T  # SimpleITK arrays are (y, x)
    inside = t1.T > 0.1 * t1.max()
    assert np.corrcoef(warped[inside], reference[inside])[0, 1] > 0.999
    _apply("--transform_dir", str(out), "--image", moving_path, "--output", str(tmp_path / "w.nii.gz"))
    assert np.array_equal(_load(tmp_path / "w.nii.gz"), _load(out / "warped_moving.nii.gz"))
    pts = tmp_path / "p.csv"
    pts.write_text("x_ras,y_ras\n10,-20\n-15,5\n")
    _apply("--transform_dir", str(out), "--points", str(pts), "--output", str(tmp_path / "f.csv"))
    _apply("--transform_dir", str(out), "--points", str(tmp_path / "f.csv"), "--inverse", "true", "--output", str(tmp_path / "b.csv"))
    back = np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)
    assert np.abs(back - [[10, -20], [-15, 5]]).max() < 0.5 * 2.0
    truth = _true_fixed_point(np.array([[10.0, -20.0], [-15.0, 5.0]]), centre)
    assert np.linalg.norm(np.loadtxt(tmp_path / "f.csv", delimiter=",", skiprows=1) - truth, axis=1).max() < 2.0
