"""Scalars that the Grad-CAM maps explain: functions of a :class:`RegistrationOutput` and the inputs.

Every target maps ``(output, moving, fixed)`` to one value per batch item, shape ``(B,)``, and
is differentiable, so that Grad-CAM can take its gradient with respect to a layer.

Affine parameters come from a decomposition of ``theta = [M | t]`` (centred voxel
coordinates of the network grid, the map ``p -> M p + t`` from a fixed-grid point to the
point sampled in the moving image):

``M = R @ diag(s) @ (I + H)``, with ``R`` a proper rotation, ``s`` the scales and ``H``
strictly upper triangular (the shears). This is the QR decomposition of ``M`` with the
diagonal of the triangular factor made positive (the last scale turns negative for a
reflection). Unlike the polar decomposition (an SVD), it has a well-defined gradient at
the identity, where all singular values coincide, which is exactly where an untrained or
well-initialised affine head sits. Rotation angles (radians) are, in 2D, the angle of
``R``; in 3D, the extrinsic x-y-z Euler angles with ``R = Rz(rz) @ Ry(ry) @ Rx(rx)``.
``x, y, z`` are the network grid's voxel axes 0, 1, 2 (right, anterior, superior: the
network grid is RAS). ``t`` is the displacement of the grid centre, in voxels or, with the
``_mm`` suffix, millimetres (``t * spacing``); a positive ``translation_x`` means the fixed
image's centre is found further along +x in the moving image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from ..losses.mutual_information import SparseMutualInformationLoss
from ..networks.regnet import RegistrationOutput

__all__ = [
    "AXES",
    "Target",
    "affine_parameter_names",
    "decompose_affine",
    "compose_affine",
    "euler_to_rotation",
    "target_names",
    "expand_target_names",
    "make_target",
]

AXES = ("x", "y", "z")

TargetFn = Callable[[RegistrationOutput, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Target:
    """A named differentiable scalar of a registration.

    Attributes:
        name: identifier used in file names and reports (e.g. ``translation_x_mm``).
        description: one line saying what the value means and its unit.
        fn: ``fn(output, moving, fixed) -> (B,)``.
        needs_synthesis: the forward pass must run the synthesis decoders.
        needs_backward: the forward pass must compute the fixed-onto-moving direction.
    """

    name: str
    description: str
    fn: TargetFn
    needs_synthesis: bool = False
    needs_backward: bool = False

    def __call__(self, output: RegistrationOutput, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        value = self.fn(output, moving, fixed)
        if value.ndim != 1 or value.shape[0] != moving.shape[0]:
            raise ValueError(f"target {self.name!r} must return shape ({moving.shape[0]},), got {tuple(value.shape)}.")
        return value


# -- affine decomposition ---------------------------------------------------------------------


def affine_parameter_names(spatial_dims: int) -> tuple[str, ...]:
    """Names of the decomposed affine parameters, in the order of :func:`decompose_affine`."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    ax = AXES[:spatial_dims]
    rot = ("rotation",) if spatial_dims == 2 else tuple(f"rotation_{a}" for a in ax)
    shear = tuple(f"shear_{ax[i]}{ax[j]}" for i in range(spatial_dims) for j in range(i + 1, spatial_dims))
    return tuple(f"translation_{a}" for a in ax) + rot + tuple(f"scale_{a}" for a in ax) + shear


