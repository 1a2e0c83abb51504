"""Registration metrics: overlap, surface distance, field regularity, displacement error, NMI.

Conventions (see :mod:`bundle.io`):

* Tensors are batch-first and channel-first: images ``(B, 1, *S)``, integer label maps
  ``(B, 1, *S)``, displacement fields (DDFs) ``(B, dims, *S)`` with ``dims == len(S)``
  (2D and 3D are both supported).
* A DDF is in **voxel units of the fixed grid**, channel ``i`` being the displacement along
  spatial axis ``i``, as MONAI ``Warp`` expects: ``warped(x) = moving(x + ddf(x))``.
* An ``affine`` maps voxel index to RAS millimetres; only its top-left ``dims x dims`` block
  (spacing and direction) is used here, for 2D images too.
* Per-case reductions return a tensor of shape ``(B,)`` (or ``(B, n_labels)``);
  ``bundle.evaluate.registration_metrics`` assembles them into plain floats for a single pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from .fields import as_float, check_ddf, jacobian_determinant, linear_part

__all__ = [
    "dice_per_label",
    "mean_dice",
    "hd95_per_label",
    "folding_percent",
    "sd_log_jacobian",
    "displacement_error_mm",
    "normalized_mutual_information",
    "one_hot_labels",
    "as_int_labels",
]

# ----------------------------------------------------------------------------- helpers


def _check_label_pair(pred_label: torch.Tensor, target_label: torch.Tensor) -> None:
    if pred_label.ndim < 3 or pred_label.shape[1] != 1:
        raise ValueError(f"expected a label map of shape (B, 1, *spatial), got pred_label {tuple(pred_label.shape)}")
    if pred_label.shape != target_label.shape:
        raise ValueError(
            f"pred_label and target_label must have the same shape, got {tuple(pred_label.shape)} "
            f"and {tuple(target_label.shape)}"
        )


def as_int_labels(label: torch.Tensor) -> torch.Tensor:
    """Integer view of a label map; floating inputs are rounded to the nearest integer."""
    label = torch.as_tensor(label)
    if torch.is_floating_point(label):
        label = torch.round(label)
    return label.long()


def one_hot_labels(label: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B, 1, *S)`` integer label map -> ``(B, 1 + n, *S)`` float one-hot, channel 0 = none of ``labels``."""
    fg = torch.cat([label == int(v) for v in labels], dim=1).float()
    bg = 1.0 - fg.sum(dim=1, keepdim=True).clamp(max=1.0)
    return torch.cat([bg, fg], dim=1)


def _prepare_mask(mask: torch.Tensor | None, batch: int, spatial: Sequence[int], device) -> torch.Tensor | None:
    """``(B or 1, 1, *S)`` mask -> boolean ``(B, *S)``; ``None`` stays ``None``."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=device)
    spatial = tuple(spatial)
    if mask.ndim != len(spatial) + 2 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch) or tuple(
        mask.shape[2:]
    ) != spatial:
        raise ValueError(f"expected a mask of shape ({batch} or 1, 1, *{spatial}), got {tuple(mask.shape)}")
    return (mask[:, 0] != 0).expand(batch, *spatial)


def _masked_values(values: torch.Tensor, mask: torch.Tensor | None, b: int) -> torch.Tensor:
    """Flattened values of case ``b`` of a ``(B, *S)`` tensor, restricted to the mask."""
    v = values[b]
    return v.reshape(-1) if mask is None else v[mask[b]]


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile (``numpy.percentile`` default) without ``torch.quantile``'s size limit."""
    n = values.numel()
    if n == 0:
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    v, _ = torch.sort(values.reshape(-1))
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return v[lo] + (v[hi] - v[lo]) * frac


# ----------------------------------------------------------------------------- overlap


def dice_per_label(
    pred_label: torch.Tensor,
    target_label: torch.Tensor,
    labels: Sequence[int] = (1, 2, 3),
    empty_value: float = float("nan"),
) -> torch.Tensor:
    """Dice of each listed label, computed with MONAI :func:`~monai.metrics.compute_dice`.

    Only the listed labels are scored (background is not listed: the ``include_background=False``
    semantics of :class:`~monai.metrics.DiceMetric`). A label absent from the target but present in
    the prediction scores 0; a label absent from **both** scores ``empty_value`` (``nan`` by default,
    so that :func:`mean_dice` skips it; pass ``1.0`` for the "perfect agreement" convention).

    Args:
        pred_label: integer label map ``(B, 1, *S)`` (e.g. the warped moving labels).
        target_label: integer label map ``(B, 1, *S)`` (e.g. the fixed labels).
        labels: label values to score.
        empty_value: value for a label absent from both maps.

    Returns:
        ``(B, len(labels))`` float tensor.
    """
    _check_label_pair(pred_label, target_label)
    if len(labels) == 0:
        raise ValueError("labels must not be empty")
    pred = one_hot_labels(as_int_labels(pred_label), labels)
    target = one_hot_labels(as_int_labels(target_label), labels).to(pred.device)
    # ignore_empty=False: empty target -> 1 if the prediction is empty too, else 0.
    dice = compute_dice(pred, target, include_background=False, ignore_empty=False)
    both_empty = (pred[:, 1:].flatten(2).sum(-1) == 0) & (target[:, 1:].flatten(2).sum(-1) == 0)
    return torch.where(both_empty, torch.full_like(dice, float(empty_value)), dice)


