"""Writing a sample data set: files, affines, ground truth on disk and the MONAI datalist."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from bundle.data import pairs
from bundle.data.validation import check_label_grid
from bundle.io import load_displacement
from bundle.transforms import ValidateImaged

# The SPM templates come from spm-runtime, installed apart from the extras (--no-deps).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("spm_runtime") is None,
    reason="needs spm-runtime: pip install --no-deps spm-runtime matlab-runtime",
)

SPACING = 6.0
KEYS = ("fixed", "moving", "fixed_label", "moving_label", "gt_ddf")


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def dataset(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"samples{request.param}d")
    path = pairs.write_sample_data(
        out,
        n_train=2,
        n_val=1,
        n_test=2,
        spatial_dims=request.param,
        spacing_mm=SPACING,
        contrasts=("t2", "flair"),
        seed=5,
    )
    return request.param, path


def test_datalist_schema_and_disjoint_seeds(dataset):
    dims, path = dataset
    datalist = json.loads(path.read_text())
    assert [len(datalist[s]) for s in pairs.SPLITS] == [2, 1, 2]
    seeds = [item["seed"] for s in pairs.SPLITS for item in datalist[s]]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [s for split in pairs.split_seeds(5, 2, 1, 2).values() for s in split]
    item = datalist["training"][1]
    assert item["contrast"] == "flair" and datalist["training"][0]["contrast"] == "t2"
    assert set(KEYS) <= set(item) and all(not item[k].startswith("/") for k in KEYS)
    assert datalist["spatial_dims"] == dims and datalist["labels"]["3"] == "white"
    assert ("slice_index" in item) == (dims == 2)


def test_datalist_resolves_with_monai(dataset):
    _, path = dataset
    for split in pairs.SPLITS:
        items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=split, base_dir=path.parent)
        for item in items:
            for key in KEYS:
                assert (path.parent / item[key]).is_file() and item[key].startswith(str(path.parent))
            assert item["contrast"] in pairs.CONTRASTS and isinstance(item["seed"], int)


def test_files_match_the_regenerated_pair(dataset):
    dims, path = dataset
    item = json.loads(path.read_text())["test"][1]
    pair = pairs.generate_pair(item["seed"], item["contrast"], dims, SPACING)
    for key in ("fixed", "moving", "fixed_label", "moving_label"):
        img = nib.load(path.parent / item[key])
        assert img.shape == pair.fixed.shape, key
        np.testing.assert_allclose(img.affine, pair.affine, atol=1e-6)
        np.testing.assert_allclose(np.asarray(img.dataobj), getattr(pair, key), atol=1e-6)
    assert nib.load(path.parent / item["fixed_label"]).get_data_dtype() == np.uint8
    assert nib.aff2axcodes(nib.load(path.parent / item["moving"]).affine) == ("R", "A", "S")
    check_label_grid(path.parent / item["fixed"], path.parent / item["fixed_label"])
    check_label_grid(path.parent / item["moving"], path.parent / item["moving_label"])
    ddf, affine = load_displacement(path.parent / item["gt_ddf"])
    np.testing.assert_allclose(ddf, pair.gt_ddf, atol=1e-4)
    np.testing.assert_allclose(affine, pair.affine, atol=1e-6)


def test_written_images_load_and_validate_with_monai(dataset):
    dims, path = dataset
    items = load_decathlon_datalist(path, is_segmentation=False, data_list_key="validation", base_dir=path.parent)
    keys = ["fixed", "moving", "fixed_label", "moving_label"]
    loader = Compose([LoadImaged(keys), ValidateImaged(keys, expected_dims=dims), EnsureChannelFirstd(keys)])
    data = loader(items[0])
    assert tuple(data["fixed"].shape[1:]) == tuple(data["moving"].shape[1:]) and data["fixed"].ndim == dims + 1


def test_cli(tmp_path, capsys):
    args = "--spatial_dims 2 --spacing_mm 6 --n_train 1 --n_val 1 --n_test 1 --seed 3".split()
    path = pairs.main(["--output_dir", str(tmp_path), *args])
    assert capsys.readouterr().out.strip() == str(path)
    assert path == tmp_path / "datalist.json" and len(json.loads(path.read_text())["test"]) == 1


def test_split_seeds():
    seeds = pairs.split_seeds(0, 16, 4, 20)
    assert seeds["training"][:2] == [0, 1] and seeds["validation"][0] == 1_000_000
    assert pairs.split_seeds(0, 3, 4, 20)["test"] == seeds["test"]  # test set independent of n_train
    assert not set(pairs.split_seeds(1, 5, 5, 5)["training"]) & set(sum(seeds.values(), []))
    with pytest.raises(ValueError):
        pairs.split_seeds(-1, 1, 1, 1)
