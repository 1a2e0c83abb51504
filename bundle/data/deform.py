"""Random spatial transforms in voxel coordinates, and the helpers to combine and invert them.

Conventions (those of :mod:`bundle.io`): coordinates are array indices; a displacement field
(DDF) is channel-first, ``(dims, *spatial)``, in voxels, with channel ``i`` along array axis
``i``. A DDF ``d`` stands for the map ``phi_d(x) = x + d(x)``; an affine is a
``(dims + 1) x (dims + 1)`` homogeneous matrix acting on voxel coordinates. Everything works
in 2D and 3D.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "CHOI_LEE_BOUND",
    "identity_grid",
    "transform_points",
    "random_affine",
    "random_elastic",
    "random_motion",
    "MotionRange",
    "compose_affine_ddf",
    "invert_affine",
    "invert_map_at",
    "sample_linear",
    "resample",
]

#: Cubic B-spline free-form deformations whose control displacements stay below this fraction
#: of the control spacing are diffeomorphic (Choi & Lee, 2000: 1/2.479 in 3D, 1/2.046 in 2D).
CHOI_LEE_BOUND = 1.0 / 2.479

RngLike = np.random.Generator | int | None


def identity_grid(shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates of a grid, ``(len(shape), *shape)`` float32."""
    return np.indices(tuple(shape), dtype=np.float32)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous ``(dims+1)^2`` matrix to channel-first points ``(dims, *P)``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    dims = matrix.shape[0] - 1
    if points.shape[0] != dims:
        raise ValueError(f"points have {points.shape[0]} coordinates, the matrix acts on {dims}")
    linear = matrix[:dims, :dims].astype(np.float32)
    shift = matrix[:dims, dims].astype(np.float32).reshape(dims, *([1] * (points.ndim - 1)))
    return np.tensordot(linear, points.astype(np.float32, copy=False), axes=(1, 0)) + shift


def _uniform(rng: np.random.Generator, bound: float, size: int) -> np.ndarray:
    if bound < 0:
        raise ValueError(f"ranges must be non-negative, got {bound}")
    return rng.uniform(-bound, bound, size=size)


def _rotation(angles_rad: np.ndarray, dims: int) -> np.ndarray:
    if dims == 2:
        c, s = np.cos(angles_rad[0]), np.sin(angles_rad[0])
        return np.array([[c, -s], [s, c]])
    rot = np.eye(3)
    for axis, angle in enumerate(angles_rad):  # rotation about array axis 0, then 1, then 2
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
        rot = step @ rot
    return rot


