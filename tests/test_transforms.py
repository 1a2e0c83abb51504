"""``bundle/transforms.py``: ``ValidateImaged``'s layout rules and messages on in-memory ``MetaTensor``s (no files), and the
intensity scaling that falls back to min-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd

from bundle.transforms import ScaleIntensityRangePercentilesOrMinMax, ValidateImaged


def _image(shape, spatial_shape=None, name="scan.nii.gz", value=None) -> MetaTensor:
    g = torch.Generator().manual_seed(0)
    data = torch.rand(shape, generator=g) if value is None else torch.full(shape, float(value))
    meta = {"filename_or_obj": name}
    if spatial_shape is not None:
        meta["spatial_shape"] = np.asarray(spatial_shape)
    return MetaTensor(data, meta=meta)


@pytest.mark.parametrize(
    "shape,spatial,expected",
    [
        ((4, 5, 6), (4, 5, 6), ((4, 5, 6), 1)),  # no channel
        ((1, 4, 5, 6), (4, 5, 6), ((4, 5, 6), 1)),  # channel first
        ((4, 5, 6, 1), (4, 5, 6), ((4, 5, 6), 1)),  # channel last
        ((3, 4, 5, 6), (4, 5, 6), ((4, 5, 6), 3)),
        ((4, 5, 6, 2), (4, 5, 6), ((4, 5, 6), 2)),
        ((1, 8, 9), (8, 9), ((8, 9), 1)),  # a 2D image after EnsureChannelFirstd
        ((2, 8, 9), None, ((2, 8, 9), 1)),  # without meta data a 3-axis array is spatial only
        ((2, 4, 5, 6), None, ((4, 5, 6), 2)),  # and a 4-axis array channel-first
        ((1, 4, 5, 6), (9, 9, 9), ((4, 5, 6), 1)),  # stale meta data (after a spatial transform): channel-first
    ],
)
def test_layout_is_read_from_the_loader_spatial_shape(shape, spatial, expected):
    assert ValidateImaged._layout(shape, spatial) == expected


def test_good_images_pass_through_unchanged():
    moving, fixed = _image((1, 8, 9, 10), (8, 9, 10)), _image((8, 9, 10, 1), (8, 9, 10))
    data = {"moving": moving, "fixed": fixed, "label": "untouched"}
    out = ValidateImaged(["moving", "fixed"], expected_dims=3)(data)
    assert out is not data and out["moving"] is moving and out["fixed"] is fixed and out["label"] == "untouched"
    assert set(out) == set(data)


def test_after_ensure_channel_first_a_2d_image_is_2d():
    data = {"img": _image((8, 9), (8, 9), name="slice.nii.gz")}
    out = Compose([EnsureChannelFirstd("img", channel_dim="no_channel"), ValidateImaged("img", expected_dims=2)])(data)
    assert out["img"].shape == (1, 8, 9)


@pytest.mark.parametrize(
    "image,dims,message",
    [
        (_image((3, 8, 9, 10), (8, 9, 10), name="dwi.nii.gz"), None, r"^dwi.nii.gz: 3 volumes of shape \(8, 9, 10\); expected a single 2D or 3D volume$"),
        (_image((1, 8, 9), (8, 9), name="slice.nii.gz"), 3, r"^slice.nii.gz: 2D image of shape \(8, 9\), expected 3D$"),
        (_image((1, 8, 9, 10), (8, 9, 10), name="vol.nii.gz"), 2, r"^vol.nii.gz: 3D image of shape \(8, 9, 10\), expected 2D$"),
        (_image((1, 8), (8,), name="line.nii.gz"), None, r"^line.nii.gz: image of shape \(8,\) is not 2D or 3D$"),
        (_image((1, 8, 9, 10), (8, 9, 10), name="flat.nii.gz", value=3.0), None, r"^flat.nii.gz: constant image \(every voxel is 3.0\)$"),
    ],
    ids=["volumes", "2d_for_3d", "3d_for_2d", "1d", "constant"],
)
def test_bad_images_raise_one_line_naming_the_file(image, dims, message):
    with pytest.raises(ValueError, match=message):
        ValidateImaged("img", expected_dims=dims)({"img": image})


def test_non_finite_voxels_are_counted():
    img = _image((1, 8, 9, 10), (8, 9, 10), name="bad.nii.gz")
    img[0, 0, 0, :3] = float("nan")
    img[0, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^bad.nii.gz: 3 NaN and 1 Inf voxels$"):
        ValidateImaged("img")({"img": img})


def test_the_key_names_an_image_without_a_file_and_the_first_bad_key_is_reported():
    data = {"moving": torch.rand(1, 8, 9, 10), "fixed": torch.zeros(1, 8, 9, 10)}
    with pytest.raises(ValueError, match=r"^fixed: constant image"):
        ValidateImaged(["moving", "fixed"])(data)
    with pytest.raises(ValueError, match=r"^fixed: constant image"):
        ValidateImaged(["moving", "fixed"])({**data, "moving": np.random.default_rng(0).random((8, 9, 10))})  # numpy arrays too


def test_missing_keys_raise_unless_allowed():
    data = {"moving": _image((1, 8, 9, 10), (8, 9, 10))}
    with pytest.raises(KeyError):
        ValidateImaged(["moving", "fixed"])(data)
    assert ValidateImaged(["moving", "fixed"], allow_missing_keys=True)(data)["moving"] is data["moving"]


@pytest.mark.parametrize("dims", [1, 4, "3"])
def test_expected_dims_must_be_none_2_or_3(dims):
    with pytest.raises(ValueError, match=f"expected_dims must be None, 2 or 3, got {dims}"):
        ValidateImaged("img", expected_dims=dims)


def _scalings(**kw):
    from monai.transforms import ScaleIntensityRangePercentiles

    args = {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True, **kw}
    return ScaleIntensityRangePercentilesOrMinMax(**args), ScaleIntensityRangePercentiles(**args)


@pytest.mark.parametrize("kw", [{}, {"relative": True}, {"clip": False}, {"channel_wise": True}, {"lower": 99.5, "upper": 0.5}])
def test_scaling_equals_monai_where_the_percentiles_differ(kw):
    img = torch.rand(2, 20, 24, generator=torch.Generator().manual_seed(3)) ** 2 * 300.0
    ours, monai_scaling = _scalings(**kw)
    torch.testing.assert_close(ours(img), monai_scaling(img), rtol=0, atol=0)


def test_scaling_falls_back_to_min_max_where_the_percentiles_coincide():
    img = torch.zeros(1, 32, 32)
    img[0, 3, 4] = 5.0  # one voxel of 1024: the 0.5th and 99.5th percentiles are both 0
    ours, monai_scaling = _scalings()
    assert float(monai_scaling(img).max()) == 5.0  # MONAI leaves it unscaled
    expected = torch.zeros(1, 32, 32)
    expected[0, 3, 4] = 1.0
    torch.testing.assert_close(ours(img), expected, rtol=0, atol=0)
    torch.testing.assert_close(ours(torch.full((1, 4, 4), 2.0)), monai_scaling(torch.full((1, 4, 4), 2.0)))  # constant: as MONAI


def test_the_configs_intensity_scaling_is_the_fallback_transform():
    from monai.bundle import ConfigParser

    from bundle.cli import config_files

    parser = ConfigParser()
    parser.read_config(config_files("inference.json"))
    assert isinstance(parser.get_parsed_content("intensity_scaling"), ScaleIntensityRangePercentilesOrMinMax)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lower,upper", [(0.5, 99.5), (0.0, 100.0), (2.0, 98.0), (50.0, 50.0)])
def test_percentiles_from_one_selection_equal_torch_quantile_bitwise(dtype, lower, upper):
    from monai.data import MetaTensor

    img = MetaTensor(torch.rand(1, 13, 17, 11, generator=torch.Generator().manual_seed(5), dtype=dtype) ** 3 * 700.0)
    ours = ScaleIntensityRangePercentilesOrMinMax(lower=lower, upper=upper, b_min=0.0, b_max=1.0)
    expected = [float(torch.quantile(img.as_tensor().reshape(-1), q / 100.0)) for q in (lower, upper)]
    assert list(ours._percentiles(img)) == expected
