"""Initialisation in physical space, before the network: align the intensity centres of mass.

ANTs (``--initial-moving-transform [F, M, 1]``) and elastix (``AutomaticTransformInitialization``)
both start from the translation that maps the fixed image's intensity centre of mass onto the
moving image's. The network then only predicts a residual, and files whose header origins
disagree (a scanner's isocentre against an atlas's AC origin) still register.

Conventions: a fixed world point ``x`` (RAS mm) corresponds to the moving world point
``x + t``; ``t`` is what :func:`centre_of_mass_translation` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .resample import physical_extent

__all__ = ["intensity_centre_mm", "centre_of_mass_translation", "check_overlap", "check_network_size", "check_network_grid"]


def intensity_centre_mm(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) centre of mass of an image's intensities above its minimum.

    Args:
        image: spatial-first array (2D or 3D).
        affine: its spatial voxel-to-world affine, ``(dims + 1)^2``.
    """
    dims = image.ndim
    w = np.asarray(image, dtype=np.float64)
    w = w - np.nanmin(w)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"image of shape {image.shape} has no intensity above its minimum: no centre of mass")
    centre = np.asarray(ndimage.center_of_mass(w))
    return affine[:dims, :dims] @ centre + affine[:dims, dims]


def centre_of_mass_translation(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray) -> np.ndarray:
    """Translation ``t`` (RAS mm) taking the fixed intensity centre of mass onto the moving one."""
    return intensity_centre_mm(moving, moving_affine) - intensity_centre_mm(fixed, fixed_affine)


def check_overlap(fixed_affine, fixed_shape, moving_affine, moving_shape, names: tuple[str, str] = ("fixed", "moving")) -> None:
    """Raise a one-line ``ValueError`` when the two images' physical extents do not overlap at all.

    Without initialisation such a pair has nothing to register: every moving sample the network
    sees is background.
    """
    flo, fhi = physical_extent(fixed_affine, fixed_shape)
    mlo, mhi = physical_extent(moving_affine, moving_shape)
    apart = [k for k in range(len(fixed_shape)) if flo[k] > mhi[k] or mlo[k] > fhi[k]]
    if apart:
        axis = "xyz"[apart[0]]
        raise ValueError(
            f"{names[1]} and {names[0]}: the images do not overlap in physical space ({axis}: moving "
            f"[{mlo[apart[0]]:.1f}, {mhi[apart[0]]:.1f}] mm, fixed [{flo[apart[0]]:.1f}, {fhi[apart[0]]:.1f}] mm); "
            "turn initialisation on (--initialise true) or correct the headers"
        )


def check_network_size(shape: Sequence[int], affine: np.ndarray, spacing_mm: float, min_voxels: int, name: str = "fixed") -> None:
    """Raise a one-line ``ValueError`` when an image spans fewer than ``min_voxels`` network voxels on an axis.

    The network's pyramid halves the grid ``log2(size_divisor)`` times; an image smaller than one
    coarsest cell would be almost all padding there, and the affine head would see nothing.
    """
    lo, hi = physical_extent(affine, shape)
    n = np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1
    if (n < min_voxels).any():
        raise ValueError(
            f"{name}: image too small for the network: it spans {'x'.join(str(int(v)) for v in n)} voxels at "
            f"{spacing_mm:g} mm, the network's pyramid needs at least {min_voxels} per axis"
        )


def check_network_grid(net_shape: Sequence[int], divisor: int, name: str = "fixed") -> None:
    """Raise a one-line ``ValueError`` when the network grid (of the fixed image) is one coarsest cell.

    Instance normalisation needs more than one element at the coarsest level, so at least one
    axis of the padded grid must exceed ``divisor``.
    """
    if all(int(v) <= divisor for v in net_shape):
        raise ValueError(
            f"{name}: image too small for the network: its network grid is {'x'.join(str(int(v)) for v in net_shape)} voxels, "
            f"the network's pyramid needs more than {divisor} along at least one axis"
        )
