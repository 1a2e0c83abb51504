"""A fixed random subset of a grid's voxels, where a refinement level evaluates its similarity.

Mattes mutual information needs a histogram, not every voxel: elastix and ANTs estimate it from
a few thousand random samples. :class:`VoxelSample` evaluates the refinement's maps at ``n``
voxels only, with the same conventions as the dense path (MONAI ``Warp``: voxel units,
``grid_sample(align_corners=True)``, zero padding; a coarse field upsampled as
``F.interpolate(align_corners=False)`` does, as :func:`bundle.networks.deformable_head.field_to_ddf`),
so that a fine pyramid level costs what a coarse one does. The subset is drawn once per level
(seeded), so the objective stays deterministic and early stopping compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .networks.deformable_head import field_to_ddf

__all__ = ["VoxelSample"]


class VoxelSample:
    """``n`` voxels of a grid of ``size``, drawn without replacement (all of them when ``n`` is ``None`` or ``>=`` voxels).

    With ``mask`` (a boolean array of ``size``), the voxels are drawn from the mask's ones only
    (a fixed-image mask, as elastix and ANTs take).

    Attributes:
        size: the grid.
        index: ``(N,)`` flat indices of the voxels, ascending.
        points: ``(N, dims)`` their voxel coordinates.
    """

    def __init__(self, size: Sequence[int], n: int | None, seed: int = 0, device=None, dtype=torch.float32, mask: torch.Tensor | None = None):
        self.size = tuple(int(s) for s in size)
        if mask is None:
            candidates = torch.arange(math.prod(self.size))
        else:
            if tuple(mask.shape) != self.size:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the grid {self.size}")
            candidates = torch.nonzero(mask.reshape(-1).cpu(), as_tuple=False)[:, 0]
        if n is None or n >= len(candidates):
            self.index = candidates.to(device)
        else:
            gen = torch.Generator().manual_seed(int(seed))
            self.index = candidates[torch.randperm(len(candidates), generator=gen)[: int(n)]].sort().values.to(device)
        coords, rest = [], self.index
        for s in reversed(self.size):
            coords.append(rest % s)
            rest = torch.div(rest, s, rounding_mode="floor")
        self.points = torch.stack(coords[::-1], dim=1).to(dtype)

    @property
    def dims(self) -> int:
        return len(self.size)

    def values(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)``: the image at the sampled voxels."""
        return image.flatten(2)[:, :, self.index]

    def sample(self, image: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)``: ``image`` (on this grid) interpolated at voxel ``positions`` ``(B, N, dims)``, zeros outside."""
        scale = torch.as_tensor([2.0 / max(s - 1, 1) for s in self.size], dtype=positions.dtype, device=positions.device)
        grid = (positions * scale - 1.0).flip(-1)  # grid_sample wants the last axis first
        grid = grid.reshape(positions.shape[0], *([1] * (self.dims - 1)), positions.shape[1], self.dims)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(image.shape[0], image.shape[1], -1)

    def affine_positions(self, theta: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dims)``: ``M (x - c) + t + c`` for ``theta = [M | t]`` about the grid centre ``c``
        (the map of :func:`bundle.fields.affine_to_ddf`), at ``points`` ``(B or 1, N, dims)``, default the samples."""
        d = self.dims
        x = self.points[None] if points is None else points
        centre = torch.as_tensor([(s - 1) / 2.0 for s in self.size], dtype=theta.dtype, device=theta.device)
        p = x.to(theta.dtype) - centre
        return torch.einsum("bij,bnj->bni", theta[:, :, :d], p.expand(theta.shape[0], -1, -1)) + theta[:, None, :, d] + centre

    def field_at(self, ddf: torch.Tensor) -> torch.Tensor:
        """``(B, N, dims)``: a displacement on a coarser grid, upsampled to this one as
        ``field_to_ddf`` does (linear, ``align_corners=False``, vectors scaled), at the samples."""
        coarse = ddf.shape[2:]
        if tuple(coarse) == self.size:
            return self.values(ddf).transpose(1, 2)
        if 8 * len(self.index) > math.prod(self.size):  # dense enough: separable upsampling of the whole grid is cheaper (34 vs 52 ms at 0.5 M voxels)
            return self.values(field_to_ddf(ddf, self.size)).transpose(1, 2)
        x = self.points.to(ddf.dtype)
        u = ((2.0 * x + 1.0) / torch.as_tensor(self.size, dtype=ddf.dtype, device=ddf.device) - 1.0).flip(-1)
        grid = u.reshape(1, *([1] * (self.dims - 1)), -1, self.dims).expand(ddf.shape[0], *([-1] * self.dims), -1)
        out = F.grid_sample(ddf, grid, mode="bilinear", padding_mode="border", align_corners=False).reshape(ddf.shape[0], self.dims, -1)
        factor = torch.as_tensor([s / c for s, c in zip(self.size, coarse)], dtype=ddf.dtype, device=ddf.device)
        return (out * factor.view(1, -1, 1)).transpose(1, 2)
