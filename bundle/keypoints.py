"""The keypoint affine head's corresponding points in world coordinates, and their CSV file.

``keypoints.csv`` has two rows per keypoint, one per image: ``keypoint, image (fixed|moving),
weight, x_ras, y_ras[, z_ras], residual_mm``, RAS mm. ``weight`` is the point's weight in the
affine fit, ``residual_mm`` the distance between the moving point and the fixed point mapped
by the network's affine (small: the pair agrees with the fit). The file reads back with
:func:`bundle.points.read_points`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from .fields import theta_to_world
from .io import atomic_write

__all__ = ["network_keypoints", "write_keypoints", "read_keypoints", "world_to_voxel"]


def _apply(affine, points: np.ndarray) -> np.ndarray:
    """``(dims + 1)^2`` ``affine`` applied to ``(N, dims)`` points."""
    a = np.asarray(affine, dtype=np.float64)
    d = points.shape[1]
    return points @ a[:d, :d].T + a[:d, d]


def network_keypoints(network, moving: torch.Tensor, fixed: torch.Tensor, net_affine, t_init) -> dict | None:
    """The keypoints of a pair on the network grid, as world points; ``None`` without a keypoint head.

    Args:
        network: a :class:`bundle.networks.MultiModalRegNet`.
        moving, fixed: ``(1, 1, *S)`` the pair on the network grid (``moving`` shifted by ``t_init``).
        net_affine: spatial voxel-to-world affine of the network grid.
        t_init: the initialisation's world translation: a moving-grid point ``x`` shows the moving
            image at ``x + t_init``.

    Returns:
        ``fixed_ras``, ``moving_ras`` ``(K, dims)``, ``weight`` ``(K,)``, ``residual_mm`` ``(K,)``.
    """
    if getattr(network, "affine", None) != "keypoints":
        return None
    shape = tuple(moving.shape[2:])
    with torch.no_grad():
        pm, pf = network.keypoints(moving, fixed)
        theta = network.affine_head.fit(pf, pm, shape)[0].double().cpu().numpy()
        weight = network.affine_head.weights.double().cpu().numpy()
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    fixed_ras = _apply(net_affine, pf[0].double().cpu().numpy() + centre)
    moving_ras = _apply(net_affine, pm[0].double().cpu().numpy() + centre) + np.asarray(t_init, dtype=np.float64)
    mapped = _apply(theta_to_world(theta, net_affine, shape, t_init), fixed_ras)
    return {"fixed_ras": fixed_ras, "moving_ras": moving_ras, "weight": weight, "residual_mm": np.linalg.norm(mapped - moving_ras, axis=1)}


def write_keypoints(path: str | os.PathLike, keypoints: dict) -> Path:
    """Write :func:`network_keypoints`' result as ``keypoints.csv`` (atomically)."""
    dims = keypoints["fixed_ras"].shape[1]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["keypoint", "image", "weight", *[f"{a}_ras" for a in "xyz"[:dims]], "residual_mm"])
    for k in range(len(keypoints["weight"])):
        for image in ("fixed", "moving"):
            point = keypoints[f"{image}_ras"][k]
            writer.writerow([k, image, f"{keypoints['weight'][k]:.6f}", *[f"{v:.6f}" for v in point], f"{keypoints['residual_mm'][k]:.6f}"])
    return atomic_write(path, lambda tmp: Path(tmp).write_text(out.getvalue(), encoding="utf-8"))


def read_keypoints(path: str | os.PathLike, dims: int) -> dict[str, np.ndarray]:
    """``{"fixed": (K, dims), "moving": (K, dims)}`` RAS points of a ``keypoints.csv``."""
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    axes = [f"{a}_ras" for a in "xyz"[:dims]]
    return {image: np.array([[float(r[a]) for a in axes] for r in rows if r["image"] == image]) for image in ("fixed", "moving")}


def world_to_voxel(points: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    """``(K, dims)`` RAS points as voxel coordinates of an image with NIfTI affine ``affine4`` (2D: z = 0)."""
    d = points.shape[1]
    homogeneous = np.concatenate([points, np.zeros((len(points), 3 - d)), np.ones((len(points), 1))], axis=1)
    return (homogeneous @ np.linalg.inv(np.asarray(affine4, dtype=np.float64)).T)[:, :d]
