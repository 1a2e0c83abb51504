"""Real MRI templates shipped inside installed Python packages (no download at run time).

Two sources are used:

* **spm-runtime** ships SPM's canonical templates (``avg152T1/T2/PD``), the single-subject
  ``single_subj_T1`` and the tissue probability maps of the ``OldSeg`` toolbox, all on one
  91x109x91 grid at 2 mm (affine ``diag(-2, 2, 2)``, origin ``(90, -126, -72)``), inside a
  plain ZIP archive (``_spm/_spm.ctf``). Only the location of that archive is taken from the
  package; ``spm_runtime`` itself is never imported.
* **nilearn** ships the 1 mm MNI152 2009 template and its grey/white matter maps.

All arrays are spatial-first ``float32`` with a 4x4 voxel-to-RAS ``affine``. Loaded data is
cached and returned **read-only**; copy an array before modifying it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import zipfile
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .grid import reorient_to_ras, resample_to_spacing
from .labels import tissue_labels

__all__ = [
    "source_volumes",
    "default_slice_index",
    "SampleDataUnavailableError",
    "SpmTemplates",
    "Mni152Templates",
    "spm_archive_path",
    "load_spm_templates",
    "load_spm_single_subject",
    "load_mni152",
]

_SPM_ROOT = "fsroot/_spm/cleaned/spm/"
_SPM_MEMBERS = {
    "t1": "canonical/avg152T1.nii",
    "t2": "canonical/avg152T2.nii",
    "pd": "canonical/avg152PD.nii",
    "grey": "toolbox/OldSeg/grey.nii",
    "white": "toolbox/OldSeg/white.nii",
    "csf": "toolbox/OldSeg/csf.nii",
}
_SPM_SINGLE_SUBJECT = "canonical/single_subj_T1.nii"

_INSTALL_HINT = (
    "install the [samples] extra (pip install -e '.[samples]') and then "
    "`pip install --no-deps spm-runtime matlab-runtime`"
)


class SampleDataUnavailableError(ImportError):
    """Raised when the package holding the sample MRI data is not installed."""


@dataclass(frozen=True)
class SpmTemplates:
    """SPM canonical templates and tissue priors on their shared 2 mm grid.

    Attributes:
        t1: ``avg152T1`` intensities in [0, 1].
        t2: ``avg152T2`` intensities in [0, 1].
        pd: ``avg152PD`` intensities in [0, 1].
        grey: grey matter prior probability in [0, 1].
        white: white matter prior probability in [0, 1].
        csf: cerebrospinal fluid prior probability in [0, 1].
        affine: the shared 4x4 voxel-to-RAS affine.
    """

    t1: np.ndarray
    t2: np.ndarray
    pd: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray
    affine: np.ndarray

    @property
    def tissue_maps(self) -> dict[str, np.ndarray]:
        """The priors as ``{"csf", "grey", "white"}``, the input of ``simulate_contrast``."""
        return {"csf": self.csf, "grey": self.grey, "white": self.white}

    @property
    def brain_mask(self) -> np.ndarray:
        """Voxels where grey plus white matter probability exceeds 0.5: the brain the shipped-model checks score."""
        return (np.asarray(self.grey) + np.asarray(self.white)) > 0.5


@dataclass(frozen=True)
class Mni152Templates:
    """nilearn's MNI152 2009 template and grey/white matter maps.

    Attributes:
        t1: T1-weighted template in [0, 1].
        grey: grey matter probability in [0, 1].
        white: white matter probability in [0, 1].
        affine: the shared 4x4 voxel-to-RAS affine.
    """

    t1: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    affine: np.ndarray


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=1)
def spm_archive_path() -> str:
    """Path of the ZIP archive of SPM files inside the installed ``spm-runtime`` package.

    Raises:
        SampleDataUnavailableError: if ``spm-runtime`` is not installed or lacks the archive.
    """
    spec = importlib.util.find_spec("spm_runtime")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SampleDataUnavailableError(f"the SPM templates need the spm-runtime package: {_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "_spm", "_spm.ctf")
    if not os.path.isfile(path):
        raise SampleDataUnavailableError(f"spm-runtime is installed but {path} is missing: {_INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=None)
def _read_spm_member(member: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one NIfTI file of the SPM archive as (float32 array, affine), cached."""
    with zipfile.ZipFile(spm_archive_path()) as archive:
        raw = archive.read(_SPM_ROOT + member)
    img = nib.Nifti1Image.from_bytes(raw)
    array = np.asarray(img.dataobj, dtype=np.float32)  # applies the header's scl_slope
    return _readonly(array), _readonly(np.asarray(img.affine, dtype=np.float64))


