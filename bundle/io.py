"""Writing and reading registration outputs in physical space.

Conventions used across the project:

* An image array is stored spatial-first, as NIfTI stores it, with a 4x4 ``affine``
  (voxel index -> RAS millimetres), also for 2D images.
* Inside the networks a displacement field (DDF) is channel-first, in **voxel units of
  the fixed grid**, exactly what MONAI ``Warp`` expects: ``warped(x) = moving(x + ddf(x))``.
* On disk a displacement field is a NIfTI vector image of shape ``(*spatial, 1, dims)``
  (intent ``vector``) holding the displacement in **millimetres in LPS world
  coordinates**, the convention of ITK, ANTs and 3D Slicer, so that the file can be used
  as an ITK ``DisplacementFieldTransform`` directly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "atomic_write",
    "staged_output_dir",
    "save_image",
    "save_displacement",
    "save_displacement_mm",
    "load_displacement",
    "ddf_voxel_to_mm",
    "ddf_mm_to_voxel",
    "save_itk_affine",
    "in_parallel",
]


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` on a temporary file beside ``path``, then rename it.

    A reader never sees a half-written file; on failure nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


@contextmanager
def staged_output_dir(output_dir: str | os.PathLike):
    """Yield a hidden staging folder inside ``output_dir``; on success move its files into place.

    On any failure the staging folder is removed and ``output_dir`` gains no file, so a
    result set is either complete or absent.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def in_parallel(*jobs):
    """Run the callables ``jobs`` in threads (file writers: compression releases the GIL).

    Returns their results in order; the first exception is raised after all have finished.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        futures = [pool.submit(job) for job in jobs]
    return [f.result() for f in futures]


def _save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write ``img`` atomically; ``.nii.gz`` is compressed with ISA-L's igzip (gzip format, ~10x zlib's speed)."""
    if not str(path).endswith(".gz"):
        return atomic_write(path, lambda tmp: nib.save(img, tmp))
    from isal import igzip

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(igzip.compress(img.to_bytes(), compresslevel=1))

    return atomic_write(path, write)


def save_image(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    """Save a spatial-first array as NIfTI with the given 4x4 affine, atomically."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return _save_nifti(img, path)


def _direction(affine: np.ndarray, dims: int) -> np.ndarray:
    return np.asarray(affine, dtype=np.float64)[:dims, :dims]


def ddf_voxel_to_mm(ddf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Channel-first voxel-unit DDF -> channel-first RAS millimetre DDF."""
    ddf = np.asarray(ddf, dtype=np.float64)
    dims = ddf.shape[0]
    if dims not in (2, 3) or ddf.ndim != dims + 1:
        raise ValueError(f"expected a channel-first DDF of shape (dims, *spatial), got {ddf.shape}")
    mat = _direction(affine, dims)
    return np.einsum("ij,j...->i...", mat, ddf)


def ddf_mm_to_voxel(ddf_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Channel-first RAS millimetre DDF -> channel-first voxel-unit DDF."""
    ddf_mm = np.asarray(ddf_mm, dtype=np.float64)
    dims = ddf_mm.shape[0]
    mat = np.linalg.inv(_direction(affine, dims))
    return np.einsum("ij,j...->i...", mat, ddf_mm)


def save_displacement(path: str | os.PathLike, ddf_voxel: np.ndarray, affine: np.ndarray) -> Path:
    """Save a channel-first voxel-unit DDF as an ITK-readable NIfTI displacement field (mm, LPS)."""
    return save_displacement_mm(path, ddf_voxel_to_mm(ddf_voxel, affine), affine)


def save_displacement_mm(path: str | os.PathLike, ddf_mm: np.ndarray, affine: np.ndarray) -> Path:
    """Save a channel-first RAS-millimetre DDF as an ITK-readable NIfTI displacement field (mm, LPS)."""
    mm = np.array(ddf_mm, dtype=np.float64)
    mm[:2] *= -1.0  # RAS -> LPS
    dims = mm.shape[0]
    vec = np.moveaxis(mm, 0, -1)  # (*spatial, dims)
    vec = vec.reshape(*mm.shape[1:], *([1] * (3 - dims)), 1, dims)  # (X, Y, Z, 1, dims)
    img = nib.Nifti1Image(vec.astype(np.float32), np.asarray(affine, dtype=np.float64))
    img.header.set_intent("vector")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return _save_nifti(img, path)


def load_displacement(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a field written by :func:`save_displacement`; returns (voxel DDF channel-first, affine)."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] not in (2, 3):
        raise ValueError(f"{path}: not a displacement field of shape (X, Y, Z, 1, dims), got {data.shape}")
    dims = data.shape[4]
    vec = data[..., 0, :]
    if dims == 2:
        vec = vec[:, :, 0]
    mm = np.moveaxis(vec, -1, 0).copy()
    mm[:2] *= -1.0  # LPS -> RAS
    return ddf_mm_to_voxel(mm, img.affine), img.affine


def save_itk_affine(path: str | os.PathLike, matrix: np.ndarray, translation: np.ndarray) -> Path:
    """Write an ITK ``AffineTransform_double_D_D`` text file.

    ``matrix`` and ``translation`` map a fixed-image LPS point ``x`` to the moving-image
    LPS point ``matrix @ x + translation`` (ITK's resampling convention, centre at 0).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    dims = matrix.shape[0]
    params = " ".join(f"{v:.10g}" for v in list(matrix.reshape(-1)) + list(np.asarray(translation).reshape(-1)))
    fixed = " ".join(["0"] * dims)
    text = (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        f"Transform: AffineTransform_double_{dims}_{dims}\n"
        f"Parameters: {params}\n"
        f"FixedParameters: {fixed}\n"
    )

    def _write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, _write)
