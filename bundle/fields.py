"""Geometry of registration maps in world coordinates (RAS millimetres).

A registration result is the map ``phi`` from fixed-image points to moving-image points
(the resampling convention of ITK: ``warped(x) = moving(phi(x))``). The network builds it
as ``phi = A o psi``: a deformable map ``psi`` (the exponential of a stationary velocity
field) followed by an affine ``A`` (which includes the initialisation's translation). These
functions turn the network's voxel-space pieces into world-space ones and invert them:

* :func:`theta_to_world`: the affine stage as a ``(dims + 1)^2`` RAS matrix;
* :func:`lps_flip`, :func:`ras_to_lps`: vectors and matrices in ITK's LPS convention;
* :func:`apply_affine`: an affine applied to a field of world points;
* :func:`centered_grid`, :func:`affine_to_ddf`, :func:`compose_ddf`: the network's voxel-space
  fields (``Warp`` convention, ``warped(x) = moving(x + ddf(x))``), shared by the network, the
  refinement and its explanations;
* :func:`invert_displacement`: fixed-point inverse of a displacement field (for heads that
  do not integrate a velocity field; with a velocity field the inverse is ``exp(-v)``).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.blocks import Warp

__all__ = [
    "centered_grid", "affine_to_ddf", "compose_ddf", "theta_to_world", "lps_flip", "ras_to_lps", "apply_affine", "invert_displacement", "inside_grid",
    "inverse_consistency_mm",
]


def centered_grid(spatial_size, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates relative to the grid centre, shape ``(dims, *spatial_size)``."""
    axes = [torch.arange(s, device=device, dtype=dtype) - (s - 1) / 2.0 for s in spatial_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def affine_to_ddf(theta: torch.Tensor, spatial_size) -> torch.Tensor:
    """Dense displacement (voxel units) of the map ``p -> M p + t`` about the grid centre.

    Args:
        theta: ``(B, dims, dims + 1)``, ``[M | t]`` in voxel units, centred coordinates.
        spatial_size: the grid the field is sampled on.

    Returns:
        ``(B, dims, *spatial_size)`` displacement, for MONAI ``Warp``.
    """
    dims = len(spatial_size)
    if theta.shape[1:] != (dims, dims + 1):
        raise ValueError(f"theta must have shape (B, {dims}, {dims + 1}), got {tuple(theta.shape)}.")
    grid = centered_grid(spatial_size, device=theta.device, dtype=theta.dtype)
    eye = torch.eye(dims, device=theta.device, dtype=theta.dtype)
    lin = theta[:, :, :dims] - eye
    ddf = torch.einsum("bij,j...->bi...", lin, grid)
    return ddf + theta[:, :, dims].reshape(theta.shape[0], dims, *([1] * dims))


def compose_ddf(first: torch.Tensor, second: torch.Tensor, warp: Warp) -> torch.Tensor:
    """DDF of warping by ``first`` then by ``second``: ``second(x) + first(x + second(x))``.

    ``Warp(Warp(img, first), second)(x) = img(x + second(x) + first(x + second(x)))``.
    """
    return second + warp(first, second)


def theta_to_world(theta: np.ndarray, net_affine: np.ndarray, net_shape, initial_mm=None) -> np.ndarray:
    """Network ``theta`` (``[M | t]`` in centred voxel coordinates of the network grid) as a world affine.

    Args:
        theta: ``(dims, dims + 1)``.
        net_affine: spatial voxel-to-world affine of the network grid.
        net_shape: the network grid's size.
        initial_mm: the initialisation's world translation (RAS mm), applied after ``theta``.

    Returns:
        ``(dims + 1, dims + 1)`` RAS matrix mapping fixed points to moving points.
    """
    theta = np.asarray(theta, dtype=np.float64)
    d = len(net_shape)
    c = (np.asarray(net_shape, dtype=np.float64) - 1) / 2.0
    m, t = theta[:, :d], theta[:, d]
    voxel = np.eye(d + 1)
    voxel[:d, :d] = m
    voxel[:d, d] = t + c - m @ c
    world = net_affine @ voxel @ np.linalg.inv(net_affine)
    if initial_mm is not None:
        world[:d, d] += np.asarray(initial_mm, dtype=np.float64)
    return world


def lps_flip(dims: int) -> np.ndarray:
    """``dims x dims`` matrix between RAS and LPS coordinates (its own inverse)."""
    return np.diag([-1.0, -1.0] + [1.0] * (dims - 2))


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A ``(dims + 1)^2`` point map in RAS coordinates expressed in LPS (ITK) coordinates."""
    d = affine.shape[0] - 1
    flip = np.eye(d + 1)
    flip[:d, :d] = lps_flip(d)
    return flip @ np.asarray(affine, dtype=np.float64) @ flip


def apply_affine(affine: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``affine`` (``(dims + 1)^2``) applied to world points ``(dims, *S)``."""
    d = points.shape[0]
    a = torch.as_tensor(affine, dtype=points.dtype, device=points.device)
    return torch.einsum("ij,j...->i...", a[:d, :d], points) + a[:d, d].reshape(d, *([1] * (points.ndim - 1)))


def invert_displacement(ddf: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Inverse of a displacement field ``(B, dims, *S)`` in voxel units, by fixed-point iteration.

    Solves ``v(x) = -u(x + v(x))``, so that ``x + v(x)`` followed by ``u`` returns to ``x``;
    converges for fields whose Jacobian stays well away from folding.
    """
    warp = Warp(mode="bilinear", padding_mode="border")
    inverse = -ddf
    for _ in range(iterations):
        inverse = -warp(ddf, inverse)
    return inverse


def inside_grid(points: torch.Tensor, affine: np.ndarray, shape) -> torch.Tensor:
    """Which world points ``(dims, *S)`` fall inside the box of a grid's voxel centres."""
    d = points.shape[0]
    idx = apply_affine(np.linalg.inv(affine), points.double())
    size = torch.as_tensor(shape, dtype=idx.dtype).reshape(d, *([1] * (points.ndim - 1)))
    return ((idx >= -1e-3) & (idx <= size - 1 + 1e-3)).all(dim=0)


def inverse_consistency_mm(
    ddf_mm: torch.Tensor, fixed_affine: np.ndarray, ddf_inverse_mm: torch.Tensor, moving_affine: np.ndarray, mask: torch.Tensor | None = None
) -> dict:
    """``|phi^-1(phi(x)) - x|`` in mm over the fixed grid (inside ``mask`` and where ``phi(x)`` lies in the moving grid).

    Args:
        ddf_mm: forward displacement ``(dims, *F)`` (RAS mm) on the fixed grid.
        fixed_affine, moving_affine: the two grids' spatial affines.
        ddf_inverse_mm: inverse displacement ``(dims, *M)`` (RAS mm) on the moving grid.
        mask: boolean ``(*F)`` region, e.g. the fixed image's foreground.

    Returns:
        ``{"mean": mm, "p99": mm, "max": mm, "voxels": n}`` (``nan`` when no voxel qualifies).
    """
    from .resample import grid_world_points, sample_at_world

    x = grid_world_points(fixed_affine, ddf_mm.shape[1:])
    y = x + ddf_mm
    back = y + sample_at_world(ddf_inverse_mm, moving_affine, y, padding_mode="border")
    err = (back - x).norm(dim=0)
    keep = inside_grid(y, moving_affine, ddf_inverse_mm.shape[1:])
    if mask is not None:
        keep &= torch.as_tensor(mask, dtype=torch.bool)
    values = err[keep]
    if values.numel() == 0:
        return {"mean": float("nan"), "p99": float("nan"), "max": float("nan"), "voxels": 0}
    p99 = float(torch.quantile(values.double(), 0.99)) if values.numel() <= 2**24 else float(np.percentile(values.numpy(), 99))
    return {"mean": float(values.mean()), "p99": p99, "max": float(values.max()), "voxels": int(values.numel())}
