"""Classical baselines on file pairs: elastix (affine + B-spline, Mattes MI), ANTs (antspyx) and FireANTs.

Each returns the displacement field on the fixed grid in RAS millimetres, channel-first,
in the project's convention ``warped(x) = moving(x + ddf(x))``, and the warped moving image.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

_ELASTIX_COMMON = """(FixedInternalImagePixelType "float")
(MovingInternalImagePixelType "float")
(Registration "MultiResolutionRegistration")
(Interpolator "BSplineInterpolator")
(ResampleInterpolator "FinalBSplineInterpolator")
(Resampler "DefaultResampler")
(FixedImagePyramid "FixedSmoothingImagePyramid")
(MovingImagePyramid "MovingSmoothingImagePyramid")
(Optimizer "AdaptiveStochasticGradientDescent")
(Metric "AdvancedMattesMutualInformation")
(HowToCombineTransforms "Compose")
(NumberOfHistogramBins 32)
(NumberOfResolutions 3)
(MaximumNumberOfIterations 500)
(NumberOfSpatialSamples 4096)
(NewSamplesEveryIteration "true")
(ImageSampler "RandomCoordinate")
(BSplineInterpolationOrder 1)
(FinalBSplineInterpolationOrder 3)
(DefaultPixelValue 0)
(ResultImageFormat "nii.gz")
"""

ELASTIX_AFFINE = _ELASTIX_COMMON + """(Transform "AffineTransform")
(AutomaticScalesEstimation "true")
(AutomaticTransformInitialization "true")
(AutomaticTransformInitializationMethod "CenterOfGravity")
(WriteResultImage "false")
"""

ELASTIX_BSPLINE = _ELASTIX_COMMON + """(Transform "BSplineTransform")
(FinalGridSpacingInPhysicalUnits 16)
(WriteResultImage "true")
(ResultImagePixelType "float")
"""


def _lps_field_to_ras(path: Path, dims: int) -> np.ndarray:
    """An ITK displacement field file (vectors in LPS mm) -> channel-first RAS mm array."""
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    vec = data.reshape(*data.shape[:dims], -1)[..., :dims] if data.ndim > dims + 1 else data
    field = np.moveaxis(vec, -1, 0).copy()
    field[:2] *= -1.0
    return field


def elastix(fixed: Path, moving: Path, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Affine then B-spline elastix registration (multi-resolution, advanced Mattes MI)."""
    work = Path(tempfile.mkdtemp(prefix="elastix-"))
    try:
        (work / "affine.txt").write_text(ELASTIX_AFFINE)
        (work / "bspline.txt").write_text(ELASTIX_BSPLINE)
        subprocess.run(
            ["elastix", "-f", str(fixed), "-m", str(moving), "-p", str(work / "affine.txt"), "-p", str(work / "bspline.txt"),
             "-out", str(work), "-threads", str(threads)],
            check=True, capture_output=True,
        )
        subprocess.run(
            ["transformix", "-def", "all", "-tp", str(work / "TransformParameters.1.txt"), "-out", str(work), "-threads", str(threads)],
            check=True, capture_output=True,
        )
        dims = len(nib.load(str(fixed)).shape)
        ddf = _lps_field_to_ras(work / "deformationField.nii.gz", dims)
        warped = np.asarray(nib.load(str(work / "result.1.nii.gz")).dataobj, dtype=np.float32)
        return ddf, warped
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ants(fixed: Path, moving: Path, transform: str = "SyN") -> tuple[np.ndarray, np.ndarray]:
    """ANTs registration through antspyx with mutual information (``"SyN"`` or ``"Affine"``)."""
    import ants as antspy

    work = Path(tempfile.mkdtemp(prefix="ants-"))
    try:
        f, m = antspy.image_read(str(fixed)), antspy.image_read(str(moving))
        reg = antspy.registration(f, m, type_of_transform=transform, aff_metric="mattes", syn_metric="mattes", outprefix=str(work / "r_"))
        composed = antspy.apply_transforms(f, m, reg["fwdtransforms"], compose=str(work / "c_"))
        dims = f.dimension
        ddf = _lps_field_to_ras(Path(composed), dims)
        return ddf, reg["warpedmovout"].numpy().astype(np.float32)
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: FireANTs settings: its README's Adam/compositive-greedy recipe for 2 mm brain MRI, with MI, sized for one CPU core.
#: No full-resolution level: FireANTs' Gaussian-Parzen MI (32 bins) costs ~6 s per iteration on a 91x109x91 grid on
#: one core (~0.5 s at scale 2, ~0.07 s at scale 4), so the greedy field is optimised on the half-resolution grid and
#: upsampled (trilinear) to the fixed grid. The affine uses AffineRegistration's own default rate (3e-2), the greedy
#: step a smaller rate than the README's 0.5 (0.5 and 0.25 overshoot with global MI on these pairs).
FIREANTS_SCALES = [4, 2]
FIREANTS_AFFINE_ITERATIONS = [200, 30]
FIREANTS_GREEDY_ITERATIONS = [100, 50]
FIREANTS_AFFINE_LR = 3e-2
FIREANTS_GREEDY_LR = 0.1


