"""Explanations of the registration network's stages (Grad-CAM / HiResCAM with Captum) and their sanity checks.

* :mod:`.targets`: the explained scalars (affine parameters, displacement, similarity, synthesis).
* :mod:`.gradcam`: :class:`StageExplainer` and :func:`explain_pair` (maps on the network grid).
* :mod:`.sanity`: model randomisation, deletion and localisation checks, :func:`sanity_report`.
* :mod:`.writer`: files in, NIfTI maps on the fixed grid, PNG overlays and a summary out.
"""

from .gradcam import DEFAULT_STAGES, STAGES, Explanation, StageExplainer, StageSpec, explain_pair, normalise_map
from .sanity import deletion_check, localisation_check, randomisation_check, sanity_report
from .targets import Target, compose_affine, decompose_affine, make_target

__all__ = [
    "DEFAULT_STAGES",
    "STAGES",
    "Explanation",
    "StageExplainer",
    "StageSpec",
    "explain_pair",
    "normalise_map",
    "deletion_check",
    "localisation_check",
    "randomisation_check",
    "sanity_report",
    "Target",
    "compose_affine",
    "decompose_affine",
    "make_target",
]
