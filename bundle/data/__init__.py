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

from __future__ import annotations

import importlib

# Exports are imported lazily (PEP 562): ``import bundle.data`` stays light, and
# ``python -m bundle.data.pairs`` does not find its module already imported.
_EXPORTS = {
    "SEQUENCES": "contrast",
    "TISSUE_PARAMETERS_1P5T": "contrast",
    "signal_equation": "contrast",
    "simulate_contrast": "contrast",
    "LABELS": "labels",
    "tissue_labels": "labels",
    "CONTRASTS": "pairs",
    "RegistrationPair": "pairs",
    "generate_pair": "pairs",
    "split_seeds": "pairs",
    "write_sample_data": "pairs",
    "SampleDataUnavailableError": "templates",
    "load_mni152": "templates",
    "load_spm_single_subject": "templates",
    "load_spm_templates": "templates",
    "check_image_array": "validation",
    "check_label_grid": "validation",
    "load_checked_image": "validation",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


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
