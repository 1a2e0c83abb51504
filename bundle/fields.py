"""Geometry of registration maps in world coordinates (RAS millimetres).

A registration result is the map ``phi`` from fixed-image points to moving-image points
(the resampling convention of ITK: ``warped(x) = moving(phi(x))``). The network builds it
as ``phi = A o psi``: a deformable map ``psi`` (the exponential of a stationary velocity
field) followed by an affine ``A`` (which includes the initialisation's translation). These
functions turn the network's voxel-space pieces into world-space ones and invert them:

* :func:`theta_to_world`: the affine stage as a ``(dims + 1)^2`` RAS matrix;
* :func:`lps_flip`, :func:`ras_to_lps`: vectors and matrices in ITK's LPS convention;
* :func:`apply_affine`: an affine applied to a field of world points;
* :func:`centered_grid`, :func:`affine_to_ddf`, :func:`theta_on_coarser_grid`, :func:`compose_ddf`: the network's voxel-space
  fields (``Warp`` convention, ``warped(x) = moving(x + ddf(x))``), shared by the network, the
  refinement and its explanations;
* :func:`linear_part`, :func:`spacing_from_affine`: voxel -> mm linear maps and voxel sizes;
* :func:`jacobian_determinant`: of ``x -> x + ddf(x)`` (the metrics' folding and SDlogJ use it);
* :func:`invert_displacement`: fixed-point inverse of a displacement field (for heads that
  do not integrate a velocity field; with a velocity field the inverse is ``exp(-v)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks import Warp

__all__ = [
    "centered_grid", "affine_to_ddf", "theta_on_coarser_grid", "compose_theta", "compose_ddf", "compose_affine_ddf",
    "theta_to_world", "lps_flip", "ras_to_lps", "apply_affine",
    "invert_displacement", "inside_grid", "inverse_consistency_mm",
    "check_ddf", "as_float", "linear_part", "spacing_from_affine", "jacobian_determinant",
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


def theta_on_coarser_grid(theta: torch.Tensor, factor) -> torch.Tensor:
    """``theta`` (centred voxels) on a grid ``factor`` times coarser about the same centre: its translation in that grid's voxels."""
    d = theta.shape[1]
    return torch.cat([theta[:, :, :d], theta[:, :, d:] / factor], dim=2)


