"""Figures of explanation maps: per-map overlays and a per-pair summary."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..figures import draw_grid, inplane_field, save_figure  # noqa: E402
from ..io import atomic_write  # noqa: E402

__all__ = ["normalise_array", "peak_voxel", "overlay_figure", "summary_figure"]

_AXIS_NAMES = ("axis 0 (sagittal for RAS)", "axis 1 (coronal for RAS)", "axis 2 (axial for RAS)")


def normalise_array(array: np.ndarray) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its maximum (an all-zero map stays zero)."""
    array = np.clip(np.asarray(array, dtype=np.float64), 0, None)
    peak = float(array.max()) if array.size else 0.0
    return array / peak if peak > 0 else np.zeros_like(array)


def peak_voxel(array: np.ndarray) -> tuple[int, ...]:
    """Index of the highest value (the first one on ties)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(array)), array.shape))


def _background(ax, image: np.ndarray) -> None:
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    ax.imshow(image.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)


def _overlay(ax, image: np.ndarray, heat: np.ndarray, alpha: float = 0.6):
    _background(ax, image)
    return ax.imshow(heat.T, cmap="jet", origin="lower", vmin=0, vmax=1, alpha=np.clip(heat.T, 0, 1) * alpha)


def _slices(volume: np.ndarray, index: Sequence[int]) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    """The 2D image itself, or the three orthogonal slices of a volume through ``index``."""
    if volume.ndim == 2:
        return [("", volume, (index[0], index[1]))]
    out = []
    for axis in range(3):
        rest = [a for a in range(3) if a != axis]
        out.append((f"{_AXIS_NAMES[axis]} {index[axis]}", np.take(volume, index[axis], axis=axis), (index[rest[0]], index[rest[1]])))
    return out


def overlay_figure(path: str | os.PathLike, background: np.ndarray, attribution: np.ndarray, title: str = "") -> str:
    """Save the map (normalised to [0, 1]) over the background image as a PNG.

    A 2D image is shown whole; a volume as three orthogonal slices (voxel axes of the image)
    through the voxel of highest attribution, marked with a cross.

    Args:
        path: PNG file (written atomically).
        background: image on the same grid as ``attribution``.
        attribution: non-negative map.
        title: figure title.
    """
    background, attribution = np.asarray(background), np.asarray(attribution)
    if background.shape != attribution.shape or background.ndim not in (2, 3):
        raise ValueError(f"background {background.shape} and attribution {attribution.shape} must be the same 2D or 3D shape.")
    heat = normalise_array(attribution)
    peak = peak_voxel(attribution)
    bg_slices, heat_slices = _slices(background, peak), _slices(heat, peak)
    fig, axes = plt.subplots(1, len(bg_slices), figsize=(3.6 * len(bg_slices) + 0.8, 3.8), squeeze=False)
    im = None
    for ax, (name, bg, (px, py)), (_, ht, _) in zip(axes[0], bg_slices, heat_slices):
        im = _overlay(ax, bg, ht)
        ax.plot([px], [py], marker="+", color="white", markersize=10, mew=1.5)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.subplots_adjust(top=0.74, bottom=0.03, left=0.02, right=0.84 if len(bg_slices) == 1 else 0.9, wspace=0.05)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, pad=0.02, label="attribution (normalised)")
    fig.suptitle(f"{title}\npeak at voxel {peak}", fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return str(path)


def _axial(volume: np.ndarray, index: int | None = None) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume
    return np.take(volume, volume.shape[2] // 2 if index is None else index, axis=2)


def summary_figure(
    path: str | os.PathLike,
    fixed: np.ndarray,
    moving: np.ndarray,
    warped: np.ndarray,
    ddf: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    title: str = "",
    columns: int = 5,
) -> str:
    """Fixed, moving, warped moving, deformation grid and every stage map side by side.

    All panels are on the fixed grid and show, for a volume, its middle slice along the third
    voxel axis (axial for RAS images); maps are normalised to [0, 1] each and drawn over the
    fixed image.

    Args:
        path: PNG file (written atomically).
        fixed: fixed image.
        moving: moving image resampled (not registered) onto the fixed grid.
        warped: registered moving image on the fixed grid.
        ddf: channel-first displacement in voxels of the fixed grid.
        maps: ``(title, map)`` pairs on the fixed grid.
        title: figure title.
        columns: panels per row.
    """
    n = 4 + len(maps)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.ravel())
    fx = _axial(fixed)
    for ax, (name, img) in zip(flat, (("fixed", fixed), ("moving (on fixed grid)", moving), ("warped moving", warped))):
        _background(ax, _axial(img))
        ax.set_title(name, fontsize=8)
    inplane = inplane_field(ddf)
    _background(flat[3], fx)
    draw_grid(flat[3], inplane, step=max(2, inplane.shape[1] // 24))
    flat[3].set_title("deformation grid", fontsize=8)
    for ax, (name, m) in zip(flat[4:], maps):
        _overlay(ax, fx, _axial(normalise_array(m)))
        ax.set_title(name, fontsize=7)
    return save_figure(fig, flat, path, title, dpi=100)
