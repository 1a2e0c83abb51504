"""Bad inputs at the real interfaces: one line naming the file and the problem, non-zero exit, no outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from test_bundle import _random_checkpoint

from conftest import composed, run_bundle


@pytest.fixture(scope="module")
def case(tmp_path_factory, sample_3d):
    """A valid 3D pair (4 mm), a random-weight checkpoint and a folder of broken inputs."""
    root = tmp_path_factory.mktemp("bad")
    item = json.loads(sample_3d.read_text())["test"][0]
    base = sample_3d.parent
    fixed, moving = base / item["fixed"], base / item["moving"]
    ckpt = root / "model.pt"
    _random_checkpoint(ckpt, 3)
    img = nib.load(moving)
    data = np.asarray(img.dataobj, dtype=np.float32)
    bad = {}
    bad["missing"] = root / "does_not_exist.nii.gz"
    (root / "text.nii.gz").write_text("not an image")
    bad["not_image"] = root / "text.nii.gz"
    raw = (moving).read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    bad["truncated"] = root / "truncated.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), root / "four_d.nii.gz")
    bad["four_d"] = root / "four_d.nii.gz"
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), root / "nan.nii.gz")
    bad["nan"] = root / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones_like(data), img.affine), root / "constant.nii.gz")
    bad["constant"] = root / "constant.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2], img.affine), root / "two_d.nii.gz")
    bad["two_d"] = root / "two_d.nii.gz"
    return {"root": root, "fixed": fixed, "moving": moving, "ckpt": ckpt, "bad": bad, "item": item, "base": base}


class ArbitraryObject:
    """Stands for any pickled object that is not plain tensors and containers."""


EXPECTED = {
    "missing": "file not found",
    "not_image": "not a readable image",
    "truncated": "truncated",
    "four_d": "expected a single 2D or 3D volume",
    "nan": "NaN",
    "constant": "constant",
    "two_d": "expected 3D",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_registration_rejects_bad_moving_image(case, kind, tmp_path, capsys):
    out = tmp_path / "out"
    code = _registrar_cli(case, case["bad"][kind], out)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert str(case["bad"][kind]) in err and EXPECTED[kind] in err, err
    assert not out.exists() or not any(out.iterdir())


def _registrar_cli(case, moving, out):
    """The registration path of the CLI, in-process, with the test checkpoint."""
    import sys

    from test_bundle import network_from_config

    from bundle.cli import USER_ERRORS
    from bundle.inference import PairRegistrar

    try:
        PairRegistrar(network_from_config(3), case["ckpt"]).run(fixed=case["fixed"], moving=moving, output_dir=out)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


@pytest.mark.parametrize("kind", ["missing", "nan", "four_d"])
def test_bundle_run_rejects_bad_input_in_one_line(case, kind, tmp_path):
    out = tmp_path / "out"
    proc = run_bundle("run", "--config_file", composed("inference.json"), "--checkpoint", str(case["ckpt"]),
                      "--fixed", str(case["fixed"]), "--moving", str(case["bad"][kind]), "--output_dir", str(out), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(case["bad"][kind]) in last and EXPECTED[kind] in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_checkpoint_of_another_architecture_is_refused(case, tmp_path):
    from test_bundle import network_from_config

    from bundle.checkpoints import load_network_weights

    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match="does not fit this network architecture") as exc:
        load_network_weights(network_from_config(3), other)
    assert str(other) in str(exc.value)


def test_checkpoint_needing_code_is_refused(case, tmp_path):
    from test_bundle import network_from_config

    from bundle.checkpoints import load_network_weights

    evil = tmp_path / "evil.pt"
    torch.save({"model": ArbitraryObject()}, evil)  # unpickling it would import and run project code
    with pytest.raises(ValueError, match="not a weights-only checkpoint") as exc:
        load_network_weights(network_from_config(3), evil)
    assert str(evil) in str(exc.value)


def test_label_on_another_grid_is_refused(case, tmp_path):
    from test_bundle import network_from_config

    from bundle.inference import PairRegistrar

    lab = nib.load(case["base"] / case["item"]["moving_label"])
    shifted = nib.Nifti1Image(np.asarray(lab.dataobj)[:-1], lab.affine)
    path = tmp_path / "label_other_grid.nii.gz"
    nib.save(shifted, path)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as exc:
        PairRegistrar(network_from_config(3), case["ckpt"]).run(
            fixed=case["fixed"], moving=case["moving"], output_dir=out, moving_label=path
        )
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists() or not any(out.iterdir())


# -- datalists -------------------------------------------------------------------------------
DATALIST_EXPECTED = {
    "not_json": "unreadable datalist, not JSON",
    "missing": "datalist not found",
    "missing_keys": "item 1 of 'test' lacks key(s) ['moving']",
}


@pytest.fixture(scope="module")
def datalists(case):
    """Broken datalists: not JSON, absent, and one whose second item lacks ``moving``."""
    root = case["root"]
    (root / "not_json.json").write_text("{'test': [")
    good = {"fixed": str(case["fixed"]), "moving": str(case["moving"])}
    (root / "missing_keys.json").write_text(json.dumps({"test": [good, {"fixed": str(case["fixed"])}]}))
    return {"not_json": root / "not_json.json", "missing": root / "no_datalist.json", "missing_keys": root / "missing_keys.json"}


def _assert_one_line_error(proc, path, expected, out):
    """Non-zero exit, last stderr line ``error: <path>: ...expected...``, no traceback, no outputs."""
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and expected in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
@pytest.mark.parametrize("kind", sorted(DATALIST_EXPECTED))
def test_bundle_run_rejects_bad_datalist(case, datalists, config, kind, tmp_path):
    out = tmp_path / "out"
    proc = run_bundle("run", "--config_file", composed(config), "--checkpoint", str(case["ckpt"]),
                      "--datalist", str(datalists[kind]), "--output_dir", str(out), check=False)
    _assert_one_line_error(proc, datalists[kind], DATALIST_EXPECTED[kind], out)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("\xff not text", "unreadable datalist, not JSON"),
        ("[1, 2]", "datalist has no 'test' section"),
        ('{"training": []}', "datalist has no 'test' section"),
        ('{"test": []}', "is not a non-empty list of items"),
        ('{"test": {"fixed": "a"}}', "is not a non-empty list of items"),
        ('{"test": [3]}', "item 0 of 'test' lacks key(s) ['fixed', 'moving']"),
    ],
)
def test_malformed_datalist_is_one_line_error(case, content, expected, tmp_path):
    from test_bundle import network_from_config

    from bundle.inference import PairRegistrar

    path = tmp_path / "datalist.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError) as exc:
        PairRegistrar(network_from_config(3), case["ckpt"]).run(datalist=path, output_dir=tmp_path / "out")
    assert str(exc.value).startswith(f"{path}: ") and expected in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_datalist_naming_a_missing_image_writes_nothing(case, tmp_path):
    """Item 1 names a missing file: refused before pair 0 is registered, so no partial results."""
    from test_bundle import network_from_config

    from bundle.inference import PairRegistrar

    good = {"fixed": str(case["fixed"]), "moving": str(case["moving"])}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"test": [good, {**good, "moving": str(case["bad"]["missing"])}]}))
    with pytest.raises(FileNotFoundError, match="file not found") as exc:
        PairRegistrar(network_from_config(3), case["ckpt"]).run(datalist=path, output_dir=tmp_path / "out")
    assert str(exc.value).startswith(f"{case['bad']['missing']}: ") and str(path) in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_evaluation_datalist_without_labels_is_refused(case, tmp_path):
    from test_bundle import network_from_config

    from bundle.evaluate import evaluate_datalist
    from bundle.inference import PairRegistrar

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"test": [{"fixed": str(case["fixed"]), "moving": str(case["moving"])}]}))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['fixed_label', 'moving_label'\]") as exc:
        evaluate_datalist(PairRegistrar(network_from_config(3), case["ckpt"]), path, tmp_path / "out")
    assert str(exc.value).startswith(f"{path}: ")
    assert not (tmp_path / "out").exists()


# -- dimensionality at the bundle interface ----------------------------------------------------
def test_bundle_run_rejects_2d_image_for_3d_model(case, tmp_path):
    out = tmp_path / "out"
    proc = run_bundle("run", "--config_file", composed("inference.json"), "--checkpoint", str(case["ckpt"]),
                      "--fixed", str(case["fixed"]), "--moving", str(case["bad"]["two_d"]), "--output_dir", str(out), check=False)
    _assert_one_line_error(proc, case["bad"]["two_d"], "2D image of shape", out)
    assert "expected 3D" in proc.stderr.strip().splitlines()[-1]


def test_bundle_run_rejects_3d_image_for_2d_model(case, tmp_path):
    ckpt = tmp_path / "model2d.pt"
    _random_checkpoint(ckpt, 2)
    out = tmp_path / "out"
    proc = run_bundle("run", "--config_file", composed("inference.json"), "--spatial_dims", "2", "--checkpoint", str(ckpt),
                      "--fixed", str(case["bad"]["two_d"]), "--moving", str(case["moving"]), "--output_dir", str(out), check=False)
    _assert_one_line_error(proc, case["moving"], "3D image of shape", out)
    assert "expected 2D" in proc.stderr.strip().splitlines()[-1]
