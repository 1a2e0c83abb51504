"""Apply a saved registration to other images and to points, without loading the network.

A registration folder holds the map both ways (see :mod:`bundle.inference`):

* ``ddf_mm.nii.gz`` on the fixed grid: fixed point ``x`` -> moving point ``x + u(x)``;
* ``ddf_inverse_mm.nii.gz`` on the moving grid: moving point ``y`` -> fixed point ``y + w(y)``.

Images are resampled by *pulling* (each output voxel looks up where it comes from), points
are *pushed*, so each direction uses the opposite field:

=================  =========================================  =============================
direction          image (output on the other image's grid)   points
=================  =========================================  =============================
forward (default)  moving space -> fixed grid, via ``u``      moving -> fixed, via ``w``
``inverse=True``   fixed space -> moving grid, via ``w``      fixed -> moving, via ``u``
=================  =========================================  =============================

Each image is resampled once, from its own file, in physical coordinates, so it may have any
grid of its space (another contrast, a segmentation at another resolution).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .cli import as_bool
from .data.validation import load_checked_image, load_checked_label
from .fields import inside_grid
from .io import ddf_voxel_to_mm, load_displacement, save_image
from .points import read_points, write_points
from .resample import grid_world_points, label_dtype, sample_at_world, sample_labels_at_world, spatial_affine

__all__ = ["FORWARD_FIELD", "INVERSE_FIELD", "INTERPOLATIONS", "TransformApplier"]

FORWARD_FIELD = "ddf_mm.nii.gz"
INVERSE_FIELD = "ddf_inverse_mm.nii.gz"
INTERPOLATIONS = ("linear", "nearest", "label")


class _Field:
    """A displacement field file: RAS mm ``(dims, *S)``, its spatial affine and its 4x4 affine."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: transform file not found (give the output folder of a registration)")
        try:
            voxel, affine4 = load_displacement(path)
        except ValueError as e:
            raise ValueError(f"{path}: not a displacement field written by this bundle ({str(e).split(': ', 1)[-1]})") from None
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for unreadable files
            raise ValueError(f"{path}: unreadable transform file ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        if not np.all(np.isfinite(voxel)):
            raise ValueError(f"{path}: displacement field holds NaN or Inf values")
        self.path = path
        self.dims = voxel.shape[0]
        self.affine4 = affine4
        self.affine = spatial_affine(affine4, self.dims)
        self.mm = torch.from_numpy(ddf_voxel_to_mm(voxel, affine4)).float()

    def points(self) -> torch.Tensor:
        """World points this field maps its grid's voxels to: ``x + u(x)``."""
        return grid_world_points(self.affine, self.mm.shape[1:]) + self.mm

    def push(self, ras: np.ndarray, source: str) -> np.ndarray:
        """Map ``(N, dims)`` RAS points through ``x -> x + u(x)`` (linear interpolation of ``u``).

        Raises:
            ValueError: a point outside the field's grid, naming ``source`` and its CSV line.
        """
        pts = torch.from_numpy(ras.T.copy()).float().reshape(self.dims, -1, *([1] * (self.dims - 1)))
        inside = inside_grid(pts, self.affine, self.mm.shape[1:]).reshape(-1).numpy()
        if not inside.all():
            bad = np.flatnonzero(~inside)
            raise ValueError(
                f"{source}: {bad.size} point(s) outside the transform's grid ({self.path.name}), first on line {bad[0] + 2}"
            )
        u = sample_at_world(self.mm.double(), self.affine, pts.double(), padding_mode="border")
        return ras + u.reshape(self.dims, -1).numpy().T


class TransformApplier:
    """Apply the transforms saved in a registration folder to images or points.

    Args:
        transform_dir: output folder of ``configs/inference.json`` (``ddf_mm.nii.gz`` and
            ``ddf_inverse_mm.nii.gz``).
        inverse: map from the fixed space into the moving space instead of the reverse.
        overwrite: replace an existing output file.
    """

    def __init__(self, transform_dir, inverse=False, overwrite=False):
        # checked when applied, so that a config run reports bad arguments as one line
        self.transform_dir, self._inverse, self._overwrite = transform_dir, inverse, overwrite

    @property
    def inverse(self) -> bool:
        return as_bool(self._inverse, "inverse")

    @property
    def overwrite(self) -> bool:
        return as_bool(self._overwrite, "overwrite")

    def _field(self, for_points: bool) -> _Field:
        if self.transform_dir is None:
            raise ValueError("transform_dir is required (the output folder of a registration)")
        folder = Path(self.transform_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: transform folder not found")
        pull = INVERSE_FIELD if self.inverse else FORWARD_FIELD
        push = FORWARD_FIELD if self.inverse else INVERSE_FIELD
        return _Field(folder / (push if for_points else pull))

    def _check_output(self, output, inputs) -> Path:
        if output is None:
            raise ValueError("output is required (the file to write)")
        output = Path(output)
        if any(p is not None and os.path.abspath(p) == os.path.abspath(output) for p in inputs):
            raise ValueError(f"{output}: output would overwrite an input file")
        if output.exists() and not self.overwrite:
            raise FileExistsError(f"{output}: already exists; pass --overwrite true to replace it")
        return output

    def apply_image(self, image, output, interp: str = "linear") -> dict:
        """Resample ``image`` (any grid of the source space) onto the target grid; returns a summary."""
        if interp not in INTERPOLATIONS:
            raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {interp!r}")
        output = self._check_output(output, [image])
        field = self._field(for_points=False)
        if interp == "label":
            array, affine4 = load_checked_label(image, expected_dims=field.dims)
        else:
            array, affine4 = load_checked_image(image, expected_dims=field.dims)
        affine = spatial_affine(affine4, field.dims)
        pts = field.points()
        if interp == "label":
            out = sample_labels_at_world(array, affine, pts)
            dtype = label_dtype(out)
        else:
            mode = "bilinear" if interp == "linear" else "nearest"
            src = torch.from_numpy(np.asarray(array, dtype=np.float32))[None]
            out = sample_at_world(src, affine, pts, mode=mode, padding_mode="zeros")[0].numpy()
            dtype = array.dtype if interp == "nearest" and array.dtype.kind in "iu" else np.float32
        save_image(output, out, field.affine4, dtype=dtype)
        return {"output": str(output), "image": str(image), "interp": interp, "inverse": self.inverse, "field": str(field.path)}

    def apply_points(self, points, output, points_space=None) -> dict:
        """Map a CSV of world points into the other space; returns a summary."""
        output = self._check_output(output, [points])
        field = self._field(for_points=True)
        table = read_points(points, field.dims, points_space)
        mapped = field.push(table.ras, str(points))
        write_points(output, table, mapped)
        return {"output": str(output), "points": str(points), "n": int(len(mapped)), "space": table.space, "inverse": self.inverse, "field": str(field.path)}

    def run(self, image=None, output=None, interp: str = "linear", points=None, points_space=None) -> dict:
        """Apply to ``image`` or to ``points`` (exactly one), writing ``output``."""
        if (image is None) == (points is None):
            raise ValueError("give exactly one of --image or --points")
        if image is not None:
            return self.apply_image(image, output, interp)
        return self.apply_points(points, output, points_space)