def mean_dice(
    pred_label: torch.Tensor,
    target_label: torch.Tensor,
    labels: Sequence[int] = (1, 2, 3),
) -> torch.Tensor:
    """Mean Dice over the listed labels, skipping labels absent from both maps.

    Args:
        pred_label: integer label map ``(B, 1, *S)``.
        target_label: integer label map ``(B, 1, *S)``.
        labels: label values to score.

    Returns:
        ``(B,)`` tensor (``nan`` where no listed label occurs in either map).
    """
    return torch.nanmean(dice_per_label(pred_label, target_label, labels), dim=1)


def hd95_per_label(
    pred_label: torch.Tensor,
    target_label: torch.Tensor,
    labels: Sequence[int] = (1, 2, 3),
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Symmetric 95th-percentile Hausdorff distance of each listed label, in mm.

    Uses MONAI :func:`~monai.metrics.compute_hausdorff_distance` (``percentile=95``, Euclidean,
    edge voxels, exact KD-tree distances). It is computed on the CPU; the result is returned on the
    input's device. A label absent from both maps gives ``nan``, absent from one of them ``inf``
    (MONAI warns in both cases).

    Args:
        pred_label: integer label map ``(B, 1, *S)``.
        target_label: integer label map ``(B, 1, *S)``.
        labels: label values to score.
        spacing: voxel spacing in mm, a scalar or one value per spatial axis
            (see :func:`spacing_from_affine`); ``None`` means 1 (distances in voxels).

    Returns:
        ``(B, len(labels))`` float tensor.
    """
    _check_label_pair(pred_label, target_label)
    if len(labels) == 0:
        raise ValueError("labels must not be empty")
    dims = pred_label.ndim - 2
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp.size == 1:
            spacing = float(sp[0])
        elif sp.size == dims:
            spacing = [float(v) for v in sp]
        else:
            raise ValueError(f"expected a scalar spacing or {dims} values, got spacing of shape {sp.shape}")
    pred = one_hot_labels(as_int_labels(pred_label).cpu(), labels)
    target = one_hot_labels(as_int_labels(target_label).cpu(), labels)
    hd = compute_hausdorff_distance(pred, target, include_background=False, percentile=95, spacing=spacing)
    return hd.to(pred_label.device)


# ----------------------------------------------------------------------------- field regularity


def folding_percent(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Percentage of voxels whose Jacobian determinant is ``<= 0`` (folding).

    Args:
        ddf: ``(B, dims, *S)`` displacement field in voxels.
        mask: optional ``(B or 1, 1, *S)`` region (non-zero = inside), e.g. the fixed brain mask.

    Returns:
        ``(B,)`` tensor in percent (``nan`` for an empty mask).
    """
    det = jacobian_determinant(ddf)[:, 0]
    m = _prepare_mask(mask, det.shape[0], det.shape[1:], det.device)
    out = []
    for b in range(det.shape[0]):
        v = _masked_values(det, m, b)
        out.append(100.0 * (v <= 0).sum() / v.numel() if v.numel() else torch.tensor(float("nan")))
    return torch.stack([o.to(det) for o in out])


def sd_log_jacobian(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of ``log(clip(det J, 1e-9, 1e9))`` (SDlogJ, as in Learn2Reg).

    The population standard deviation (``numpy.std``, ``correction=0``) over the mask; unlike
    Learn2Reg's evaluation no border is cropped, the border derivatives being one-sided.

    Args:
        ddf: ``(B, dims, *S)`` displacement field in voxels.
        mask: optional ``(B or 1, 1, *S)`` region (non-zero = inside).

    Returns:
        ``(B,)`` tensor (``nan`` for an empty mask).
    """
    det = jacobian_determinant(ddf)[:, 0]
    logj = torch.log(det.clamp(1e-9, 1e9))
    m = _prepare_mask(mask, det.shape[0], det.shape[1:], det.device)
    out = []
    for b in range(det.shape[0]):
        v = _masked_values(logj, m, b).double()
        out.append(v.std(correction=0) if v.numel() else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out).to(det)


# ----------------------------------------------------------------------------- displacement error


def displacement_error_mm(
    ddf: torch.Tensor,
    gt_ddf: torch.Tensor,
    affine_or_spacing,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Euclidean error of a displacement field against the ground truth, in mm.

    The voxel-unit difference ``ddf - gt_ddf`` is mapped to mm with the linear part of the affine
    (spacing and direction, the top-left ``dims x dims`` block, as :func:`bundle.io.ddf_voxel_to_mm`)
    and its norm is summarised over the mask.

    Args:
        ddf: ``(B, dims, *S)`` predicted displacement field in voxels of the fixed grid.
        gt_ddf: ``(B, dims, *S)`` ground-truth displacement field in the same convention.
        affine_or_spacing: fixed-image affine ``(n, n)`` or ``(B, n, n)`` with ``n >= dims``, or
            voxel spacing (scalar or ``dims`` values).
        mask: optional ``(B or 1, 1, *S)`` region (non-zero = inside), e.g. the fixed brain mask.

    Returns:
        ``{"mean": (B,), "p95": (B,)}``; p95 is the linearly interpolated 95th percentile
        (``numpy.percentile``). ``nan`` for an empty mask.
    """
    dims = check_ddf(ddf)
    if gt_ddf.shape != ddf.shape:
        raise ValueError(f"gt_ddf must have the shape of ddf {tuple(ddf.shape)}, got {tuple(gt_ddf.shape)}")
    batch = ddf.shape[0]
    diff = as_float(ddf) - as_float(gt_ddf).to(ddf.device)
    mat = linear_part(affine_or_spacing, dims, batch).to(device=diff.device, dtype=diff.dtype)
    err = torch.linalg.vector_norm(torch.einsum("bij,bj...->bi...", mat, diff), dim=1)
    m = _prepare_mask(mask, batch, ddf.shape[2:], ddf.device)
    means, p95s = [], []
    for b in range(batch):
        v = _masked_values(err, m, b).double()
        means.append(v.mean() if v.numel() else torch.tensor(float("nan"), dtype=torch.float64, device=v.device))
        p95s.append(_quantile(v, 0.95))
    return {"mean": torch.stack(means).to(err), "p95": torch.stack(p95s).to(err)}


# ----------------------------------------------------------------------------- similarity


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    p = counts[counts > 0].double()
    p = p / p.sum()
    return -(p * torch.log(p)).sum()


def _bin_indices(v: torch.Tensor, bins: int) -> torch.Tensor:
    v = v.double()
    lo, hi = v.min(), v.max()
    if hi <= lo:
        return torch.zeros_like(v, dtype=torch.long)
    return ((v - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)


def normalized_mutual_information(
    a: torch.Tensor,
    b: torch.Tensor,
    bins: int = 32,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised mutual information ``(H(a) + H(b)) / H(a, b)`` (Studholme), histogram based.

    Each image is min-max normalised to ``[0, 1]`` over the voxels considered and binned into
    ``bins`` equal bins. The value lies in ``[1, 2]``: 2 for images that determine each other
    (e.g. an image with itself or with a monotonic remapping at bin resolution), about 1 for
    independent images. Not differentiable (use a MONAI loss for training). ``nan`` when both images
    are constant (zero joint entropy) or the mask is empty.

    Args:
        a: image ``(B, 1, *S)``.
        b: image ``(B, 1, *S)``.
        bins: number of histogram bins per image.
        mask: optional ``(B or 1, 1, *S)`` region (non-zero = inside).

    Returns:
        ``(B,)`` float64 tensor.
    """
    if a.ndim < 3 or a.shape[1] != 1:
        raise ValueError(f"expected an image of shape (B, 1, *spatial), got a {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    b = b.to(a.device)
    m = _prepare_mask(mask, a.shape[0], a.shape[2:], a.device)
    out = []
    for i in range(a.shape[0]):
        va, vb = _masked_values(a[:, 0], m, i), _masked_values(b[:, 0], m, i)
        if va.numel() == 0:
            out.append(torch.tensor(float("nan"), dtype=torch.float64))
            continue
        ia, ib = _bin_indices(va, bins), _bin_indices(vb, bins)
        joint = torch.bincount((ia * bins + ib).cpu(), minlength=bins * bins).reshape(bins, bins)
        h_ab = _entropy(joint)
        h_a, h_b = _entropy(joint.sum(1)), _entropy(joint.sum(0))
        out.append((h_a + h_b) / h_ab if h_ab > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out).to(a.device)
