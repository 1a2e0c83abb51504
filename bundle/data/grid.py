"""Changing the sampling grid of a volume: resampling to a voxel size, and axial slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["reorient_to_ras", "resample_to_spacing", "axial_slice"]


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip a 3D array so its axes run closest to R, A, S (what MONAI ``Orientationd("RAS")``
    does), without resampling.

    Returns:
        (reoriented array, its 4x4 affine), describing the same world space.
    """
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
    out = np.ascontiguousarray(nib.orientations.apply_orientation(array, transform))
    new_affine = np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return out, new_affine


def resample_to_spacing(
    array: np.ndarray, affine: np.ndarray, spacing_mm: float, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a 3D volume to isotropic ``spacing_mm`` voxels over the same field of view.

    Downsampling is anti-aliased by a Gaussian of ``(factor - 1) / 2`` input voxels; the new grid
    is centred in the old one, and the affine is updated so both describe the same world space.

    Args:
        array: spatial-first 3D array.
        affine: its 4x4 voxel-to-world affine.
        spacing_mm: target voxel size.
        order: spline interpolation order.

    Returns:
        (float32 resampled array, its 4x4 affine).
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    affine = np.asarray(affine, dtype=np.float64)
    factors = spacing_mm / nib.affines.voxel_sizes(affine)
    shape = np.floor((np.array(array.shape) - 1) / factors + 1e-6).astype(int) + 1
    offsets = ((np.array(array.shape) - 1) - (shape - 1) * factors) / 2.0
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(factors)
    index_map[:3, 3] = offsets
    new_affine = affine @ index_map
    array = np.asarray(array, dtype=np.float32)
    if np.allclose(factors, 1.0) and np.allclose(offsets, 0.0):
        return array.copy(), new_affine
    sigma = np.maximum((factors - 1.0) / 2.0, 0.0)
    smooth = ndimage.gaussian_filter(array, sigma) if np.any(sigma > 0) else array
    out = ndimage.affine_transform(
        smooth, np.diag(factors), offset=offsets, output_shape=tuple(shape), order=order, mode="nearest", output=np.float32
    )
    return out, new_affine


def axial_slice(array: np.ndarray, affine: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` along the third array axis, with the 4x4 affine of that slice.

    The slice affine maps ``(i, j, 0)`` to the world position of voxel ``(i, j, index)``; its
    third column still carries the slice direction and thickness.
    """
    if not 0 <= index < array.shape[2]:
        raise ValueError(f"slice index {index} outside [0, {array.shape[2]})")
    shift = np.eye(4)
    shift[2, 3] = index
    return np.ascontiguousarray(array[:, :, index]), np.asarray(affine, dtype=np.float64) @ shift
