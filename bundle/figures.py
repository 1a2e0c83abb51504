"""Matplotlib figures of a registration: images, labels, deformation grid."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402

__all__ = ["middle_slice", "inplane_field", "draw_grid", "draw_points", "pair_figure", "save_figure"]


def middle_slice(volume: np.ndarray, axis: int = 2, index: int | None = None) -> np.ndarray:
    """An axial (default) slice of a 3D volume, or the 2D image itself, oriented for display."""
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume.T
    index = volume.shape[axis] // 2 if index is None else index
    return np.take(volume, index, axis=axis).T


def inplane_field(ddf: np.ndarray) -> np.ndarray:
    """The in-plane ``(2, X, Y)`` components of a DDF at the slice :func:`middle_slice` shows."""
    ddf = np.asarray(ddf)
    return ddf[:2] if ddf.shape[0] == 2 else ddf[:2, :, :, ddf.shape[3] // 2]


def draw_grid(ax, ddf_2d: np.ndarray, step: int = 4, color: str = "yellow") -> None:
    """Draw the deformed regular grid ``x + ddf(x)`` of an in-plane 2D field ``(2, X, Y)``."""
    _, nx, ny = ddf_2d.shape
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    px, py = gx + ddf_2d[0], gy + ddf_2d[1]
    for i in range(0, nx, step):
        ax.plot(px[i, :], py[i, :], color=color, lw=0.5)
    for j in range(0, ny, step):
        ax.plot(px[:, j], py[:, j], color=color, lw=0.5)


def draw_points(ax, points: np.ndarray, shape, slab: float = 6.0) -> None:
    """Markers at ``(K, dims)`` voxel ``points`` over a :func:`middle_slice` image of ``shape``, coloured by index."""
    colours = plt.get_cmap("tab20")(np.arange(len(points)) % 20)
    keep = np.ones(len(points), dtype=bool)
    if len(shape) == 3:
        keep = np.abs(points[:, 2] - shape[2] // 2) <= slab
    ax.scatter(points[keep, 0], points[keep, 1], s=14, c=colours[keep], marker="o", edgecolors="white", linewidths=0.4)


def pair_figure(
    path: str | os.PathLike,
    panels: Sequence[tuple[str, np.ndarray]],
    label_panels: Sequence[tuple[str, np.ndarray]] = (),
    ddf: np.ndarray | None = None,
    title: str | None = None,
    points: Sequence[np.ndarray | None] = (),
    slab: float = 6.0,
) -> str:
    """Save a row of image panels, optional label maps and a deformation-grid panel as a PNG.

    Args:
        path: PNG file to write (atomically).
        panels: (title, 2D or 3D image) pairs; 3D images show their middle axial slice.
        label_panels: (title, integer label map) pairs drawn with a categorical colour map.
        ddf: optional channel-first voxel DDF; its in-plane components at the middle axial
            slice are drawn as a deformed grid over the first panel.
        title: figure title.
        points: per image panel, ``(K, dims)`` voxel coordinates of keypoints (or ``None``),
            drawn as markers coloured by index, so that point ``k`` has one colour in every
            panel; in 3D only those within ``slab`` voxels of the shown slice.
    """
    n = len(panels) + len(label_panels) + (ddf is not None)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.4))
    axes = np.atleast_1d(axes)
    k = 0
    for i, (name, img) in enumerate(panels):
        axes[k].imshow(middle_slice(img), cmap="gray", origin="lower")
        axes[k].set_title(name, fontsize=9)
        if i < len(points) and points[i] is not None:
            draw_points(axes[k], np.asarray(points[i]), np.asarray(img).shape, slab)
        k += 1
    for name, lab in label_panels:
        axes[k].imshow(middle_slice(lab), cmap="tab10", vmin=0, vmax=9, origin="lower", interpolation="nearest")
        axes[k].set_title(name, fontsize=9)
        k += 1
    if ddf is not None:
        inplane = inplane_field(ddf)
        axes[k].imshow(middle_slice(panels[0][1]), cmap="gray", origin="lower")
        draw_grid(axes[k], inplane, step=max(2, inplane.shape[1] // 24))
        axes[k].set_title("deformation grid", fontsize=9)
    return save_figure(fig, axes, path, title, dpi=110)


def save_figure(fig, axes, path: str | os.PathLike, title: str | None = None, dpi: int = 110) -> str:
    """Hide the axes, add the title, and write the figure as a PNG atomically; closes it."""
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return str(path)
