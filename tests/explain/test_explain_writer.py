"""Explanations of image files: ``configs/explain.json`` through ``monai.bundle run``, and ``explain_files``."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from explain_helpers import _WARP, random_network, sparse_anatomy, translation

from bundle.explain.writer import ExplanationWriter, explain_files

from conftest import ROOT, composed, config_files, run_bundle


def test_explain_config_shares_the_inference_network_definition():
    """explain.json is an override of common.json: the network, checkpoint and refiner of inference."""
    from monai.bundle import ConfigParser

    explain = json.loads((ROOT / "configs" / "explain.json").read_text())
    assert "network_def" not in explain and "refiner" not in explain
    for key in ("fixed", "moving", "output_dir", "datalist", "stages", "targets", "roi_mask"):
        assert key in explain, key
    parser = ConfigParser()
    parser.read_config(config_files("explain.json"))
    assert parser["explainer"]["network"] == "@network_def" and parser["explainer"]["refiner"] == "@refiner"


def _random_checkpoint(path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("explain.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    for p in net.parameters():
        p.data += 0.01 * torch.randn_like(p)
    torch.save(net.state_dict(), path)


def test_explain_config_writes_maps_on_the_fixed_grid_and_refuses_to_overwrite(sample_3d, tmp_path):
    ckpt = tmp_path / "model.pt"
    _random_checkpoint(ckpt)
    item = json.loads(sample_3d.read_text())["test"][0]
    base = sample_3d.parent
    out = tmp_path / "explain"
    args = ["run", "--config_file", composed("explain.json"), "--checkpoint", str(ckpt),
            "--fixed", str(base / item["fixed"]), "--moving", str(base / item["moving"]), "--output_dir", str(out),
            "--spacing_mm", "4.0", "--targets", "{'affine': ['translation_x_mm', 'rotation_z']}"]
    run_bundle(*args)
    fixed = nib.load(base / item["fixed"])
    summary = json.loads((out / "explanations.json").read_text())
    stages = [(m["stage"], m["target"]) for m in summary["maps"]]
    refine_affine = [("refine_affine", f"matrix_{a}{b}") for a in "xyz" for b in "xyz"] + [("refine_affine", f"translation_{a}") for a in "xyz"]
    assert stages == [
        ("encoder", "similarity"), ("decoder_ab", "synthesis_l1"), ("decoder_ba", "synthesis_ba_l1"),
        ("affine", "translation_x_mm"), ("affine", "rotation_z"), ("deformable", "displacement_rms_mm"),
        *refine_affine, ("refine_deformable", "force_magnitude"),
    ]
    assert summary["refinement"]["affine"]["iterations"] > 0 and "initial_translation_mm" in summary
    for entry in summary["maps"]:
        img = nib.load(out / entry["nifti"])
        assert img.shape == fixed.shape, entry["nifti"]
        assert np.allclose(img.affine, fixed.affine), entry["nifti"]
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0, entry["nifti"]
        assert (out / entry["png"]).stat().st_size > 0
    assert (out / "summary.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    before = (out / "explanations.json").read_text()
    proc = run_bundle(*args, check=False)
    assert proc.returncode != 0 and "already holds explanations" in proc.stderr
    assert (out / "explanations.json").read_text() == before


def _save(path, array, spacing=2.0):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def test_explain_files_2d_with_roi_and_datalist(tmp_path):
    mov_a, fix_a = sparse_anatomy()
    moving = _WARP(mov_a, translation(2.0, -1.0))[0, 0].numpy()
    fixed = fix_a[0, 0].numpy()
    f = _save(tmp_path / "fixed.nii.gz", fixed)
    m = _save(tmp_path / "moving.nii.gz", moving)
    roi = np.zeros_like(fixed)
    roi[20:40, 20:40] = 1
    r = _save(tmp_path / "roi.nii.gz", roi)
    net = random_network(2, encoder_channels=(4, 8, 8), affine_channels=8)
    out = tmp_path / "out"
    summary = explain_files(f, m, out, net, stages=["affine", "deformable"], targets={"affine": ["translation_y_mm"]}, roi_mask=r)
    names = {e["target"] for e in summary["maps"]}
    assert names == {"translation_y_mm", "displacement_rms_mm", "displacement_rms_roi_mm"}
    for e in summary["maps"]:
        img = nib.load(out / e["nifti"])
        assert img.shape[:2] == fixed.shape and np.allclose(img.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(FileExistsError, match="already holds explanations"):
        explain_files(f, m, out, net, stages=["affine"])
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"fixed": "fixed.nii.gz", "moving": "moving.nii.gz"}]}))
    writer = ExplanationWriter(net, stages=["deformable"], overwrite=True)
    results = writer.run(output_dir=tmp_path / "many", datalist=datalist)
    assert len(results) == 1 and (tmp_path / "many" / "0000" / "summary.png").is_file()
