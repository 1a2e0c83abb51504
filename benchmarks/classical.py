"""Classical baselines on file pairs: elastix (affine + B-spline, Mattes MI) and ANTs (antspyx).

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