@functools.lru_cache(maxsize=1)
def load_spm_templates() -> SpmTemplates:
    """Load SPM's ``avg152`` T1/T2/PD templates and the OldSeg grey/white/CSF priors.

    Returns:
        An :class:`SpmTemplates` of read-only float32 arrays of shape (91, 109, 91);
        intensities and priors are clipped to [0, 1].

    Raises:
        SampleDataUnavailableError: if ``spm-runtime`` is not installed.
    """
    arrays, affine = {}, None
    for name, member in _SPM_MEMBERS.items():
        array, member_affine = _read_spm_member(member)
        if affine is None:
            affine = member_affine
        elif not np.allclose(affine, member_affine, atol=1e-4):
            raise ValueError(f"SPM file {member} is not on the grid of {_SPM_MEMBERS['t1']}")
        arrays[name] = _readonly(np.clip(array, 0.0, 1.0))
    return SpmTemplates(affine=affine, **arrays)


def load_spm_single_subject() -> tuple[np.ndarray, np.ndarray]:
    """Load SPM's ``single_subj_T1`` (Colin 27 on the avg152 grid); for evaluation only.

    Returns:
        (read-only float32 array of shape (91, 109, 91) in [0, 1], 4x4 affine).

    Raises:
        SampleDataUnavailableError: if ``spm-runtime`` is not installed.
    """
    return _read_spm_member(_SPM_SINGLE_SUBJECT)


@functools.lru_cache(maxsize=2)
def load_mni152(resolution: int = 1) -> Mni152Templates:
    """Load nilearn's MNI152 2009 template with its grey and white matter maps.

    Args:
        resolution: voxel size in mm, 1 or 2 (both are shipped with nilearn).

    Returns:
        An :class:`Mni152Templates` of read-only float32 arrays in [0, 1].

    Raises:
        SampleDataUnavailableError: if ``nilearn`` is not installed.
    """
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise SampleDataUnavailableError(
            "the MNI152 templates need nilearn: install the [samples] extra (pip install -e '.[samples]')"
        ) from exc
    images = {
        "t1": datasets.load_mni152_template(resolution=resolution),
        "grey": datasets.load_mni152_gm_template(resolution=resolution),
        "white": datasets.load_mni152_wm_template(resolution=resolution),
    }
    affine = np.asarray(images["t1"].affine, dtype=np.float64)
    arrays = {k: _readonly(np.clip(np.asarray(v.dataobj, dtype=np.float32), 0.0, 1.0)) for k, v in images.items()}
    return Mni152Templates(affine=_readonly(affine), **arrays)


@functools.lru_cache(maxsize=8)
def source_volumes(spacing_mm: float = 2.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """SPM templates, priors and tissue labels resampled to ``spacing_mm`` (cached, read-only).

    The arrays are stored RAS (axes towards right, anterior, superior: SPM's ``x`` axis is
    flipped), so MONAI's ``Orientationd(axcodes="RAS")`` leaves them, and DDFs, unchanged.

    Returns:
        (volumes keyed ``t1, t2, pd, csf, grey, white, labels``, their 4x4 affine).
    """
    templates = load_spm_templates()
    volumes: dict[str, np.ndarray] = {}
    affine = templates.affine
    for name in ("t1", "t2", "pd", "csf", "grey", "white"):
        array, affine = resample_to_spacing(getattr(templates, name), templates.affine, spacing_mm)
        volumes[name], ras_affine = reorient_to_ras(np.clip(array, 0.0, 1.0), affine)
    affine = ras_affine
    volumes["labels"] = tissue_labels(volumes)
    for array in volumes.values():
        array.flags.writeable = False
    return volumes, affine


def default_slice_index(spacing_mm: float = 2.0) -> int:
    """The axial slice (third array axis) with the largest brain area at ``spacing_mm``."""
    labels = source_volumes(spacing_mm)[0]["labels"]
    return int(np.argmax((labels > 0).sum(axis=(0, 1))))
