"""Input validation: each problem raises one line that names the file."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from bundle.data.validation import check_image_array, check_label_grid, load_checked_image
from bundle.transforms import ValidateImaged


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def image(tmp_path):
    return np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)


def _assert_names_file(excinfo, path):
    message = str(excinfo.value)
    assert os.path.basename(str(path)) in message and "\n" not in message, message


def test_valid_images_load(tmp_path, image):
    array, affine = load_checked_image(_save(tmp_path / "ok.nii.gz", image), expected_dims=3)
    np.testing.assert_array_equal(array, image)
    assert affine.shape == (4, 4)
    array, _ = load_checked_image(_save(tmp_path / "ok4d.nii.gz", image[..., None]))
    assert array.shape == image.shape  # trailing singleton 4th dimension squeezed
    array, _ = load_checked_image(_save(tmp_path / "flat.nii.gz", image[:, :, :1]), expected_dims=2)
    assert array.shape == (8, 9)


def test_missing_file(tmp_path):
    path = tmp_path / "missing_scan.nii.gz"
    with pytest.raises(FileNotFoundError) as excinfo:
        load_checked_image(path)
    _assert_names_file(excinfo, path)


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a readable image") as excinfo:
        load_checked_image(path)
    _assert_names_file(excinfo, path)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_file(tmp_path, image, name):
    full = _save(tmp_path / f"full_{name}", image)
    path = tmp_path / name
    path.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated") as excinfo:
        load_checked_image(path)
    _assert_names_file(excinfo, path)


@pytest.mark.parametrize(
    "name, array, expected_dims, match",
    [
        ("four_d.nii.gz", np.random.default_rng(2).random((8, 9, 10, 3)), None, "4D image"),
        ("nan.nii.gz", np.where(np.eye(8)[:, :, None] > 0, np.nan, 1.0) * np.ones((8, 8, 4)), None, "NaN"),
        ("inf.nii.gz", np.where(np.eye(8)[:, :, None] > 0, np.inf, 1.0) * np.ones((8, 8, 4)), None, "Inf"),
        ("constant.nii.gz", np.full((8, 9, 10), 3.0), None, "constant"),
        ("slice.nii.gz", np.random.default_rng(3).random((8, 9)), 3, "expected 3D"),
        ("volume.nii.gz", np.random.default_rng(4).random((8, 9, 10)), 2, "expected 2D"),
    ],
)
def test_bad_images(tmp_path, name, array, expected_dims, match):
    path = _save(tmp_path / name, array.astype(np.float32))
    with pytest.raises(ValueError, match=match) as excinfo:
        load_checked_image(path, expected_dims=expected_dims)
    _assert_names_file(excinfo, path)


def test_check_image_array_names_the_array():
    with pytest.raises(ValueError, match="^moving: constant"):
        check_image_array(np.zeros((4, 4)), "moving")
    check_image_array(np.arange(16).reshape(4, 4), "fixed")


def test_label_grid(tmp_path, image):
    image_path = _save(tmp_path / "img.nii.gz", image)
    labels = (image * 3).round().astype(np.uint8)
    check_label_grid(image_path, _save(tmp_path / "good_labels.nii.gz", labels))

    shifted = np.eye(4)
    shifted[0, 3] = 0.01
    cases = {
        "shape_labels.nii.gz": (labels[:-1], np.eye(4), "shape"),
        "affine_labels.nii.gz": (labels, shifted, "affine"),
        "float_labels.nii.gz": (labels.astype(np.float32) + 0.5, np.eye(4), "integers"),
    }
    for name, (array, affine, match) in cases.items():
        path = _save(tmp_path / name, array, affine)
        with pytest.raises(ValueError, match=match) as excinfo:
            check_label_grid(image_path, path)
        _assert_names_file(excinfo, path)
    small = np.eye(4)
    small[0, 3] = 1e-4  # within tolerance
    check_label_grid(image_path, _save(tmp_path / "close_labels.nii.gz", labels, small))


def test_validate_imaged_after_load(tmp_path, image):
    good = _save(tmp_path / "good.nii.gz", image)
    load = LoadImaged("img")
    data = ValidateImaged("img", expected_dims=3)(load({"img": str(good)}))
    assert data["img"].shape == image.shape

    bad = {
        "nan_scan.nii.gz": (np.where(image > 0.5, np.nan, image), None, "NaN"),
        "flat_scan.nii.gz": (np.ones_like(image), None, "constant"),
        "multi_scan.nii.gz": (np.stack([image, image + 1], -1), None, "2 volumes"),
        "dims_scan.nii.gz": (image, 2, "expected 2D"),
    }
    for name, (array, dims, match) in bad.items():
        path = _save(tmp_path / name, array.astype(np.float32))
        with pytest.raises(ValueError, match=match) as excinfo:
            ValidateImaged("img", expected_dims=dims)(load({"img": str(path)}))
        _assert_names_file(excinfo, path)


def test_validate_imaged_without_meta():
    with pytest.raises(ValueError, match="^moving: constant"):
        ValidateImaged("moving")({"moving": torch.zeros(1, 4, 5, 6)})
    ValidateImaged("moving", expected_dims=3)({"moving": MetaTensor(torch.rand(1, 4, 5, 6))})
    with pytest.raises(ValueError, match="expected_dims"):
        ValidateImaged("moving", expected_dims=4)