def _sitk_from_nifti(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image with exactly nibabel's geometry (RAS affine -> LPS origin/direction/spacing)."""
    import SimpleITK as sitk

    dims = data.ndim
    mat = np.asarray(affine, dtype=np.float64)[np.ix_([*range(dims), 3], [*range(dims), 3])]
    flip = np.diag([-1.0, -1.0] + [1.0] * (dims - 2))  # RAS -> LPS
    lin = flip @ mat[:dims, :dims]
    spacing = np.linalg.norm(lin, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(*range(dims)[::-1]), dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lin / spacing).reshape(-1).tolist())
    img.SetOrigin((flip @ mat[:dims, dims]).tolist())
    return img


def _unit_range(data: np.ndarray) -> np.ndarray:
    """Intensities onto [0, 1] (minimum to 99.9th percentile), as FireANTs' Gaussian-Parzen MI expects."""
    lo, hi = float(data.min()), float(np.percentile(data, 99.9))
    return np.clip((data - lo) / max(hi - lo, 1e-8), 0.0, 1.0)


def fireants(fixed: Path, moving: Path, transform: str = "greedy") -> tuple[np.ndarray, np.ndarray]:
    """FireANTs (CPU) with mutual information: moments + affine (``"affine"``), then greedy deformable (``"greedy"``)."""
    import contextlib
    import sys

    import torch
    from torch.nn import functional as F

    with contextlib.redirect_stdout(sys.stderr):  # FireANTs prints its backend on import
        from fireants.io.image import BatchedImages, Image
        from fireants.registration.affine import AffineRegistration
        from fireants.registration.greedy import GreedyRegistration
        from fireants.registration.moments import MomentsRegistration

    if transform not in ("affine", "greedy"):
        raise ValueError(f"transform must be 'affine' or 'greedy', got {transform!r}")
    f_nii, m_nii = nib.load(str(fixed)), nib.load(str(moving))
    f_data = np.asarray(f_nii.dataobj, dtype=np.float64)
    m_data = np.asarray(m_nii.dataobj, dtype=np.float64)
    dims = f_data.ndim
    f_img = Image(_sitk_from_nifti(_unit_range(f_data), f_nii.affine), device="cpu")
    m_img = Image(_sitk_from_nifti(_unit_range(m_data), m_nii.affine), device="cpu")
    f_batch, m_batch = BatchedImages([f_img]), BatchedImages([m_img])

    moments = MomentsRegistration(1, f_batch, m_batch, moments=1, loss_type="mi", progress_bar=False)
    moments.optimize()
    reg = AffineRegistration(FIREANTS_SCALES, FIREANTS_AFFINE_ITERATIONS, f_batch, m_batch, loss_type="mi",
                             optimizer="Adam", optimizer_lr=FIREANTS_AFFINE_LR, init_rigid=moments.get_affine_init(), progress_bar=False)
    reg.optimize()
    if transform == "greedy":
        reg = GreedyRegistration(FIREANTS_SCALES, FIREANTS_GREEDY_ITERATIONS, f_batch, m_batch, loss_type="mi",
                                 deformation_type="compositive", optimizer="Adam", optimizer_lr=FIREANTS_GREEDY_LR, smooth_grad_sigma=1.0,
                                 smooth_warp_sigma=0.5, init_affine=reg.get_affine_matrix().detach(), progress_bar=False)
        reg.optimize()

    with torch.no_grad():
        coords = reg.get_warped_coordinates(f_batch, m_batch)  # (1, *reversed fixed shape, dims): moving's [-1, 1], x first
        warped = F.grid_sample(torch.from_numpy(m_data.transpose(*range(dims)[::-1]).astype(np.float32))[None, None],
                               coords.float(), mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    # moving's [-1, 1] coordinates -> moving LPS mm (float64) -> RAS mm, on the fixed grid in NIfTI axis order
    t2p = m_img._px2phy @ m_img._torch2px
    pts = coords[0].double().numpy().transpose(*range(dims)[::-1], dims)
    world = np.einsum("ij,...j->i...", t2p[:dims, :dims], pts) + t2p[:dims, dims].reshape(dims, *([1] * dims))
    world[:2] *= -1.0
    f_aff = np.asarray(f_nii.affine, dtype=np.float64)[np.ix_([*range(dims), 3], [*range(dims), 3])]
    idx = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in f_data.shape], indexing="ij"))
    x = np.einsum("ij,j...->i...", f_aff[:dims, :dims], idx) + f_aff[:dims, dims].reshape(dims, *([1] * dims))
    ddf = world - x
    return ddf, warped.numpy().transpose(*range(dims)[::-1]).astype(np.float32)
