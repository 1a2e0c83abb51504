"""ITK composite transform files (``transform.h5``) for other tools: 3D Slicer, ANTs, SimpleITK.

ITK transforms map points of the output (fixed) space to the input (moving) space, in LPS
millimetres. A ``CompositeTransform`` applies its last-listed transform first; here the steps
are given in the order they act on a point.

The file is ITK's HDF5 transform layout (``/TransformGroup/<i>/TransformType``,
``TransformParameters``, ``TransformFixedParameters``), written with ``h5py`` in double
precision. ITK's own Python writer would need ~9 s per process to load its transform modules
and holds vector images in single precision only; the tests read these files back with ITK
(``itk.transformread``), SimpleITK and ANTs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fields import lps_flip, ras_to_lps

__all__ = ["affine_step", "field_step", "save_composite_transform", "ITK_LAYOUT_VERSION"]

#: The ITK release whose HDF5 transform layout the files follow.
ITK_LAYOUT_VERSION = "5.4.7"


def affine_step(affine_ras: np.ndarray) -> tuple:
    """A step mapping points by a ``(dims + 1)^2`` RAS affine."""
    return ("affine", np.asarray(affine_ras, dtype=np.float64))


def field_step(displacement_mm: np.ndarray, grid_affine: np.ndarray) -> tuple:
    """A step ``x -> x + u(x)``: ``u`` channel-first RAS mm on a grid with spatial affine ``grid_affine``."""
    return ("field", np.asarray(displacement_mm, dtype=np.float64), np.asarray(grid_affine, dtype=np.float64))


def _affine_parameters(affine_ras: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    d = affine_ras.shape[0] - 1
    lps = ras_to_lps(affine_ras)
    return f"AffineTransform_double_{d}_{d}", np.concatenate([lps[:d, :d].reshape(-1), lps[:d, d]]), np.zeros(d)


def _field_parameters(displacement_mm: np.ndarray, grid_affine: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    d = displacement_mm.shape[0]
    flip = lps_flip(d)
    lps = np.einsum("ij,j...->i...", flip, displacement_mm)
    # ITK's buffer: x fastest, components interleaved, i.e. a C-order (z, y, x, component) array
    buffer = np.moveaxis(lps, 0, -1).transpose(*range(d - 1, -1, -1), d).reshape(-1)
    linear = grid_affine[:d, :d]
    spacing = np.linalg.norm(linear, axis=0)
    direction = flip @ linear / spacing
    fixed = np.concatenate([np.asarray(displacement_mm.shape[1:], dtype=np.float64), flip @ grid_affine[:d, d], spacing, direction.reshape(-1)])
    return f"DisplacementFieldTransform_double_{d}_{d}", buffer, fixed


def save_composite_transform(path: str | os.PathLike, steps: list[tuple]) -> Path:
    """Write ``steps`` (applied to a point in this order) as one ITK ``CompositeTransform`` HDF5 file.

    Args:
        path: ``.h5`` file; the caller stages it (written whole or not at all).
        steps: :func:`affine_step` and :func:`field_step` items, all of one dimensionality.
    """
    import h5py

    d = steps[0][1].shape[0] - 1 if steps[0][0] == "affine" else steps[0][1].shape[0]
    text = h5py.string_dtype("ascii")
    with h5py.File(str(path), "w") as f:
        f.create_dataset("HDFVersion", data=np.array([f"HDF5 library version: {h5py.version.hdf5_version}"], dtype=object), dtype=text)
        f.create_dataset("ITKVersion", data=np.array([ITK_LAYOUT_VERSION], dtype=object), dtype=text)
        group = f.create_group("TransformGroup")
        composite = group.create_group("0")
        composite.create_dataset("TransformType", data=np.array([f"CompositeTransform_double_{d}_{d}"], dtype=object), dtype=text)
        for i, step in enumerate(reversed(steps), start=1):  # ITK applies the last-listed transform first
            name, params, fixed = _affine_parameters(step[1]) if step[0] == "affine" else _field_parameters(step[1], step[2])
            g = group.create_group(str(i))
            g.create_dataset("TransformType", data=np.array([name], dtype=object), dtype=text)
            big = params.size > 1024
            g.create_dataset("TransformParameters", data=params, compression="gzip" if big else None, compression_opts=1 if big else None)
            g.create_dataset("TransformFixedParameters", data=fixed)
    return Path(path)
