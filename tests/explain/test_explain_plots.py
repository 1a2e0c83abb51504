"""``bundle/explain/plots.py``: normalisation and peak of known maps, overlay and summary PNGs of the expected size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bundle.explain.plots import _slices, normalise_array, overlay_figure, peak_voxel, summary_figure


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_normalise_array_clips_negatives_and_divides_by_the_peak():
    np.testing.assert_array_equal(normalise_array(np.array([[-2.0, 0.0], [1.0, 4.0]])), [[0.0, 0.0], [0.25, 1.0]])
    out = normalise_array(np.array([-1.0, -3.0]))  # nothing positive: all zero, not NaN
    np.testing.assert_array_equal(out, [0.0, 0.0])
    assert out.dtype == np.float64
    assert normalise_array(np.zeros((0,))).shape == (0,)
    np.testing.assert_array_equal(normalise_array([1, 2]), [0.5, 1.0])  # integers and lists too


def test_peak_voxel_is_the_first_maximum():
    a = np.zeros((3, 4, 5))
    a[1, 2, 3] = 5.0
    assert peak_voxel(a) == (1, 2, 3)
    assert all(isinstance(i, int) for i in peak_voxel(a))
    a[0, 3, 4] = 5.0  # a tie earlier in C order wins
    assert peak_voxel(a) == (0, 3, 4)
    assert peak_voxel(np.array([[0.0, 2.0], [2.0, 1.0]])) == (0, 1)


def test_slices_go_through_the_index():
    vol = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    out = _slices(vol, (1, 2, 3))
    assert [name.split(" (")[0] for name, _, _ in out] == ["axis 0", "axis 1", "axis 2"]
    assert [name.split(" ")[-1] for name, _, _ in out] == ["1", "2", "3"]
    np.testing.assert_array_equal(out[0][1], vol[1])
    np.testing.assert_array_equal(out[1][1], vol[:, 2])
    np.testing.assert_array_equal(out[2][1], vol[:, :, 3])
    assert [cross for _, _, cross in out] == [(2, 3), (1, 3), (1, 2)]
    ((name, img, cross),) = _slices(vol[:, :, 0], (2, 1))
    assert name == "" and img.shape == (3, 4) and cross == (2, 1)


@pytest.mark.parametrize("dims,size", [(2, (440, 380)), (3, (1160, 380))])
def test_overlay_figure_png_size(tmp_path, dims, size):
    rng = np.random.default_rng(0)
    bg, heat = rng.random((16,) * dims), rng.random((16,) * dims)
    path = overlay_figure(tmp_path / "maps" / "overlay.png", bg, heat, title="map")
    assert path == str(tmp_path / "maps" / "overlay.png") and _png_size(path) == size  # (3.6 per panel + 0.8) x 3.8 inches at 100 dpi
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["overlay.png"]


def test_overlay_figure_of_an_all_zero_map_and_a_constant_background(tmp_path):
    assert _png_size(overlay_figure(tmp_path / "z.png", np.ones((16, 16)), np.zeros((16, 16)))) == (440, 380)


@pytest.mark.parametrize("bg,attr", [((16, 16), (16, 15)), ((16,), (16,)), ((2, 2, 2, 2), (2, 2, 2, 2))])
def test_overlay_figure_refuses_other_shapes(tmp_path, bg, attr):
    with pytest.raises(ValueError, match="must be the same 2D or 3D shape"):
        overlay_figure(tmp_path / "x.png", np.zeros(bg), np.zeros(attr))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("dims", [2, 3])
def test_summary_figure_png_size(tmp_path, dims):
    rng = np.random.default_rng(1)
    shape = (16,) * dims
    img = rng.random(shape)
    maps = [(f"map {i}", rng.random(shape)) for i in range(3)]
    path = summary_figure(tmp_path / "summary.png", img, img, img, rng.normal(size=(dims, *shape)), maps, title="pair")
    assert _png_size(path) == (1450, 600)  # 7 panels: 2 rows of 5, 2.9 x 3.0 inches each at 100 dpi
    assert _png_size(summary_figure(tmp_path / "s2.png", img, img, img, np.zeros((dims, *shape)), [], columns=2)) == (580, 600)
