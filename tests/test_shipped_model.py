"""The shipped 3D model (models/model.pt) on data whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_bundle import network_from_config

from benchmarks.affine_cascade import rotated_shifted

from conftest import ROOT

MODEL = ROOT / "models" / "model.pt"


@pytest.fixture(scope="module")
def registrar():
    from bundle.inference import PairRegistrar

    registrar = PairRegistrar(network_from_config(3), MODEL)
    registrar.load_weights()
    return registrar


@pytest.fixture(scope="module")
def templates():
    from bundle.data.templates import load_spm_templates

    return load_spm_templates()


def test_checkpoint_loads_weights_only():
    state = torch.load(MODEL, weights_only=True)
    assert MODEL.stat().st_size < 25 * 2**20
    assert any(k.startswith("deformable_head.") for k in state)


@pytest.mark.parametrize("shift", [(3, -2, 2), (0, 0, 3), (-4, 0, -3)])
def test_affine_stage_recovers_known_translation(registrar, templates, shift):
    affine = templates.affine
    moving = ndimage.shift(np.asarray(templates.t2), shift, order=1, mode="constant")
    res = registrar.register_arrays(np.asarray(templates.t1), affine, moving, affine, stage="affine")
    brain = templates.brain_mask
    # warped(x) = moving(x + u) = t2(x + u - shift)  =>  u = shift (voxels)
    found_vox = np.array([np.median(c[brain]) for c in res["ddf_voxel"]])
    assert np.linalg.norm(found_vox - np.array(shift)) < 1.0, (found_vox, shift)


def test_affine_stage_recovers_left_right_translation(registrar, templates):
    """What the shipped model does recover today: a translation along x within 0.5 voxel."""
    affine = templates.affine
    brain = templates.brain_mask
    for shift in (3, -4):
        moving = ndimage.shift(np.asarray(templates.t2), (shift, 0, 0), order=1, mode="constant")
        res = registrar.register_arrays(np.asarray(templates.t1), affine, moving, affine, stage="affine")
        assert abs(np.median(res["ddf_voxel"][0][brain]) - shift) < 0.5


def test_network_alone_recovers_a_10_degree_rotation_and_a_6_mm_shift_within_one_voxel(registrar, templates):
    """Measured: 0.48 voxel (affine stage 0.60); 0.55 with the night head, 1.06 before the 2026-12-07 training, 4.48 with the regression head."""
    moving, expected = rotated_shifted(templates)
    res = registrar.register_arrays(np.asarray(templates.t1), templates.affine, moving, templates.affine)
    brain = templates.brain_mask
    error = np.linalg.norm(res["ddf_voxel"] - expected, axis=0)[brain]
    assert np.linalg.norm(expected, axis=0)[brain].mean() > 3.0  # the motion is several voxels
    assert error.mean() < 1.0, error.mean()


def test_network_alone_invents_little_motion_on_an_aligned_pair(registrar, templates):
    """Aligned T2/T1 templates: measured 0.35 voxel after the affine stage, 0.31 after the deformable
    stage (0.35 with the night head, 0.53 before it, 0.63 before the 2026-12-07 training)."""
    t1, aff = np.asarray(templates.t1), templates.affine
    res = registrar.register_arrays(t1, aff, np.asarray(templates.t2), aff)
    invented = np.linalg.norm(res["ddf_voxel"], axis=0)[templates.brain_mask].mean()
    assert invented < 0.9, invented


def test_a_second_keypoint_pass_reduces_the_error_of_a_large_rotation(registrar, templates):
    """Measured: -12 degrees + 8 mm, affine stage 0.82 -> 0.71 voxel with a second pass (1.41 -> 1.32 before the night heads)."""
    moving, expected = rotated_shifted(templates, -12.0, (-6.0, 3.0, 4.0))
    brain = templates.brain_mask
    errors, shipped = [], registrar.network.affine_passes
    try:
        for passes in (1, 2):
            registrar.network.affine_passes = passes
            res = registrar.register_arrays(np.asarray(templates.t1), templates.affine, moving, templates.affine, stage="affine")
            errors.append(np.linalg.norm(res["ddf_voxel"] - expected, axis=0)[brain].mean())
    finally:
        registrar.network.affine_passes = shipped
    assert errors[1] < errors[0] - 0.05 and errors[0] < 1.6, errors


def _inverse_consistency(registrar):
    from bundle.data.pairs import generate_pair
    from bundle.losses import inverse_consistency_error

    pair = generate_pair(123456, "t2", 3, 2.0)
    m, f, _, _ = registrar.to_network_grid(pair.fixed, pair.affine, pair.moving, pair.affine)
    with torch.no_grad():
        out = registrar.network.register(m, f)
    rms = float(inverse_consistency_error(out.forward.ddf, out.backward.ddf)) ** 0.5
    motion = float(out.forward.ddf.pow(2).sum(1).mean()) ** 0.5
    return rms, motion


def test_directions_are_inverse_consistent(registrar):
    """The two directions compose to far less than the motion itself (measured: 0.90 vs 8.9 voxels RMS)."""
    rms, motion = _inverse_consistency(registrar)
    assert motion > 1.0 and rms < 0.5 * motion, (rms, motion)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "deformable head under-trained: inverse-consistency residual 0.90 voxel RMS for 8.9 voxels of motion "
        "(affine stage alone 0.36); training the head alone with the inverse term reached 0.70 (model card, night II)"
    ),
)
def test_directions_are_inverse_consistent_within_half_a_voxel(registrar):
    rms, _ = _inverse_consistency(registrar)
    assert rms < 0.5


def test_model_beats_identity_on_held_out_pairs(registrar, tmp_path):
    from bundle.data.sample import ensure_sample_datalist
    from bundle.evaluate import evaluate_datalist

    datalist = ensure_sample_datalist(tmp_path / "s", spatial_dims=3, spacing_mm=2.0, n_train=0, n_val=0, n_test=2, seed=77)
    summary = evaluate_datalist(registrar, datalist, tmp_path / "eval")
    ident, full = summary["identity"], summary["full"]
    assert full["dice_mean"]["mean"] > ident["dice_mean"]["mean"] + 0.05
    assert full["disp_error_mean_mm"]["mean"] < ident["disp_error_mean_mm"]["mean"]
    assert full["folding_percent"]["mean"] < 0.1
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["pairs"] == 2


def test_demo_writes_registration_and_explanations(tmp_path):
    """The README's main job, end to end, on the embedded sample pair."""
    import os
    import subprocess
    import sys

    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "bundle", "demo", "--output_dir", str(out), "--sample_dir", str(tmp_path / "sample")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("warped_moving.nii.gz", "ddf_mm.nii.gz", "affine.tfm", "jacobian.nii.gz", "metrics.json", "overview.png", "keypoints.csv"):
        assert (out / name).is_file(), name
    expl = out / "explanations"
    assert (expl / "summary.png").is_file() and (expl / "explanations.json").is_file()
    maps = list(expl.glob("gradcam_*.nii.gz"))
    assert len(maps) >= 5 and len(list(expl.glob("gradcam_*.png"))) == len(maps)
    assert json.loads((out / "metrics.json").read_text())["dice_mean"] > 0.5