def random_affine(
    rng: RngLike,
    dims: int,
    rotation_deg: float = 10.0,
    translation_vox: float = 4.0,
    scale: float = 0.1,
    shear: float = 0.05,
    center: Sequence[float] | None = None,
) -> np.ndarray:
    """Sample a random affine map of voxel coordinates, centred on ``center``.

    The map is ``x -> M (x - c) + c + t`` with ``M = R @ H @ S``: rotation ``R`` (one angle in
    2D, one per axis in 3D) uniform in ``±rotation_deg``, upper-triangular shear ``H`` with
    entries uniform in ``±shear``, per-axis scaling ``S`` uniform in ``1 ± scale`` and
    translation ``t`` uniform in ``±translation_vox`` per axis.

    Args:
        rng: random generator or seed.
        dims: 2 or 3.
        rotation_deg: rotation range in degrees.
        translation_vox: translation range in voxels.
        scale: relative scaling range, in [0, 1).
        shear: shear range.
        center: centre of rotation/scaling in voxel coordinates, e.g. ``(n - 1) / 2`` per axis;
            defaults to the origin.

    Returns:
        A ``(dims + 1) x (dims + 1)`` float64 homogeneous matrix with positive determinant.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if not 0.0 <= scale < 1.0:
        raise ValueError(f"scale must be in [0, 1), got {scale}")
    rng = np.random.default_rng(rng)
    n_angles = 1 if dims == 2 else 3
    rotation = _rotation(np.deg2rad(_uniform(rng, rotation_deg, n_angles)), dims)
    shearing = np.eye(dims)
    shearing[np.triu_indices(dims, k=1)] = _uniform(rng, shear, dims * (dims - 1) // 2)
    scaling = np.diag(1.0 + _uniform(rng, scale, dims))
    translation = _uniform(rng, translation_vox, dims)
    linear = rotation @ shearing @ scaling
    c = np.zeros(dims) if center is None else np.asarray(center, dtype=np.float64)
    matrix = np.eye(dims + 1)
    matrix[:dims, :dims] = linear
    matrix[:dims, dims] = c - linear @ c + translation
    return matrix


def _bspline_weights(n_out: int, spacing: float) -> np.ndarray:
    """``(n_out, n_ctrl)`` cubic B-spline weights of control points ``(k - 1) * spacing``."""
    n_ctrl = int(np.floor((n_out - 1) / spacing)) + 4
    t = np.arange(n_out, dtype=np.float64)[:, None] / spacing + 1.0 - np.arange(n_ctrl)[None, :]
    u = np.abs(t)
    weights = np.where(u < 1.0, 2.0 / 3.0 - u**2 + 0.5 * u**3, np.where(u < 2.0, (2.0 - u) ** 3 / 6.0, 0.0))
    return weights.astype(np.float32)


def random_elastic(
    rng: RngLike,
    shape: Sequence[int],
    max_disp_vox: float = 2.0,
    control_spacing: float = 12.0,
) -> np.ndarray:
    """Sample a smooth random displacement: a cubic B-spline free-form deformation.

    Control points on a grid of ``control_spacing`` voxels (one extra point beyond each border)
    get displacements uniform in ``±max_disp_vox`` per axis; the dense field is their cubic
    B-spline interpolation, applied separably. B-spline weights are non-negative and sum to one,
    so ``|e_i(x)| <= max_disp_vox`` everywhere, and ``max_disp_vox`` below
    :data:`CHOI_LEE_BOUND` times the spacing guarantees ``x -> x + e(x)`` is a diffeomorphism.

    Args:
        rng: random generator or seed.
        shape: spatial shape, 2D or 3D.
        max_disp_vox: displacement range of the control points, in voxels.
        control_spacing: control point spacing, in voxels.

    Returns:
        A channel-first float32 DDF of shape ``(len(shape), *shape)`` in voxels.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    if control_spacing <= 0 or max_disp_vox < 0:
        raise ValueError("control_spacing must be positive and max_disp_vox non-negative")
    if max_disp_vox >= CHOI_LEE_BOUND * control_spacing:
        raise ValueError(
            f"max_disp_vox={max_disp_vox} must stay below {CHOI_LEE_BOUND:.3f} * control_spacing "
            f"({CHOI_LEE_BOUND * control_spacing:.3f}) for the deformation to be invertible"
        )
    rng = np.random.default_rng(rng)
    weights = [_bspline_weights(n, control_spacing) for n in shape]
    field = rng.uniform(-max_disp_vox, max_disp_vox, size=(len(shape), *[w.shape[1] for w in weights]))
    field = field.astype(np.float32)
    for axis, w in enumerate(weights):  # separable interpolation, one axis at a time
        field = np.moveaxis(np.tensordot(w, field, axes=(1, axis + 1)), 0, axis + 1)
    return np.ascontiguousarray(field)