def compose_theta(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``theta`` of the point map ``p -> first(second(p))`` (both ``(B, dims, dims + 1)``, centred voxels).

    Warping by ``first`` and then by ``second`` (``Warp(Warp(img, first), second)``) is warping
    by this one affine.
    """
    d = first.shape[1]
    m = first[:, :, :d] @ second[:, :, :d]
    t = first[:, :, :d] @ second[:, :, d:] + first[:, :, d:]
    return torch.cat([m, t], dim=2)


def compose_ddf(first: torch.Tensor, second: torch.Tensor, warp: Warp) -> torch.Tensor:
    """DDF of warping by ``first`` then by ``second``: ``second(x) + first(x + second(x))``.

    ``Warp(Warp(img, first), second)(x) = img(x + second(x) + first(x + second(x)))``.
    """
    return second + warp(first, second)


def compose_affine_ddf(theta: torch.Tensor, ddf_affine: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """:func:`compose_ddf` for an affine ``first``, exactly and without resampling.

    For ``first = affine_to_ddf(theta, size)`` (``p -> M p + t``), ``first(x + u) = first(x) + (M - I) u``,
    so warping by ``first`` then by ``second`` is ``ddf_affine(x) + M second(x)``. Unlike
    :func:`compose_ddf`, points that ``second`` moves off the grid get the affine's own value,
    not the border's, and the cost is one matrix product instead of a field resampling.

    Args:
        theta: ``(B, dims, dims + 1)``, as for :func:`affine_to_ddf`.
        ddf_affine: ``affine_to_ddf(theta, size)``.
        second: ``(B, dims, *size)`` displacement applied first to the points.
    """
    dims = second.shape[1]
    return ddf_affine + torch.einsum("bij,bj...->bi...", theta[:, :, :dims], second)


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


# ----------------------------------------------------------------------------- voxel fields and spacing


def check_ddf(ddf: torch.Tensor, name: str = "ddf") -> int:
    """Number of spatial dimensions of a ``(B, dims, *S)`` displacement field; ``ValueError`` otherwise."""
    dims = ddf.ndim - 2
    if ddf.ndim < 3 or ddf.shape[1] != dims:
        raise ValueError(
            f"expected a channel-first {name} of shape (B, dims, *spatial) with dims == len(spatial), "
            f"got {tuple(ddf.shape)}"
        )
    return dims


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a floating-point tensor (integers become float32)."""
    return t if torch.is_floating_point(t) else t.float()


def linear_part(affine_or_spacing, dims: int, batch: int) -> torch.Tensor:
    """Voxel -> mm linear map as a float64 ``(B, dims, dims)`` tensor.

    Accepts a scalar or ``dims`` spacings (diagonal), a square matrix of size ``>= dims``
    (e.g. a 4x4 affine; its top-left ``dims x dims`` block), or a batch ``(B or 1, n, n)`` of them.
    """
    t = torch.as_tensor(np.asarray(affine_or_spacing, dtype=np.float64))
    if t.ndim == 0:
        mat = torch.eye(dims, dtype=torch.float64) * t
        mat = mat[None]
    elif t.ndim == 1:
        if t.shape[0] != dims:
            raise ValueError(f"expected {dims} voxel spacings, got spacing of shape {tuple(t.shape)}")
        mat = torch.diag(t)[None]
    elif t.ndim in (2, 3):
        if t.ndim == 2:
            t = t[None]
        if t.shape[-1] != t.shape[-2] or t.shape[-1] < dims or t.shape[0] not in (1, batch):
            raise ValueError(
                f"expected an affine of shape (n, n) or ({batch} or 1, n, n) with n >= {dims}, got {tuple(t.shape)}"
            )
        mat = t[:, :dims, :dims]
    else:
        raise ValueError(f"expected spacing or affine, got an array of shape {tuple(t.shape)}")
    return mat.expand(batch, dims, dims)


def spacing_from_affine(affine: torch.Tensor | np.ndarray, dims: int) -> list[float]:
    """Voxel spacing in mm: the column norms of the top-left ``dims x dims`` block of ``affine``.

    Args:
        affine: ``(n, n)`` voxel -> RAS mm matrix with ``n >= dims`` (usually 4x4).
        dims: number of spatial dimensions (2 or 3).
    """
    mat = linear_part(affine, dims, 1)[0]
    return [float(v) for v in torch.linalg.norm(mat, dim=0)]


def jacobian_determinant(ddf: torch.Tensor, spacing: float | Sequence[float] | None = None) -> torch.Tensor:
    """Determinant of the Jacobian of the map ``phi(x) = x + ddf(x)``.

    Derivatives are finite differences as :func:`numpy.gradient` (``torch.gradient``): central
    inside, first-order one-sided at the borders; an axis of size 1 has zero derivative.

    ``ddf`` is in voxel units of the fixed grid, so ``phi`` maps fixed voxels to (moving) voxels on
    the same grid. Expressed in millimetres with the linear part ``M`` of the affine the map becomes
    ``M phi M^-1``, whose Jacobian ``M J M^-1`` is similar to ``J``: **the determinant does not
    depend on the spacing or direction**. ``spacing`` is therefore optional; when given, the
    Jacobian is formed in mm (``J_ij = delta_ij + s_i / s_j * d u_i / d x_j``), which gives the same
    determinant up to rounding.

    Args:
        ddf: ``(B, dims, *S)`` displacement field in voxels, channel ``i`` along spatial axis ``i``.
        spacing: optional voxel spacing (scalar or ``dims`` values); does not change the result.

    Returns:
        ``(B, 1, *S)`` tensor.
    """
    dims = check_ddf(ddf)
    ddf = as_float(ddf)
    scale = None
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp.size == 1:
            sp = np.repeat(sp, dims)
        if sp.size != dims or np.any(sp <= 0):
            raise ValueError(f"expected a positive scalar spacing or {dims} values, got {np.asarray(spacing)}")
        scale = sp
    spatial_dims = [d + 2 for d in range(dims) if ddf.shape[d + 2] >= 2]
    grads = dict(zip(spatial_dims, torch.gradient(ddf, dim=spatial_dims))) if spatial_dims else {}
    zeros = torch.zeros_like(ddf[:, 0])
    jac = [[None] * dims for _ in range(dims)]
    for i in range(dims):
        for j in range(dims):
            g = grads[j + 2][:, i] if (j + 2) in grads else zeros
            if scale is not None and i != j:
                g = g * float(scale[i] / scale[j])
            jac[i][j] = g + 1.0 if i == j else g
    if dims == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    elif dims == 3:
        (a, b, c), (d, e, f), (g, h, k) = jac
        det = a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)
    else:
        det = torch.linalg.det(torch.stack([torch.stack(row, dim=-1) for row in jac], dim=-2))
    return det.unsqueeze(1)
