"""Input checks that fail early with one line naming the file and the problem."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

__all__ = ["load_checked_image", "load_checked_label", "check_image_array", "check_label_array", "check_label_grid"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read any image nibabel understands, mapping every failure to a one-line error naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a file")
    try:
        img = nib.load(os.fspath(path))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise ValueError(f"{path}: not a readable image ({_one_line(exc)})") from exc
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated or corrupt data block
        raise ValueError(f"{path}: corrupt or truncated image data ({_one_line(exc)})") from exc
    affine = img.affine
    if affine is None:
        raise ValueError(f"{path}: image has no affine")
    return array, np.asarray(affine, dtype=np.float64)


def _squeeze_trailing(array: np.ndarray, keep: int) -> np.ndarray:
    """Drop singleton dimensions after the first ``keep``."""
    while array.ndim > keep and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _check_dims(array: np.ndarray, name: str, expected_dims: int | None) -> np.ndarray:
    array = _squeeze_trailing(array, 3)
    if expected_dims == 2:
        array = _squeeze_trailing(array, 2)
    if array.ndim > 3:
        raise ValueError(
            f"{name}: {array.ndim}D image of shape {array.shape}; expected a single 2D or 3D volume"
        )
    if array.ndim < 2:
        raise ValueError(f"{name}: image of shape {array.shape} has fewer than 2 dimensions")
    if expected_dims is not None and array.ndim != expected_dims:
        raise ValueError(f"{name}: {array.ndim}D image of shape {array.shape}, expected {expected_dims}D")
    return array


def check_image_array(array: np.ndarray, name: str) -> None:
    """Check that an image array is numeric, finite and not constant.

    Args:
        array: the image (any shape).
        name: file name or key used in the error message.

    Raises:
        ValueError: ``"<name>: <problem>"`` for a non-numeric dtype, NaN or Inf voxels, or a
            constant image.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: unsupported voxel type {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name}: image is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        if n_nan or n_inf:
            raise ValueError(f"{name}: {n_nan} NaN and {n_inf} Inf voxels")
    low, high = array.min(), array.max()
    if low == high:
        raise ValueError(f"{name}: constant image (every voxel is {low})")


def check_label_array(array: np.ndarray, name: str) -> None:
    """Check that a label array holds finite integer values.

    Raises:
        ValueError: ``"<name>: <problem>"`` for a non-numeric dtype, NaN/Inf or non-integer labels.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: unsupported label type {array.dtype}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: labels contain NaN or Inf")
        fractional = array != np.round(array)
        if np.any(fractional):
            raise ValueError(
                f"{name}: labels must be integers, found {int(fractional.sum())} non-integer voxels "
                f"(e.g. {array[fractional].flat[0]})"
            )


def load_checked_image(
    path: str | os.PathLike, expected_dims: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load an image and check it is a usable single 2D or 3D volume.

    Trailing singleton dimensions beyond the third (e.g. ``(X, Y, Z, 1)``) are squeezed, and for
    ``expected_dims=2`` also a singleton third one (``(X, Y, 1)``).

    Args:
        path: image file (any format nibabel reads, typically NIfTI).
        expected_dims: required number of spatial dimensions, 2 or 3; ``None`` accepts both.

    Returns:
        (spatial-first array in its stored dtype, 4x4 affine).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: ``"<path>: <problem>"`` for a non-image, corrupt or truncated file, a 4D
            image, the wrong dimensionality, NaN or Inf voxels, or a constant image.
    """
    array, affine = _read(path)
    array = _check_dims(array, str(path), expected_dims)
    check_image_array(array, str(path))
    return array, affine


def load_checked_label(path: str | os.PathLike, expected_dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a label map and check it is a single 2D/3D volume of integer labels.

    Returns:
        (int64 spatial-first array, 4x4 affine).

    Raises:
        FileNotFoundError / ValueError: one line naming the file, as :func:`load_checked_image`.
    """
    array, affine = _read(path)
    array = _check_dims(array, str(path), expected_dims)
    check_label_array(array, str(path))
    return np.rint(array).astype(np.int64), affine


def check_label_grid(image_path: str | os.PathLike, label_path: str | os.PathLike, atol: float = 1e-3) -> None:
    """Check a label file against its image: same shape, same affine, integer labels.

    Args:
        image_path: the image file.
        label_path: the label file.
        atol: tolerance on the affine entries.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: naming the file(s) and the mismatch.
    """
    image, image_affine = load_checked_image(image_path)
    labels, label_affine = _read(label_path)
    labels = _check_dims(labels, str(label_path), image.ndim)
    if labels.shape != image.shape:
        raise ValueError(
            f"{label_path}: label shape {labels.shape} differs from image {image_path} shape {image.shape}"
        )
    if not np.allclose(label_affine, image_affine, atol=atol):
        diff = float(np.abs(label_affine - image_affine).max())
        raise ValueError(f"{label_path}: affine differs from that of image {image_path} by up to {diff:.4g}")
    check_label_array(labels, str(label_path))
