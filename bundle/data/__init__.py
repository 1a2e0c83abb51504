"""Sample data: real MRI templates from installed packages and a seeded registration-pair generator.

Modules:

* :mod:`~bundle.data.templates`: SPM (spm-runtime) and MNI152 (nilearn) templates and priors.
* :mod:`~bundle.data.contrast`: MR signal simulation from tissue probability maps.
* :mod:`~bundle.data.labels`: hard tissue labels from probability maps.
* :mod:`~bundle.data.grid`: resampling to a voxel size, axial slices.
* :mod:`~bundle.data.deform`: random affine/elastic transforms, composition and inversion.
* :mod:`~bundle.data.pairs`: the pair generator, the data set writer and its command line.
* :mod:`~bundle.data.validation`: input checks with one-line errors naming the file.
"""

from bundle.data.contrast import SEQUENCES, TISSUE_PARAMETERS_1P5T, signal_equation, simulate_contrast
from bundle.data.labels import LABELS, tissue_labels
from bundle.data.pairs import CONTRASTS, RegistrationPair, generate_pair, split_seeds, write_sample_data
from bundle.data.templates import (
    SampleDataUnavailableError,
    load_mni152,
    load_spm_single_subject,
    load_spm_templates,
)
from bundle.data.validation import check_image_array, check_label_grid, load_checked_image

__all__ = [
    "CONTRASTS",
    "LABELS",
    "SEQUENCES",
    "TISSUE_PARAMETERS_1P5T",
    "RegistrationPair",
    "SampleDataUnavailableError",
    "check_image_array",
    "check_label_grid",
    "generate_pair",
    "load_checked_image",
    "load_mni152",
    "load_spm_single_subject",
    "load_spm_templates",
    "signal_equation",
    "simulate_contrast",
    "split_seeds",
    "tissue_labels",
    "write_sample_data",
]