def _rot(axis: int, angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    i, j = (axis + 1) % 3, (axis + 2) % 3  # cyclic, so that every rotation is right-handed
    rows = [[one if r == k else zero for k in range(3)] for r in range(3)]
    rows[i][i], rows[i][j], rows[j][i], rows[j][j] = c, -s, s, c
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def euler_to_rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from angles (radians).

    Args:
        angles: ``(B,)`` in 2D (one angle) or ``(B, 3)`` extrinsic x-y-z Euler angles in 3D,
            ``R = Rz @ Ry @ Rx``.

    Returns:
        ``(B, 2, 2)`` or ``(B, 3, 3)``.
    """
    if angles.ndim == 1:
        c, s = torch.cos(angles), torch.sin(angles)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"angles must be (B,) in 2D or (B, 3) in 3D, got {tuple(angles.shape)}.")
    return _rot(2, angles[:, 2]) @ _rot(1, angles[:, 1]) @ _rot(0, angles[:, 0])


def compose_affine(
    translation: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor, shears: torch.Tensor | None = None
) -> torch.Tensor:
    """``theta = [R diag(s) (I + H) | t]``, the inverse of :func:`decompose_affine` (voxel units).

    Args:
        translation: ``(B, dims)`` in voxels.
        angles: ``(B,)`` (2D) or ``(B, 3)`` (3D) radians, see :func:`euler_to_rotation`.
        scales: ``(B, dims)``.
        shears: ``(B, dims * (dims - 1) / 2)`` upper-triangular entries of ``H`` row by row
            (``xy`` in 2D; ``xy, xz, yz`` in 3D); ``None`` for no shear.

    Returns:
        ``(B, dims, dims + 1)``.
    """
    dtype = translation.dtype if translation.is_floating_point() else torch.get_default_dtype()
    translation, angles, scales = (torch.as_tensor(v).to(dtype) for v in (translation, angles, scales))
    if translation.ndim != 2 or translation.shape[1] not in (2, 3):
        raise ValueError(f"translation must be (B, 2) or (B, 3), got {tuple(translation.shape)}.")
    b, d = translation.shape
    rot = euler_to_rotation(angles)
    if rot.shape[1] != d or scales.shape != (b, d):
        raise ValueError(
            f"inconsistent shapes: translation {tuple(translation.shape)}, angles {tuple(angles.shape)}, scales {tuple(scales.shape)}."
        )
    h = torch.eye(d, dtype=translation.dtype, device=translation.device).repeat(b, 1, 1)
    if shears is not None:
        iu = torch.triu_indices(d, d, offset=1)
        if tuple(shears.shape) != (b, iu.shape[1]):
            raise ValueError(f"shears must be ({b}, {iu.shape[1]}), got {tuple(shears.shape)}.")
        h[:, iu[0], iu[1]] = torch.as_tensor(shears).to(dtype)
    m = rot @ torch.diag_embed(scales) @ h
    return torch.cat([m, translation.unsqueeze(-1)], dim=2)


def decompose_affine(theta: torch.Tensor, spacing_mm: float | Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Differentiable decomposition of ``theta`` into named parameters (see the module docstring).

    Args:
        theta: ``(B, dims, dims + 1)``.
        spacing_mm: voxel size of the network grid; when given, ``translation_<a>_mm`` entries
            (``t * spacing``) are added.

    Returns:
        dict of ``(B,)`` tensors keyed by :func:`affine_parameter_names` (plus the ``_mm`` translations).
    """
    if theta.ndim != 3 or theta.shape[1] not in (2, 3) or theta.shape[2] != theta.shape[1] + 1:
        raise ValueError(f"theta must be (B, dims, dims + 1) with dims 2 or 3, got {tuple(theta.shape)}.")
    d = theta.shape[1]
    m, t = theta[:, :, :d], theta[:, :, d]
    q, u = torch.linalg.qr(m)
    sign = torch.where(torch.diagonal(u, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(m.dtype)
    q, u = q * sign.unsqueeze(1), u * sign.unsqueeze(2)
    flip = torch.ones_like(sign)
    flip[:, -1] = torch.where(torch.linalg.det(q) < 0, -1.0, 1.0).to(m.dtype)
    q, u = q * flip.unsqueeze(1), u * flip.unsqueeze(2)  # proper rotation; a reflection shows as scale < 0
    scales = torch.diagonal(u, dim1=-2, dim2=-1)
    ax = AXES[:d]
    out: dict[str, torch.Tensor] = {f"translation_{a}": t[:, i] for i, a in enumerate(ax)}
    if d == 2:
        out["rotation"] = torch.atan2(q[:, 1, 0], q[:, 0, 0])
    else:
        out["rotation_x"] = torch.atan2(q[:, 2, 1], q[:, 2, 2])
        out["rotation_y"] = torch.atan2(-q[:, 2, 0], torch.sqrt(q[:, 2, 1] ** 2 + q[:, 2, 2] ** 2))
        out["rotation_z"] = torch.atan2(q[:, 1, 0], q[:, 0, 0])
    for i, a in enumerate(ax):
        out[f"scale_{a}"] = scales[:, i]
    for i in range(d):
        for j in range(i + 1, d):
            out[f"shear_{ax[i]}{ax[j]}"] = u[:, i, j] / scales[:, i]
    if spacing_mm is not None:
        sp = _spacing(spacing_mm, d)
        for i, a in enumerate(ax):
            out[f"translation_{a}_mm"] = t[:, i] * sp[i]
    return out


def _spacing(spacing_mm: float | Sequence[float], dims: int) -> list[float]:
    sp = [float(spacing_mm)] * dims if isinstance(spacing_mm, (int, float)) else [float(s) for s in spacing_mm]
    if len(sp) != dims or any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing_mm must be a positive number or {dims} positive numbers, got {spacing_mm!r}.")
    return sp


# -- other scalars ------------------------------------------------------------------------------


def _mean_displacement(
    output: RegistrationOutput, spacing: list[float] | None, roi: torch.Tensor | None, rms: bool = False
) -> torch.Tensor:
    ddf = output.forward.ddf_deformable
    if spacing is not None:
        ddf = ddf * torch.as_tensor(spacing, dtype=ddf.dtype, device=ddf.device).view(1, -1, *([1] * (ddf.ndim - 2)))
    sq = ddf.pow(2).sum(dim=1, keepdim=True)
    val = sq if rms else torch.sqrt(sq + 1e-12)
    if roi is None:
        mean = val.flatten(1).mean(dim=1)
    else:
        w = roi.to(val.dtype).expand_as(val)
        mean = (val * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)
    return torch.sqrt(mean + 1e-12) if rms else mean


def _check_roi(roi: torch.Tensor, dims: int) -> torch.Tensor:
    roi = torch.as_tensor(roi)
    if roi.ndim == dims:
        roi = roi[None, None]
    if roi.ndim != dims + 2 or roi.shape[1] != 1:
        raise ValueError(f"roi_mask must be (*spatial) or (B, 1, *spatial) with {dims} spatial dims, got {tuple(roi.shape)}.")
    if float(roi.min()) < 0 or float(roi.flatten(1).sum(dim=1).min()) <= 0:
        raise ValueError("roi_mask must be non-negative and non-empty for every batch item.")
    return roi.float()


def _lncc(dims: int) -> LocalNormalizedCrossCorrelationLoss:
    return LocalNormalizedCrossCorrelationLoss(spatial_dims=dims, kernel_size=7, reduction="none")


def _synthesis(name: str, backward: bool, kind: str, dims: int) -> Target:
    lncc = _lncc(dims) if kind == "lncc" else None

    def fn(output, moving, fixed):
        stage, target = (output.backward, moving) if backward else (output.forward, fixed)
        if stage is None or stage.synth_warped is None:
            raise ValueError(f"target {name!r} needs synthesis{' and the backward direction' if backward else ''} in the forward pass.")
        if kind == "l1":
            return -(stage.synth_warped - target).abs().flatten(1).mean(dim=1)
        return -lncc(stage.synth_warped, target).flatten(1).mean(dim=1)

    which = "fixed rendered in the moving contrast, warped onto moving, vs moving" if backward else (
        "moving rendered in the fixed contrast, warped onto fixed, vs fixed"
    )
    measure = "negative mean absolute difference" if kind == "l1" else "local normalised cross-correlation (window 7)"
    return Target(name, f"synthesis similarity ({measure}): {which}; higher is more similar", fn, True, backward)


def target_names(spatial_dims: int) -> tuple[str, ...]:
    """Every single target name :func:`make_target` accepts (besides the groups ``affine``/``affine_mm``)."""
    aff = affine_parameter_names(spatial_dims)
    mm = tuple(f"translation_{a}_mm" for a in AXES[:spatial_dims])
    disp = tuple(f"displacement{r}{o}{m}" for r in ("", "_rms") for o in ("", "_roi") for m in ("", "_mm"))
    syn = ("synthesis_l1", "synthesis_lncc", "synthesis_ba_l1", "synthesis_ba_lncc")
    return aff + mm + disp + ("similarity",) + syn


def expand_target_names(names: str | Sequence[str], spatial_dims: int) -> list[str]:
    """Expand the groups ``affine`` (every decomposed parameter, translations in voxels) and
    ``affine_mm`` (translations in mm) and check every name.

    Raises:
        ValueError: naming an unknown target and listing the known ones.
    """
    names = [names] if isinstance(names, str) else list(names)
    known = target_names(spatial_dims)
    out: list[str] = []
    for n in names:
        if n == "affine":
            out += list(affine_parameter_names(spatial_dims))
        elif n == "affine_mm":
            out += [f"{p}_mm" if p.startswith("translation_") else p for p in affine_parameter_names(spatial_dims)]
        elif n in known:
            out.append(n)
        else:
            raise ValueError(f"unknown target {n!r} for {spatial_dims}D; expected 'affine', 'affine_mm' or one of {list(known)}.")
    return list(dict.fromkeys(out))


def make_target(
    name: str,
    spatial_dims: int,
    spacing_mm: float | Sequence[float] | None = None,
    roi_mask: torch.Tensor | None = None,
    mi_bins: int = 32,
) -> Target:
    """Build the named target.

    Names (``<a>`` an axis among ``x, y[, z]``):

    * ``translation_<a>`` (voxels), ``translation_<a>_mm``, ``rotation`` (2D) or
      ``rotation_<a>`` (3D, radians), ``scale_<a>``, ``shear_<a><b>``: decomposed affine
      parameters of the moving-onto-fixed affine stage (module docstring).
    * ``displacement`` / ``displacement_mm``: mean magnitude of the deformable stage's
      displacement (``ddf_deformable``, voxels or mm) over the whole grid;
      ``displacement_roi`` / ``displacement_roi_mm``: its mean inside ``roi_mask``;
      ``displacement_rms[_roi][_mm]``: the root mean square instead of the mean (its
      gradient weights each voxel by its displacement, where the mean's weights every
      voxel's unit direction equally, however small the displacement).
    * ``similarity``: Mattes mutual information between the warped moving and the fixed
      image, the similarity training optimises (negated :class:`SparseMutualInformationLoss`
      with ``mi_bins`` bins, as in :class:`bundle.losses.RegistrationLoss`; higher is more similar).
    * ``synthesis_l1`` / ``synthesis_lncc``: similarity of ``forward.synth_warped`` (moving
      rendered in the fixed contrast by ``decoder_ab``, then warped) and the fixed image;
      ``synthesis_ba_l1`` / ``synthesis_ba_lncc``: of ``backward.synth_warped``
      (``decoder_ba``) and the moving image.

    Args:
        name: a name of :func:`target_names`.
        spatial_dims: 2 or 3.
        spacing_mm: network grid voxel size, needed by the ``_mm`` targets.
        roi_mask: ``(*spatial)`` or ``(B, 1, *spatial)`` non-negative weights, needed by the
            ``displacement_roi`` targets.
        mi_bins: histogram bins of the mutual information.
    """
    if name not in target_names(spatial_dims):
        expand_target_names(name, spatial_dims)  # raises with the list of known names
        raise ValueError(f"{name!r} is a group of targets; expand it with expand_target_names first.")
    mm = name.endswith("_mm")
    if mm and spacing_mm is None:
        raise ValueError(f"target {name!r} is in mm and needs spacing_mm (the network grid voxel size).")
    spacing = _spacing(spacing_mm, spatial_dims) if mm else None
    if name in affine_parameter_names(spatial_dims) or name.startswith("translation_"):
        unit = "mm" if mm else ("voxels" if name.startswith("translation") else "radians" if name.startswith("rotation") else "ratio")

        def affine_fn(output, moving, fixed):
            return decompose_affine(output.forward.theta, spacing)[name]

        return Target(name, f"affine stage parameter {name} ({unit}) of theta = [R diag(s) (I + H) | t]", affine_fn)
    if name.startswith("displacement"):
        roi = None
        if "_roi" in name:
            if roi_mask is None:
                raise ValueError(f"target {name!r} needs a roi_mask.")
            roi = _check_roi(roi_mask, spatial_dims)
        rms = "_rms" in name

        def disp_fn(output, moving, fixed):
            r = None if roi is None else roi.to(moving.device)
            return _mean_displacement(output, spacing, r, rms)

        where = "inside the ROI mask" if roi is not None else "over the whole grid"
        what = "root mean square" if rms else "mean"
        return Target(name, f"{what} displacement magnitude of the deformable stage {where} ({'mm' if mm else 'voxels'})", disp_fn)
    if name == "similarity":
        mi = SparseMutualInformationLoss(num_bins=mi_bins, reduction="none")

        def sim_fn(output, moving, fixed):
            return -mi(output.forward.warped, fixed)

        description = "Mattes mutual information (the training similarity) between the registered moving image and the fixed image; higher is more similar"
        return Target(name, description, sim_fn)
    backward = "_ba_" in name
    return _synthesis(name, backward, name.rsplit("_", 1)[1], spatial_dims)
