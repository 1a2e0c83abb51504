"""Checks that the Grad-CAM maps mean something: all three, for every stage and target.

The checks live in their own modules:

* :mod:`.randomisation`: the map of a network whose weights are re-initialised should differ
  from the trained network's (low Spearman correlation);
* :mod:`.deletion`: blurring the most attributed voxels should change the explained scalar
  more than blurring as many random ones (ratio above 1);
* :mod:`.localisation`: on a case deformed only inside a box, the map should concentrate
  in the box (ratio above 1).

:func:`sanity_report` runs them with one :class:`SanitySettings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..networks.bundle_net import structured_forward
from .deletion import blur_voxels, deletion_check
from .gradcam import StageExplainer, stage_explainers
from .localisation import box_mask, bump_displacement, default_box, local_deformation_case, localisation_check, localisation_fraction
from .randomisation import randomisation_check, randomised_copy, spearman

__all__ = [
    "SanitySettings",
    "sanity_report",
    # the checks, from their modules
    "spearman",
    "randomised_copy",
    "randomisation_check",
    "blur_voxels",
    "deletion_check",
    "box_mask",
    "bump_displacement",
    "local_deformation_case",
    "localisation_fraction",
    "localisation_check",
]


@dataclass
class SanitySettings:
    """What :func:`sanity_report` explains and how each check runs.

    Attributes:
        stages: see :func:`bundle.explain.gradcam.stage_specs`.
        targets: ``{stage: names}``; defaults from :func:`bundle.explain.gradcam.default_targets`.
        spacing_mm: network grid voxel size (enables the mm targets).
        roi_mask: ROI for ``displacement_roi`` targets.
        method: ``"gradcam"`` or ``"hirescam"`` for every stage; ``None`` keeps each stage's.
        scope: randomisation scope (see :func:`randomised_copy`).
        fraction: deletion top-k share.
        n_random: deletion random draws.
        sigma: deletion blur (voxels).
        perturb: images perturbed by deletion (``"moving"``, ``"fixed"``, ``"both"``): one for every
            stage, or ``{stage: images}`` with ``"both"`` for the stages not named.
        deletion_scalar: ``"network"`` (default: only the network sees the blurred images, the
            scalar compares the clean ones, so deletion measures what the *prediction* depends on)
            or ``"perturbed"`` (the scalar reads the blurred images too; a similarity then changes
            by the blur itself wherever the map points). See :mod:`.deletion`.
        box: localisation box ``[(start, stop), ...]``; default :func:`.localisation.default_box`.
        amplitude: localisation bump amplitude (voxels).
        seed: seed of every random choice.
    """

    stages: Sequence[str] | Mapping | None = None
    targets: Mapping[str, str | Sequence[str]] | None = None
    spacing_mm: float | Sequence[float] | None = None
    roi_mask: torch.Tensor | None = None
    method: str | None = None
    scope: str = "downstream"
    fraction: float = 0.1
    n_random: int = 5
    sigma: float = 4.0
    perturb: str | Mapping[str, str] = "both"
    deletion_scalar: str = "network"
    box: Sequence[Sequence[int]] | None = None
    amplitude: float | None = None
    seed: int = 0

    def as_json(self, box) -> dict:
        """The check settings as ``explanations.json`` records them (with the box actually used)."""
        keep = ("scope", "fraction", "n_random", "sigma", "perturb", "deletion_scalar", "seed", "amplitude", "method")
        out = {k: v for k, v in asdict(self).items() if k in keep}
        out["perturb"] = self.perturb if isinstance(self.perturb, str) else {"default": "both", **self.perturb}
        return {**out, "box": [list(map(int, b)) for b in box]}

    def perturb_for(self, stage: str) -> str:
        """The images deletion perturbs for ``stage``."""
        return self.perturb if isinstance(self.perturb, str) else self.perturb.get(stage, "both")


def sanity_report(
    network: nn.Module, moving: torch.Tensor, fixed: torch.Tensor, settings: SanitySettings | None = None, aligned_moving: torch.Tensor | None = None
) -> dict:
    """All three checks for every selected stage and target.

    Args:
        network: the trained network.
        moving: ``(B, 1, *spatial)`` on the network grid, in [0, 1].
        fixed: ``(B, 1, *spatial)``.
        settings: see :class:`SanitySettings` (default: its defaults).
        aligned_moving: moving image aligned with ``fixed`` for the localisation case; default
            the network's own registered moving image (``forward.warped``).

    Returns:
        ``{"settings": {...}, "<stage>": {"<target>": {"value", "randomisation_spearman",
        "deletion_ratio", "deletion_top_change", "deletion_random_change",
        "deletion_ratio_shifted", "localisation_ratio", "localisation_mass_fraction",
        "localisation_volume_fraction"}}}``.
    """
    s = settings or SanitySettings()
    was_training = network.training
    network.eval()
    try:
        if aligned_moving is None:
            with torch.no_grad():
                aligned_moving = structured_forward(network, moving, fixed, bidirectional=False, synthesis=False).forward.warped
        box = default_box(fixed) if s.box is None else s.box
        report: dict = {"settings": s.as_json(box)}
        for stage, _, name, ex in stage_explainers(network, s.stages, s.targets, s.spacing_mm, s.roi_mask, s.method):
            report.setdefault(stage, {})[name] = _checks(ex, moving, fixed, aligned_moving, box, s, s.perturb_for(stage))
    finally:
        network.train(was_training)
    return report


def _checks(ex: StageExplainer, moving, fixed, aligned_moving, box, s: SanitySettings, perturb: str) -> dict:
    attr = ex.attribute(moving, fixed)
    rnd = randomisation_check(ex, moving, fixed, s.scope, s.seed, attribution=attr)
    dele = deletion_check(ex, moving, fixed, attr, s.fraction, s.n_random, s.sigma, perturb, "voxels", s.seed, s.deletion_scalar)
    shifted = deletion_check(ex, moving, fixed, attr, s.fraction, s.n_random, s.sigma, perturb, "shifted", s.seed, s.deletion_scalar)
    loc = localisation_check(ex, aligned_moving, fixed, box, s.amplitude)
    return {
        "method": ex.method,
        "value": dele["value"],
        "randomisation_spearman": rnd["spearman"],
        "deletion_perturb": perturb,
        "deletion_scalar": s.deletion_scalar,
        "deletion_ratio": dele["ratio"],
        "deletion_top_change": dele["top_change"],
        "deletion_random_change": dele["random_change"],
        "deletion_ratio_shifted": shifted["ratio"],
        "localisation_ratio": loc["ratio"],
        "localisation_mass_fraction": loc["mass_fraction"],
        "localisation_volume_fraction": loc["volume_fraction"],
    }
