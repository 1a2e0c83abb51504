"""Mattes mutual information with sparse B-spline binning.

MONAI's ``GlobalMutualInformationLoss(kernel_type="b-spline")`` builds a dense
(batch, voxels, bins) weight tensor for each image and multiplies them: O(voxels x bins^2)
work and O(voxels x bins) memory. The cubic B-spline Parzen window is non-zero on exactly
four bins and the box window of the target on one (two at an exact tie), so the joint
histogram is the sum of four scatter-adds of one value per voxel. Same value, same
gradient, a fraction of the time and memory (``benchmarks/losses.py``).
"""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["SparseMutualInformationLoss", "cubic_bspline_weights"]

_PADDING = 2  # bins left free on each side so the cubic window never leaves the histogram


def cubic_bspline_weights(frac: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cubic B-spline weights of bins ``i-1, i, i+1, i+2`` for a sample at ``i + frac``."""
    f2, f3 = frac * frac, frac * frac * frac
    g = 1.0 - frac
    return g * g * g / 6.0, (4.0 - 6.0 * f2 + 3.0 * f3) / 6.0, (4.0 - 6.0 * g * g + 3.0 * g * g * g) / 6.0, f3 / 6.0


class SparseMutualInformationLoss(_Loss):
    """Negative Mattes mutual information (cubic B-spline window on ``pred``, box on ``target``).

    Equal to ``monai.losses.GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=...)``
    for a batch of one. For larger batches each sample's histogram spans that sample's own
    intensity range (MONAI spans the whole batch's), so a sample's loss does not depend on
    the others in its batch, and data-parallel training matches single-process training.

    Args:
        num_bins: histogram bins (4 of them are padding, as in ITK/MONAI).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
        smooth_nr, smooth_dr: the constants of MONAI's log ratio.
    """

    def __init__(self, num_bins: int = 23, reduction: LossReduction | str = LossReduction.MEAN, smooth_nr: float = 1e-7, smooth_dr: float = 1e-7):
        super().__init__(reduction=LossReduction(reduction).value)
        if num_bins <= 2 * _PADDING:
            raise ValueError(f"num_bins must be > {2 * _PADDING}, got {num_bins}")
        self.num_bins = int(num_bins)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def _bin_coordinate(self, img: torch.Tensor) -> torch.Tensor:
        """Continuous bin coordinate of every voxel, (batch, voxels), clamped to the unpadded bins."""
        lo, hi = img.amin(dim=1, keepdim=True), img.amax(dim=1, keepdim=True)
        bin_size = (hi - lo).clamp_min(1e-12) / (self.num_bins - 2 * _PADDING)
        coord = img / bin_size - (lo / bin_size - _PADDING)
        return coord.clamp(_PADDING, self.num_bins - _PADDING - 1)

    def joint_histogram(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Joint probability (batch, bins_pred, bins_target) of the two images."""
        batch, nb = pred.shape[0], self.num_bins
        a = self._bin_coordinate(pred.reshape(batch, -1))
        with torch.no_grad():  # the box window is piecewise constant: no gradient
            b = self._bin_coordinate(target.reshape(batch, -1).to(a))
            b_floor = b.floor()
            b_frac = b - b_floor
            tie = b_frac == 0.5
            col = (b_floor + (b_frac > 0.5)).long()  # at a tie: the lower bin, the upper one gets half too
            base = torch.arange(batch, device=a.device).view(-1, 1) * nb * nb
            a_floor = a.detach().floor()
        frac = a - a_floor
        row = a_floor.long() - 1
        hist = a.new_zeros(batch * nb * nb)
        has_tie = bool(tie.any())
        col_weight = torch.where(tie, 0.5, 1.0).to(a) if has_tie else None
        for k, w in enumerate(cubic_bspline_weights(frac)):
            idx = (base + (row + k) * nb)
            hist = hist.index_add(0, (idx + col).reshape(-1), (w if col_weight is None else w * col_weight).reshape(-1))
            if has_tie:  # an exact tie splits the box window between two target bins
                hist = hist.index_add(0, (idx + col + 1)[tie], (0.5 * w)[tie])
        return hist.view(batch, nb, nb) / a.shape[1]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: ``pred``, ``target`` of the same shape ``(B, C, *spatial)``."""
        if target.shape != pred.shape:
            raise ValueError(f"ground truth has differing shape ({target.shape}) from pred ({pred.shape})")
        pab = self.joint_histogram(pred, target)
        papb = pab.sum(2, keepdim=True) * pab.sum(1, keepdim=True)
        mi = torch.sum(pab * torch.log((pab + self.smooth_nr) / (papb + self.smooth_dr) + self.smooth_dr), dim=(1, 2))
        if self.reduction == LossReduction.SUM.value:
            return mi.sum().neg()
        if self.reduction == LossReduction.NONE.value:
            return mi.neg()
        return mi.mean().neg()
