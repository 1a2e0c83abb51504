"""``bundle/evaluate.py``: the summary of hand-made rows, the identity method, and a tiny 2D datalist end to end."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.evaluate import METHODS, _identity_result, evaluate_datalist, summarise


def _row(method, contrast, dice, seconds, pair="p"):
    return {"pair": pair, "contrast": contrast, "method": method, "dice_mean": dice, "seconds": seconds, "flag": True, "note": "x"}


def test_summarise_means_and_medians_per_method_and_contrast():
    rows = [
        _row("identity", "t2", 0.2, 1.0),
        _row("identity", "flair", 0.4, 3.0),
        _row("identity", "t2", 0.9, 2.0),
        _row("full", "t2", 0.8, 10.0),
        _row("full", "t2", float("nan"), 20.0),  # a nan (e.g. no label) is skipped
    ]
    s = summarise(rows)
    assert list(s) == ["identity", "identity/t2", "identity/flair", "full", "full/t2"]
    assert s["identity"]["n"] == 3 and s["identity/t2"]["n"] == 2 and s["full"]["n"] == 2
    assert s["identity"]["dice_mean"]["mean"] == pytest.approx(0.5) and s["identity"]["dice_mean"]["median"] == pytest.approx(0.4)
    assert s["identity/t2"]["dice_mean"] == {"mean": pytest.approx(0.55), "median": pytest.approx(0.55)}
    assert s["identity/flair"]["seconds"] == {"mean": 3.0, "median": 3.0}
    assert s["full"]["dice_mean"] == {"mean": pytest.approx(0.8), "median": pytest.approx(0.8)}
    assert s["full"]["seconds"] == {"mean": 15.0, "median": 15.0}
    # strings and booleans are not metrics
    assert set(s["full"]) == {"n", "dice_mean", "seconds"}


def test_summarise_takes_a_metric_only_some_rows_have_over_those_rows():
    rows = [_row("full", "t2", 0.5, 1.0), {**_row("full", "t2", 0.7, 3.0), "disp_error_mean_mm": 2.0}, _row("full", "pd", 0.9, 5.0)]
    s = summarise(rows)  # the first row has no ground truth: its keys must not decide the metrics
    assert s["full"]["disp_error_mean_mm"] == {"mean": 2.0, "median": 2.0, "n": 1}
    assert s["full"]["dice_mean"] == {"mean": pytest.approx(0.7), "median": pytest.approx(0.7)}
    assert "disp_error_mean_mm" not in s["full/pd"] and s["full/t2"]["disp_error_mean_mm"]["n"] == 1


def test_summarise_of_nothing_is_empty_and_integers_count():
    assert summarise([]) == {}
    s = summarise([{"method": "affine", "contrast": "", "voxels": 3}, {"method": "affine", "contrast": "", "voxels": 4}])
    assert list(s) == ["affine", "affine/"] and s["affine"]["voxels"] == {"mean": 3.5, "median": 3.5}


def test_identity_result_resamples_the_moving_image_onto_the_fixed_grid():
    fixed = np.zeros((6, 5))
    moving = np.arange(8 * 7, dtype=np.float32).reshape(8, 7)
    fixed_affine = np.diag([2.0, 2.0, 1.0])
    moving_affine = np.diag([2.0, 2.0, 1.0])
    moving_affine[:2, 2] = [-2.0, -4.0]  # fixed voxel (i, j) is moving voxel (i + 1, j + 2)
    res = _identity_result(fixed, fixed_affine, moving, moving_affine)
    assert set(res) == {"ddf_mm", "ddf_voxel", "warped", "seconds"} and res["seconds"] == {}
    assert res["ddf_mm"].shape == res["ddf_voxel"].shape == (2, 6, 5) and not res["ddf_mm"].any()
    assert res["warped"].shape == (6, 5) and res["warped"].dtype == np.float32
    np.testing.assert_allclose(res["warped"], moving[1:7, 2:7], atol=1e-5)


# -- a 2D datalist end to end -------------------------------------------------------------------
SIZE = (32, 32)


def _labels(shift: int) -> np.ndarray:
    lab = np.zeros(SIZE, dtype=np.int16)
    lab[8:16, 8:20] = 1
    lab[16:24, 8:20] = 2
    lab[10:22, 22:28] = 3
    return np.roll(lab, shift, axis=0)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    items = []
    for k, (shift, contrast) in enumerate([(2, "t2"), (0, "flair")]):
        fixed_lab, moving_lab = _labels(0), _labels(shift)
        fixed = (0.2 + 0.8 * (fixed_lab == 3) + 0.4 * (fixed_lab == 2)).astype(np.float32)
        moving = (1.0 - 0.3 * moving_lab).astype(np.float32)
        d = root / f"pair{k}"
        items.append({
            "fixed": _save(d / "fixed.nii.gz", fixed), "moving": _save(d / "moving.nii.gz", moving),
            "fixed_label": _save(d / "fixed_label.nii.gz", fixed_lab), "moving_label": _save(d / "moving_label.nii.gz", moving_lab),
            "contrast": contrast,
        })
    path = root / "datalist.json"
    path.write_text(json.dumps({"test": items}))
    return path


def _registrar():
    from bundle.inference import PairRegistrar
    from bundle.networks import RegistrationBundleNet

    torch.manual_seed(0)
    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8), affine_channels=8, integration_steps=3)
    torch.nn.init.zeros_(net.deformable_head.output.conv.weight)  # with the identity affine head at initialisation: no motion
    return PairRegistrar(net, spacing_mm=2.0, size_divisor=net.size_divisor, initialise=False)


def test_evaluate_datalist_scores_every_method_of_every_pair(datalist, tmp_path):
    summary = evaluate_datalist(_registrar(), datalist, tmp_path / "out")
    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pair"], r["contrast"], r["method"]) for r in rows] == [(p, c, m) for p, c in (("pair0", "t2"), ("pair1", "flair")) for m in METHODS]
    shifted = {"dice_1": 0.75, "dice_2": 0.75, "dice_3": 10 / 12}  # rectangles 8, 8 and 12 voxels tall moved 2 voxels
    for r in rows:
        expected = shifted if r["pair"] == "pair0" else {"dice_1": 1.0, "dice_2": 1.0, "dice_3": 1.0}
        for k, v in expected.items():
            assert float(r[k]) == pytest.approx(v, abs=1e-6), (r["method"], k)
        assert float(r["dice_mean"]) == pytest.approx(sum(expected.values()) / 3, abs=1e-6)
        assert float(r["folding_percent"]) == 0.0 and math.isfinite(float(r["seconds"]))
    assert float(rows[0]["hd95_mean"]) == pytest.approx(2.0)  # 2 voxels of 1 mm
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["pairs"] == 2 and saved["section"] == "test" and saved["summary"] == json.loads(json.dumps(summary))
    assert summary["full"]["n"] == 2 and summary["full/t2"]["n"] == 1
    assert summary["identity"]["dice_mean"]["mean"] == pytest.approx((sum(shifted.values()) / 3 + 1.0) / 2, abs=1e-6)
    assert summary["affine/flair"]["dice_mean"]["median"] == pytest.approx(1.0)


def test_evaluate_datalist_limit_and_methods(datalist, tmp_path):
    summary = evaluate_datalist(_registrar(), datalist, tmp_path / "out", methods=("identity",), labels=(3,), limit=1)
    assert list(summary) == ["identity", "identity/t2"]
    assert summary["identity"]["dice_3"]["mean"] == pytest.approx(10 / 12) and "dice_1" not in summary["identity"]
