"""MIND-SSC: modality-independent neighbourhood descriptors (Heinrich et al., MICCAI 2013).

Each voxel is described by the patch distances between pairs of its neighbours (the
self-similarity context: the 12 pairs of 6-neighbours at distance sqrt(2) in 3D, 4 pairs of
4-neighbours in 2D), normalised by their local variance and mapped through ``exp(-d / v)``.
The descriptor depends on local structure, not on the contrast that renders it, so T2 and T1
descriptors of the same anatomy agree and can be compared by SSD. MONAI has no MIND; this is
the descriptor uniGradICON's instance optimisation and FireANTs' cross-contrast recipe use.
"""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["mind_ssc", "MINDSSCLoss"]


def _neighbour_pairs(dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The orthogonal pairs of the 2*dims face neighbours: 12 in 3D, 4 in 2D."""
    unit = []
    for axis in range(dims):
        for sign in (-1, 1):
            v = [0] * dims
            v[axis] = sign
            unit.append(tuple(v))
    return [(a, b) for a, b in itertools.combinations(unit, 2) if sum(x * y for x, y in zip(a, b)) == 0]


def _shifted(padded: torch.Tensor, offset, dilation: int, size) -> torch.Tensor:
    idx = [slice(None), slice(None)] + [slice(dilation + o * dilation, dilation + o * dilation + s) for o, s in zip(offset, size)]
    return padded[tuple(idx)]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 1) -> torch.Tensor:
    """MIND-SSC descriptor of ``image`` ``(B, 1, *spatial)``: ``(B, 12, *spatial)`` in 3D, ``(B, 4, ...)`` in 2D.

    Args:
        image: single-channel 2D or 3D image.
        radius: half-width of the patches compared (box filter of ``2 * radius + 1``).
        dilation: distance of the neighbours, voxels.
    """
    dims = image.ndim - 2
    if dims not in (2, 3) or image.shape[1] != 1:
        raise ValueError(f"expected a single-channel 2D or 3D image (B, 1, *spatial), got shape {tuple(image.shape)}")
    size = image.shape[2:]
    pad = F.pad(image, [dilation] * (2 * dims), mode="replicate")
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    dist = []
    for a, b in _neighbour_pairs(dims):
        diff = _shifted(pad, a, dilation, size) - _shifted(pad, b, dilation, size)
        dist.append(diff * diff)
    d = torch.cat(dist, dim=1)
    d = pool(F.pad(d, [radius] * (2 * dims), mode="replicate"), 2 * radius + 1, stride=1)
    d = d - d.amin(dim=1, keepdim=True)  # as in the reference implementation: the closest pair has distance 0
    v = d.mean(dim=1, keepdim=True)
    m = v.mean(dim=tuple(range(1, v.ndim)), keepdim=True).detach()  # per sample: a descriptor ignores the rest of its batch
    v = torch.minimum(torch.maximum(v, 1e-3 * m + 1e-12), 1e3 * m + 1e-12)
    desc = torch.exp(-d / v)
    return desc / desc.amax(dim=1, keepdim=True).clamp_min(1e-12)


class MINDSSCLoss(_Loss):
    """Mean squared difference of the MIND-SSC descriptors of ``pred`` and ``target``.

    Either argument may already be a descriptor (``descriptors=True``): warping a precomputed
    moving descriptor is cheaper than describing each warped image anew.

    Args:
        radius: patch half-width.
        dilation: neighbour distance.
        descriptors: the inputs are descriptors already (as :func:`mind_ssc` returns).
    """

    def __init__(self, radius: int = 1, dilation: int = 1, descriptors: bool = False):
        super().__init__()
        self.radius, self.dilation, self.descriptors = int(radius), int(dilation), bool(descriptors)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, 1, *spatial)`` (or descriptors of equal shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if not self.descriptors:
            pred, target = mind_ssc(pred, self.radius, self.dilation), mind_ssc(target, self.radius, self.dilation)
        return F.mse_loss(pred, target)
