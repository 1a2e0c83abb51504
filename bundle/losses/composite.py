"""Composite unsupervised loss for the two-stage, two-direction multi-modal network."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from torch import nn
from torch.nn import functional as F

from ..metrics import one_hot_labels
from ..networks.regnet import RegistrationOutput, StageResult
from .mutual_information import SparseMutualInformationLoss
from .regularisers import regulariser

__all__ = ["RegistrationLoss", "inverse_consistency_error"]


def inverse_consistency_error(ddf_ab: torch.Tensor, ddf_ba: torch.Tensor, warp: Warp | None = None) -> torch.Tensor:
    """Mean squared residual (voxels^2) of ``x -> x + ddf_ab(x) -> ... + ddf_ba(.)``.

    Zero when ``ddf_ba`` exactly inverts ``ddf_ab``.
    """
    warp = warp or Warp(mode="bilinear", padding_mode="border")
    residual = ddf_ab + warp(ddf_ba, ddf_ab)
    return residual.pow(2).sum(dim=1).mean()


class RegistrationLoss(nn.Module):
    """Similarity + synthesis + cycle + inverse consistency + smoothness, each weighted.

    Terms (summed over both directions when the output has a backward direction):

    * ``similarity``: cross-modality alignment of the warped source with the target;
      ``"mi"``: Mattes mutual information on the intensities (inputs clamped to [0, 1]),
      :class:`SparseMutualInformationLoss`, MONAI's B-spline ``GlobalMutualInformationLoss``
      computed sparsely; ``"lncc"``: MONAI LNCC (rectangular window) between the *synthesised*,
      warped source (already in the target's contrast) and the target.
    * ``synthesis``: L1 between the synthesised, warped source and the target; trains the
      decoders to render the other contrast.
    * ``cycle``: L1 of each image against its synthesis cycle (A -> B -> A).
    * ``inverse``: :func:`inverse_consistency_error` of the two composed fields.
    * ``smoothness``: diffusion or bending energy of the deformable field (:class:`Diffusion`,
      :class:`BendingEnergy`: MONAI's ``DiffusionLoss``/``BendingEnergyLoss`` values, fused).
    * ``overlap``: MONAI ``DiceLoss`` (background excluded) between the source's label map, one-hot
      and warped by the composed field (soft, bilinear), and the target's: the SynthMorph-style
      term on *synthesised* label maps (needs the labels; off, weight 0, by default).
    * ``displacement``: synthetic supervision, the mean end-point error (voxels) of the forward
      field against the pair's known motion ``gt_ddf`` over the fixed brain (``fixed_label > 0``,
      the whole image without labels). Only synthesised pairs have it (off by default).

    Image terms are evaluated after ``downsample`` 2x average-poolings, which keeps MI
    affordable on 3D volumes at 2 mm.

    Args:
        spatial_dims: 2 or 3.
        similarity: ``"mi"`` or ``"lncc"``.
        weights: dict with keys among ``similarity``, ``synthesis``, ``cycle``, ``inverse``,
            ``smoothness``; missing keys take the defaults below.
        smoothness: ``"diffusion"`` or ``"bending"``.
        downsample: 2x poolings before the image terms.
        num_bins: MI histogram bins.
        lncc_kernel_size: LNCC window size.
        labels: label values of the ``overlap`` term (0 is the background).
    """

    default_weights = {"similarity": 1.0, "synthesis": 0.5, "cycle": 0.5, "inverse": 0.01, "smoothness": 1.0, "overlap": 0.0, "displacement": 0.0}

    def __init__(
        self,
        spatial_dims: int = 3,
        similarity: str = "mi",
        weights: dict | None = None,
        smoothness: str = "diffusion",
        downsample: int = 0,
        num_bins: int = 32,
        lncc_kernel_size: int = 7,
        labels=(1, 2, 3),
    ):
        super().__init__()
        if similarity not in ("mi", "lncc"):
            raise ValueError(f"similarity must be 'mi' or 'lncc', got {similarity!r}.")
        self.regulariser = regulariser(smoothness, "smoothness")
        unknown = set(weights or {}) - set(self.default_weights)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; expected {sorted(self.default_weights)}.")
        self.spatial_dims = spatial_dims
        self.similarity = similarity
        self.weights = {**self.default_weights, **(weights or {})}
        self.downsample = int(downsample)
        self.mi = SparseMutualInformationLoss(num_bins=num_bins)
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size=lncc_kernel_size, kernel_type="rectangular")
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.labels = tuple(int(v) for v in labels)
        self.dice = DiceLoss(include_background=False)

    def overlap(self, stage: StageResult, source_label: torch.Tensor, target_label: torch.Tensor) -> torch.Tensor:
        """Dice loss of the source labels, one-hot and warped by ``stage.ddf``, against the target labels."""
        src = one_hot_labels(source_label, self.labels).to(stage.ddf.dtype)
        return self.dice(self.warp(src, stage.ddf), one_hot_labels(target_label, self.labels).to(stage.ddf.dtype))

    @staticmethod
    def displacement(stage: StageResult, gt_ddf: torch.Tensor, fixed_label: torch.Tensor | None = None) -> torch.Tensor:
        """Mean end-point error (voxels) of ``stage.ddf`` against ``gt_ddf``, over the fixed brain when labelled."""
        epe = (stage.ddf - gt_ddf.to(stage.ddf.dtype)).norm(dim=1)
        if fixed_label is None:
            return epe.mean()
        brain = (fixed_label[:, 0] > 0).to(epe.dtype)
        return (epe * brain).sum() / brain.sum().clamp(min=1.0)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if not self.downsample:
            return x
        k = 2**self.downsample
        return F.avg_pool2d(x, k) if self.spatial_dims == 2 else F.avg_pool3d(x, k)

    def _direction(self, stage: StageResult, target: torch.Tensor) -> dict[str, torch.Tensor]:
        tgt = self._pool(target)
        terms = {}
        if self.similarity == "mi":
            terms["similarity"] = self.mi(self._pool(stage.warped).clamp(0, 1), tgt.clamp(0, 1))
        else:
            if stage.synth_warped is None:
                raise ValueError("similarity='lncc' needs the synthesis decoders (synthesis=True).")
            terms["similarity"] = self.lncc(self._pool(stage.synth_warped), tgt)
        if stage.synth_warped is not None:
            terms["synthesis"] = F.l1_loss(self._pool(stage.synth_warped), tgt)
        terms["smoothness"] = self.regulariser(stage.ddf_deformable)
        return terms

    def forward(
        self,
        output: RegistrationOutput,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        moving_label: torch.Tensor | None = None,
        fixed_label: torch.Tensor | None = None,
        gt_ddf: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return every weighted term and their sum under ``"loss"`` (``overlap`` needs both label maps,
        ``displacement`` the known motion ``gt_ddf``)."""
        terms = self._direction(output.forward, fixed)
        if self.weights["displacement"]:
            if gt_ddf is None:
                raise ValueError("the displacement term needs the pair's gt_ddf (the trainer's gt_key; synthesised pairs have it).")
            terms["displacement"] = self.displacement(output.forward, gt_ddf, fixed_label)
        if self.weights["overlap"]:
            if moving_label is None or fixed_label is None:
                raise ValueError("the overlap term needs moving_label and fixed_label (the trainer's label_keys).")
            terms["overlap"] = self.overlap(output.forward, moving_label, fixed_label)
            if output.backward is not None:
                terms["overlap"] = terms["overlap"] + self.overlap(output.backward, fixed_label, moving_label)
        if output.backward is not None:
            for k, v in self._direction(output.backward, moving).items():
                terms[k] = terms[k] + v
            terms["inverse"] = inverse_consistency_error(output.forward.ddf, output.backward.ddf, self.warp) + (
                inverse_consistency_error(output.backward.ddf, output.forward.ddf, self.warp)
            )
        if output.cycle_moving is not None:
            terms["cycle"] = F.l1_loss(output.cycle_moving, moving) + F.l1_loss(output.cycle_fixed, fixed)
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        weighted["loss"] = sum(weighted.values())
        return weighted
