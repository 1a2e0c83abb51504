"""The ITK-slice benchmark's ground truth (skipped when Debian's insighttoolkit5-examples is not installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.itk_slices import CENTRE, MOTIONS, Slices, data_available, run_method, score

pytestmark = pytest.mark.skipif(not data_available(), reason="apt-get install insighttoolkit5-examples for the ITK slices")

SHIFTED, ROTATED = "BrainProtonDensitySliceShifted13x17y.png", "BrainProtonDensitySliceRotated10.png"


@pytest.fixture(scope="module")
def slices() -> Slices:
    return Slices()


@pytest.mark.parametrize("name", sorted(MOTIONS))
def test_ground_truth_maps_unmoved_slice_onto_moved_one(slices, name):
    assert slices.check(name) > 0.99


def test_wrong_sign_does_not_match(slices, monkeypatch):
    monkeypatch.setitem(MOTIONS, SHIFTED, (0.0, (-13.0, -17.0)))
    assert slices.check(SHIFTED) < 0.9


def _identity_error(slices, name) -> float:
    ddf, warped = run_method("identity", slices, name, {}, None, 1)
    return score(slices, slices.ground_truth(name), ddf, warped)["disp_error_mean_mm"]


def test_identity_error_is_the_documented_shift(slices):
    assert _identity_error(slices, SHIFTED) == pytest.approx(math.hypot(13.0, 17.0), abs=1e-6)


def test_identity_error_is_the_documented_rotation(slices):
    # a rotation by 10 degrees moves a point at distance r from the centre by 2 r sin(5 deg)
    x, y = np.meshgrid(np.arange(181) + 20.0, np.arange(217) + 20.0, indexing="ij")  # fixed pixels in the moved frame
    r = np.hypot(x - CENTRE[0], y - CENTRE[1])[slices.mask]
    expected = float(np.mean(2 * r * math.sin(math.radians(5.0))))
    assert _identity_error(slices, ROTATED) == pytest.approx(expected, rel=1e-6)


def test_millimetre_slices_are_refined_at_their_own_resolution(slices, tmp_path):
    """``monai.bundle run`` on 1 mm slices: ``refine_upsample auto`` refines on a 1 mm grid and
    recovers ITK's 10-degree rotation + (13, 16) mm shift within 0.15 mm, where refining on the
    2 mm network grid stops near 0.4 mm (measured 0.08 and 0.38 mm)."""
    import json

    import nibabel as nib

    from conftest import composed, run_bundle

    name = "BrainProtonDensitySliceR10X13Y17.png"
    paths = slices.write_nifti(tmp_path / "nifti")
    errors = {}
    for upsample in ("auto", "1"):
        out = tmp_path / upsample
        run_bundle(
            "run", "--config_file", composed("inference.json"), "--spatial_dims", "2", "--checkpoint", "models/model_2d.pt",
            "--fixed", str(paths["BrainT1Slice.png"]), "--moving", str(paths[name]), "--output_dir", str(out), "--refine_upsample", upsample,
        )
        data = np.asarray(nib.load(str(out / "ddf_mm.nii.gz")).dataobj, dtype=np.float64)
        ddf_mm = np.moveaxis(data.reshape(*data.shape[:2], -1)[..., :2], -1, 0) * np.array([-1.0, -1.0]).reshape(2, 1, 1)  # LPS -> RAS
        errors[upsample] = score(slices, slices.ground_truth(name), ddf_mm, slices.fixed)["disp_error_mean_mm"]
        assert json.loads((out / "metrics.json").read_text())["refinement"].get("upsample", 1) == (2 if upsample == "auto" else 1)
    print(f"R10X13Y17 mean error mm: {errors}")
    assert errors["auto"] < 0.15 and errors["1"] > 2 * errors["auto"], errors
