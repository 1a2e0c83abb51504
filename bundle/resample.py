"""Resampling in physical (world) coordinates, 2D and 3D, on torch tensors.

One function, :func:`sample_at_world`, serves every resampling the pipeline needs: bringing
images of any orientation, spacing and size onto the network grid, bringing the network's
displacement field back to the user's fixed grid, and warping the original moving image
with that field, each in a single interpolation. :func:`sample_labels_at_world` does the same
for label maps; :func:`warp_labels` warps a label map on the network grid by a voxel
displacement (training's label-overlap term).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks import Warp
from torch.nn import functional as F

from .fields import as_float, check_ddf
from .metrics import as_int_labels, one_hot_labels

__all__ = ["spatial_affine", "grid_world_points", "sample_at_world", "sample_labels_at_world", "warp_labels", "label_dtype", "physical_extent", "ras_grid_for"]


def spatial_affine(affine: np.ndarray, dims: int) -> np.ndarray:
    """The ``(dims + 1) x (dims + 1)`` voxel-to-world part of a 4x4 NIfTI affine.

    For a 2D image (an axial slice) the in-plane rows/columns 0, 1 and the translation are kept.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if dims == 3:
        return affine.copy()
    idx = [0, 1, 3]
    return affine[np.ix_(idx, idx)]


def grid_world_points(affine: np.ndarray, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """World coordinates ``(dims, *shape)`` of every voxel of a grid with a spatial affine."""
    dims = len(shape)
    a = torch.as_tensor(affine, dtype=torch.float64)
    axes = [torch.arange(s, dtype=torch.float64) for s in shape]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    world = torch.einsum("ij,j...->i...", a[:dims, :dims], idx) + a[:dims, dims].reshape(dims, *([1] * dims))
    return world.to(dtype)


def sample_at_world(
    image: torch.Tensor, image_affine: np.ndarray, points: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """Sample a channel-first image at world points.

    Args:
        image: ``(C, *S)`` tensor.
        image_affine: its spatial voxel-to-world affine, ``(dims + 1)^2`` (see :func:`spatial_affine`).
        points: ``(dims, *T)`` world coordinates to sample at.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: ``grid_sample`` padding outside the image.

    Returns:
        ``(C, *T)`` tensor.
    """
    dims = points.shape[0]
    if image.ndim != dims + 1:
        raise ValueError(f"image must be (C, *spatial) with {dims} spatial dims, got {tuple(image.shape)}.")
    # one affine map: world -> voxel index -> grid_sample's [-1, 1] coordinates, x (last axis) first
    size = np.asarray(image.shape[1:], dtype=np.float64)
    to_unit = np.diag(np.append(2.0 / np.maximum(size - 1, 1), 1.0))
    to_unit[:dims, dims] = -1.0
    world_to_grid = (to_unit @ np.linalg.inv(image_affine))[:dims][::-1]
    dtype = image.dtype if image.is_floating_point() else torch.float32
    m = torch.as_tensor(world_to_grid.copy(), dtype=dtype)
    flat = points.reshape(dims, -1).to(dtype)
    grid = torch.addmm(m[:, dims], flat.T, m[:, :dims].T)  # (N, dims), channel-last as grid_sample wants
    grid = grid.reshape(1, *points.shape[1:], dims)
    out = F.grid_sample(image.unsqueeze(0).to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out[0]


def sample_labels_at_world(label: np.ndarray, label_affine: np.ndarray, points: torch.Tensor) -> np.ndarray:
    """Sample an integer label map at world points: each label's indicator linearly, then the argmax.

    Smoother than nearest-neighbour sampling; points where less than half of the indicators'
    weight falls inside the map get 0. Returns the labels' own integer values.
    """
    values = np.unique(label)
    onehot = torch.stack([torch.from_numpy((label == v).astype(np.float32)) for v in values])
    warped = sample_at_world(onehot, label_affine, points, padding_mode="zeros")
    out = values[warped.argmax(dim=0).numpy()]
    out[warped.sum(dim=0).numpy() < 0.5] = 0
    return out


def warp_labels(
    label: torch.Tensor,
    ddf: torch.Tensor,
    labels: Sequence[int] = (0, 1, 2, 3),
    padding_mode: str = "border",
) -> torch.Tensor:
    """Warp an integer label map with MONAI ``Warp``: one-hot, bilinear warping, argmax.

    Values not in ``labels`` are treated as background (0), which is always a class and wins ties
    (e.g. all-zero samples outside the image with ``padding_mode="zeros"``).

    Args:
        label: integer label map ``(B, 1, *S)`` on the moving grid (= fixed grid).
        ddf: ``(B, dims, *S)`` displacement field in voxels: ``out(x) = label(x + ddf(x))``.
        labels: label values to carry.
        padding_mode: ``Warp`` padding mode (``"border"``, MONAI's default, or ``"zeros"``, ...).

    Returns:
        ``(B, 1, *S)`` ``torch.long`` label map.
    """
    dims = check_ddf(ddf)
    expected = (ddf.shape[0], 1, *ddf.shape[2:])
    if tuple(label.shape) != expected:
        raise ValueError(
            f"expected a label map of shape {expected} to match ddf {tuple(ddf.shape)}, got {tuple(label.shape)}"
        )
    if dims not in (2, 3):
        raise ValueError(f"Warp supports 2D and 3D only, got ddf of shape {tuple(ddf.shape)}")
    values = [0] + [int(v) for v in labels if int(v) != 0]
    ddf = as_float(ddf)
    one_hot = one_hot_labels(as_int_labels(label).to(ddf.device), values[1:]).to(ddf.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        warp = Warp(mode="bilinear", padding_mode=padding_mode)
    warped = warp(one_hot, ddf)
    idx = torch.argmax(warped, dim=1, keepdim=True)
    return torch.as_tensor(values, dtype=torch.long, device=idx.device)[idx]


def label_dtype(labels: np.ndarray):
    """The smallest NIfTI integer type that holds ``labels``: ``uint8``, ``int16`` or ``int32``."""
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo >= 0 and hi <= 255:
        return np.uint8
    return np.int16 if -32768 <= lo and hi <= 32767 else np.int32


def physical_extent(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper world corners (mm) of the box spanned by a grid's voxel centres."""
    dims = len(shape)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(dims, -1)
    world = affine[:dims, :dims] @ corners + affine[:dims, dims : dims + 1]
    return world.min(axis=1), world.max(axis=1)


def ras_grid_for(affine: np.ndarray, shape: Sequence[int], spacing_mm: float, divisor: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """An axis-aligned RAS grid at ``spacing_mm`` covering an image, sizes divisible by ``divisor``.

    The network always sees images in this orientation and voxel size, whatever the
    orientation, obliquity and spacing of the user's files.

    Returns:
        (spatial affine ``(dims + 1)^2``, grid shape).
    """
    dims = len(shape)
    lo, hi = physical_extent(affine, shape)
    n = [int(math.ceil(e / spacing_mm - 1e-6)) + 1 for e in (hi - lo)]
    n = [int(math.ceil(v / divisor) * divisor) for v in n]
    centre = (lo + hi) / 2.0
    origin = centre - spacing_mm * (np.array(n) - 1) / 2.0
    out = np.eye(dims + 1)
    out[:dims, :dims] = np.eye(dims) * spacing_mm
    out[:dims, dims] = origin
    return out, tuple(n)
