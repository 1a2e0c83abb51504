"""The bundle at its real interface: metadata, verify_net_in_out, TorchScript export, inference."""

from __future__ import annotations

import importlib.metadata as md
import json

import nibabel as nib
import numpy as np
import torch

from conftest import ROOT, composed, config_files, run_bundle

REQUIRED = [
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "data_source",
    "data_type", "intended_use", "network_data_format",
]


def _base(version: str) -> str:
    return version.split("+")[0]


def test_metadata_keys_and_pinned_versions_are_installed():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, missing
    assert meta["version"] in meta["changelog"]
    assert _base(md.version("monai")) == meta["monai_version"]
    assert _base(md.version("torch")) == meta["pytorch_version"]
    assert md.version("numpy") == meta["numpy_version"]
    for name, version in meta["required_packages_version"].items():
        assert md.version(name) == version, name
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 2
    assert fmt["outputs"]["pred"]["num_channels"] == 4


def test_verify_net_in_out():
    run_bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", composed("inference.json"), "--n", "2", "--any", "16")


def network_from_config(dims: int):
    """The ``network_def`` of ``configs/inference.json`` for ``spatial_dims`` = dims."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("inference.json"))
    parser["spatial_dims"] = dims
    return parser.get_parsed_content("network_def", instantiate=True)


def _random_checkpoint(path, dims):
    torch.manual_seed(0)
    net = network_from_config(dims)
    for p in net.parameters():  # make the field non-trivial so the comparison means something
        p.data += 0.01 * torch.randn_like(p)
    torch.save(net.state_dict(), path)
    return net.eval()


def test_ckpt_export_torchscript_matches_eager(tmp_path):
    ckpt = tmp_path / "model.pt"
    net = _random_checkpoint(ckpt, 3)
    ts = tmp_path / "model.ts"
    run_bundle("ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt),
               "--meta_file", "configs/metadata.json", "--config_file", composed("inference.json"),
               "--use_trace", "True", "--input_shape", "[1, 2, 32, 32, 32]")
    loaded = torch.jit.load(str(ts))
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        ref, got = net(x), loaded(x)
    assert ref[:, 1:].abs().max() > 1e-3
    assert torch.allclose(ref, got, atol=1e-5)


def test_inference_config_writes_outputs_on_fixed_grid(sample_3d, tmp_path):
    ckpt = tmp_path / "model.pt"
    _random_checkpoint(ckpt, 3)
    item = json.loads(sample_3d.read_text())["test"][0]
    base = sample_3d.parent
    out = tmp_path / "out"
    run_bundle("run", "--config_file", composed("inference.json"), "--checkpoint", str(ckpt),
               "--fixed", str(base / item["fixed"]), "--moving", str(base / item["moving"]),
               "--fixed_label", str(base / item["fixed_label"]), "--moving_label", str(base / item["moving_label"]),
               "--output_dir", str(out))
    fixed = nib.load(base / item["fixed"])
    for name in ("warped_moving.nii.gz", "jacobian.nii.gz", "warped_moving_label.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == fixed.shape, name
        assert np.allclose(img.affine, fixed.affine), name
    ddf = nib.load(out / "ddf_mm.nii.gz")
    assert ddf.shape == (*fixed.shape, 1, 3) and ddf.header.get_intent()[0] == "vector"
    assert np.allclose(ddf.affine, fixed.affine)
    tfm = (out / "affine.tfm").read_text()
    assert "AffineTransform_double_3_3" in tfm
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"folding_percent", "dice_mean", "seconds"} <= set(metrics)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # a second run refuses to overwrite, leaving results untouched
    proc = run_bundle("run", "--config_file", composed("inference.json"), "--checkpoint", str(ckpt),
                      "--fixed", str(base / item["fixed"]), "--moving", str(base / item["moving"]),
                      "--output_dir", str(out), check=False)
    assert proc.returncode != 0 and "already holds results" in proc.stderr


def test_configs_are_overrides_of_common_json():
    """network_def, device, preprocessing and the registrar are declared once, in common.json."""
    common = json.loads((ROOT / "configs" / "common.json").read_text())
    for key in ("network_def", "device", "spacing_mm", "size_divisor", "checkpoint", "preprocessing", "intensity_scaling", "registrar", "refiner"):
        assert key in common, key
    assert common["size_divisor"] == "$@network_def.size_divisor"
    for name in ("train.json", "inference.json", "evaluate.json", "explain.json", "multi_gpu_train.json", "multi_gpu_inference.json"):
        override = json.loads((ROOT / "configs" / name).read_text())
        repeated = {"network_def", "spacing_mm", "size_divisor", "checkpoint", "imports", "preprocessing", "refiner"} & set(override)
        assert not repeated, f"{name} redeclares {sorted(repeated)}"
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    assert "@preprocessing" in train["train"]["preprocessing"]["transforms"] and train["validate"]["preprocessing"]["transforms"] == "@preprocessing"


def test_inference_scales_intensity_with_the_declared_transform():
    """The registrar's intensity scaling is common.json's intensity_scaling object, the one training's preprocessing uses."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("inference.json"))
    parser["checkpoint"] = None
    registrar = parser.get_parsed_content("registrar")
    preprocessing = parser.get_parsed_content("preprocessing")
    funcs = [t.func[0] for t in preprocessing if type(t).__name__ == "Lambdad"]  # Lambdad keeps one func per key
    assert registrar.intensity is parser.get_parsed_content("intensity_scaling") is funcs[0]
    spacings = [f for f in funcs if type(f).__name__ == "Spacing"]
    assert [f.sp_resample.mode for f in spacings] == ["bilinear", "nearest"]  # images, labels
    assert all(list(f.pixdim) == [registrar.spacing_mm] * 3 for f in spacings)
    assert registrar.size_divisor == parser.get_parsed_content("network_def").size_divisor
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, size=(20, 24, 20)).astype(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    assert np.allclose(registrar.scale_intensity(image)[0].numpy(), np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-5)


