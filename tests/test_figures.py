"""``bundle/figures.py``: display slices and fields of known arrays, the deformed grid drawn, PNGs of the expected size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bundle.figures import draw_grid, inplane_field, middle_slice, pair_figure, save_figure


def _ramp(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)


def test_middle_slice_of_a_volume_is_the_transposed_axial_slice():
    vol = _ramp((3, 4, 5))
    np.testing.assert_array_equal(middle_slice(vol), vol[:, :, 2].T)
    assert middle_slice(vol).shape == (4, 3)  # rows = second axis, as imshow(origin="lower") wants
    np.testing.assert_array_equal(middle_slice(vol, axis=0), vol[1].T)
    np.testing.assert_array_equal(middle_slice(vol, index=4), vol[:, :, 4].T)
    img = _ramp((3, 4))
    np.testing.assert_array_equal(middle_slice(img), img.T)
    assert middle_slice(img.tolist()).shape == (4, 3)  # any array-like


def test_inplane_field_is_the_first_two_components_at_the_middle_slice():
    ddf3 = _ramp((3, 4, 5, 6))
    out = inplane_field(ddf3)
    assert out.shape == (2, 4, 5)
    np.testing.assert_array_equal(out, ddf3[:2, :, :, 3])
    ddf2 = _ramp((2, 4, 5))
    np.testing.assert_array_equal(inplane_field(ddf2), ddf2)


def test_draw_grid_draws_the_displaced_grid_lines():
    import matplotlib.pyplot as plt

    ddf = np.zeros((2, 8, 6))
    ddf[0] = 0.5  # every point moves +0.5 along x
    ddf[1, 4, :] = -1.0  # row x = 4 moves -1 along y
    fig, ax = plt.subplots()
    draw_grid(ax, ddf, step=4, color="red")
    lines = ax.get_lines()
    assert len(lines) == 2 + 2  # x = 0, 4 (step 4 of 8) and y = 0, 4 (of 6)
    x0, y0 = lines[0].get_data()
    np.testing.assert_array_equal(x0, np.full(6, 0.5))
    np.testing.assert_array_equal(y0, np.arange(6))
    x4, y4 = lines[1].get_data()
    np.testing.assert_array_equal(x4, np.full(6, 4.5))
    np.testing.assert_array_equal(y4, np.arange(6) - 1.0)
    xa, ya = lines[2].get_data()  # the y = 0 line, across x
    np.testing.assert_array_equal(xa, np.arange(8) + 0.5)
    np.testing.assert_array_equal(ya, [0, 0, 0, 0, -1, 0, 0, 0])
    assert all(line.get_color() == "red" for line in lines)
    plt.close(fig)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


@pytest.mark.parametrize("dims", [2, 3])
def test_pair_figure_writes_a_png_one_panel_per_image_label_and_grid(tmp_path, dims):
    shape = (16,) * dims
    rng = np.random.default_rng(0)
    images = [(name, rng.random(shape)) for name in ("fixed", "moving", "warped")]
    labels = [("labels", rng.integers(0, 4, shape))]
    path = pair_figure(tmp_path / "fig" / "overview.png", images, labels, ddf=rng.normal(size=(dims, *shape)), title="pair")
    assert path == str(tmp_path / "fig" / "overview.png")
    assert _png_size(path) == (5 * 330, 374)  # 5 panels of 3 x 3.4 inches at 110 dpi
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["overview.png"]
    assert _png_size(pair_figure(tmp_path / "one.png", images[:1])) == (330, 374)


def test_save_figure_hides_axes_adds_the_title_and_closes(tmp_path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(2, 1))
    out = save_figure(fig, axes, tmp_path / "f.png", title="hello", dpi=50)
    assert out == str(tmp_path / "f.png") and _png_size(out) == (100, 50)
    assert not any(ax.axison for ax in axes) and fig._suptitle.get_text() == "hello"
    assert not plt.fignum_exists(fig.number)