def random_motion(
    rng: RngLike,
    shape: Sequence[int],
    rotation_deg: float = 10.0,
    translation_vox: float = 4.0,
    scale: float = 0.1,
    shear: float = 0.05,
    elastic_vox: float = 2.0,
    control_spacing: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The random map ``x -> A (x + e(x))`` of the generated pairs: affine ``A`` about the grid centre,
    then (when ``elastic_vox`` > 0) a B-spline elastic DDF ``e``, drawn in that order from ``rng``.

    Returns:
        ``(A, e)``: the ``(dims + 1)^2`` matrix of :func:`random_affine` and the channel-first DDF of
        :func:`random_elastic` (zeros when ``elastic_vox`` is 0); :func:`compose_affine_ddf` gives the map's DDF.
    """
    shape = tuple(int(s) for s in shape)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    matrix = random_affine(rng, len(shape), rotation_deg, translation_vox, scale, shear, centre)
    if elastic_vox > 0:
        elastic = random_elastic(rng, shape, elastic_vox, control_spacing)
    else:
        elastic = np.zeros((len(shape), *shape), dtype=np.float32)
    return matrix, elastic


@dataclass(frozen=True)
class MotionRange:
    """Ranges of the random motion of a generated moving image, in physical units.

    One object for the evaluation pairs (:func:`bundle.data.pairs.generate_pair`) and the
    training pairs (:class:`bundle.data.synth.SynthPairGenerator`).

    Attributes:
        rotation_deg: rotation range (per axis in 3D), degrees.
        translation_mm: translation range per axis, mm.
        scale: relative scaling range per axis.
        shear: shear range.
        elastic_mm: displacement range of the B-spline control points, mm; 0 disables it.
        control_spacing_mm: B-spline control point spacing, mm.
    """

    rotation_deg: float = 10.0
    translation_mm: float = 8.0
    scale: float = 0.08
    shear: float = 0.04
    elastic_mm: float = 4.0
    control_spacing_mm: float = 32.0

    @classmethod
    def none(cls) -> MotionRange:
        """No motion at all (aligned "null" pairs)."""
        return cls(rotation_deg=0.0, translation_mm=0.0, scale=0.0, shear=0.0, elastic_mm=0.0)

    def sample(self, rng: RngLike, shape: Sequence[int], spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """:func:`random_motion` of these ranges on a grid of ``spacing_mm`` voxels: ``(A, e)`` in voxels."""
        s = float(spacing_mm)
        return random_motion(
            rng, shape, self.rotation_deg, self.translation_mm / s, self.scale, self.shear, self.elastic_mm / s, self.control_spacing_mm / s
        )


def compose_affine_ddf(matrix: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    """DDF of ``x -> A (x + ddf(x))``, the affine applied after the DDF (exact, no resampling)."""
    grid = identity_grid(ddf.shape[1:])
    return transform_points(matrix, grid + ddf) - grid


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a homogeneous affine matrix."""
    return np.linalg.inv(np.asarray(matrix, dtype=np.float64))


def invert_map_at(
    ddf: np.ndarray,
    points: np.ndarray,
    iterations: int = 30,
    tolerance: float = 1e-3,
    strict: bool = False,
) -> np.ndarray:
    """Solve ``w + ddf(w) = z`` for each point ``z`` by the fixed-point iteration ``w <- z - ddf(w)``.

    The iteration converges when ``ddf`` is a contraction (its Jacobian norm stays below one),
    which holds for moderate :func:`random_elastic` fields; it stops once no point moves by
    more than ``tolerance`` voxels. Check the result with ``w + sample_linear(ddf, w) - z``.

    Args:
        ddf: channel-first DDF ``(dims, *spatial)`` in voxels.
        points: channel-first points ``(dims, *P)`` in voxel coordinates of the same grid.
        iterations: maximal number of iterations.
        tolerance: convergence threshold in voxels.
        strict: raise instead of warn when the iteration has not converged.

    Returns:
        The preimages ``w``, float32 of the shape of ``points``.

    Raises:
        RuntimeError: with ``strict``, if the iteration did not converge.
    """
    points = np.asarray(points, dtype=np.float32)
    estimate = points.copy()
    change = np.inf
    for _ in range(iterations):
        update = points - sample_linear(ddf, estimate)
        change = float(np.abs(update - estimate).max()) if update.size else 0.0
        estimate = update
        if change < tolerance:
            return estimate
    message = (
        f"inverting the displacement did not converge in {iterations} iterations (last step {change:.3g} voxels); "
        "the field is too strong to invert this way"
    )
    if strict:
        raise RuntimeError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return estimate


def sample_linear(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Linearly interpolate a channel-first field ``(C, *spatial)`` at points ``(dims, *P)``.

    Out-of-grid points take the border value, i.e. ``scipy.ndimage.map_coordinates(order=1,
    mode="nearest")`` per channel, but all channels in one multithreaded ``grid_sample`` call.

    Returns:
        float32 array ``(C, *P)``.
    """
    spatial = field.shape[1:]
    dims = len(spatial)
    if points.shape[0] != dims:
        raise ValueError(f"points have {points.shape[0]} coordinates for a {dims}D field")
    out_shape = points.shape[1:]
    flat = np.asarray(points, dtype=np.float32).reshape(dims, -1)
    grid = np.empty((flat.shape[1], dims), dtype=np.float32)  # grid_sample wants (last axis, ..., first)
    for axis, n in enumerate(spatial):
        column = grid[:, dims - 1 - axis]
        np.multiply(flat[axis], np.float32(2.0 / max(n - 1, 1)), out=column)
        column -= np.float32(1.0)
    grid = torch.from_numpy(grid).reshape(1, *([1] * (dims - 1)), -1, dims)
    field = np.ascontiguousarray(field, dtype=np.float32)
    source = torch.from_numpy(field if field.flags.writeable else field.copy())[None]
    with torch.no_grad():
        values = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(field.shape[0], *out_shape).numpy()


def resample(image: np.ndarray, points: np.ndarray, order: int = 1, mode: str = "nearest") -> np.ndarray:
    """Sample a spatial-first image at points ``(dims, *P)`` like ``scipy.ndimage.map_coordinates``.

    Use ``order=1`` or 3 for intensities (float32 result) and ``order=0`` for labels (dtype
    kept). Linear interpolation with ``mode="nearest"`` runs through :func:`sample_linear`.
    """
    if order == 1 and mode == "nearest":
        return sample_linear(np.asarray(image)[None], points)[0]
    output = np.float32 if order > 0 else image.dtype
    return ndimage.map_coordinates(image, points, order=order, mode=mode, output=output, prefilter=order > 1)
