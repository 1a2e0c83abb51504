"""Explanations of the registration network's stages (Grad-CAM / HiResCAM with Captum) and their sanity checks.

* :mod:`.targets`: the explained scalars (affine parameters, displacement, similarity, synthesis).
* :mod:`.gradcam`: :class:`StageExplainer` and :func:`explain_pair` (maps on the network grid).
* :mod:`.randomisation`, :mod:`.deletion`, :mod:`.localisation`: the three sanity checks;
  :mod:`.sanity`: all of them for every stage and target (:func:`sanity_report`, :class:`SanitySettings`).
* :mod:`.refinement`: similarity-gradient maps of the refinement stages.
* :mod:`.writer`: files in, NIfTI maps on the fixed grid, PNG overlays and a summary out.
"""

from .deletion import deletion_check
from .gradcam import DEFAULT_STAGES, STAGES, Explanation, StageExplainer, StageSpec, explain_pair, normalise_map
from .localisation import localisation_check
from .randomisation import randomisation_check
from .sanity import SanitySettings, sanity_report
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
    "SanitySettings",
    "sanity_report",
    "Target",
    "compose_affine",
    "decompose_affine",
    "make_target",
]
