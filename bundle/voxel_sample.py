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
        self._upsampling: dict = {}  # per coarse grid: the interpolation indices and weights of :meth:`field_at`

    @property
    def dims(self) -> int:
        return len(self.size)

    def values(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)``: the image at the sampled voxels."""
        return image.flatten(2)[:, :, self.index]

    def _grid_scale(self, dtype, device) -> torch.Tensor:
        return torch.as_tensor([2.0 / max(s - 1, 1) for s in self.size], dtype=dtype, device=device)

    def sample_grid(self, image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)``: ``image`` at ``grid`` ``(B, N, dims)``, ``grid_sample`` coordinates
        (``align_corners=True``, last axis first, see :meth:`affine_grid`), zeros outside."""
        grid = grid.reshape(grid.shape[0], *([1] * (self.dims - 1)), grid.shape[1], self.dims)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(image.shape[0], image.shape[1], -1)

    def sample(self, image: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)``: ``image`` (on this grid) interpolated at voxel ``positions`` ``(B, N, dims)``, zeros outside."""
        grid = (positions * self._grid_scale(positions.dtype, positions.device) - 1.0).flip(-1)  # grid_sample wants the last axis first
        return self.sample_grid(image, grid)

    def affine_positions(self, theta: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dims)``: ``M (x - c) + t + c`` for ``theta = [M | t]`` about the grid centre ``c``
        (the map of :func:`bundle.fields.affine_to_ddf`), at ``points`` ``(B or 1, N, dims)``, default the samples."""
        d = self.dims
        x = self.points[None] if points is None else points
        centre = torch.as_tensor([(s - 1) / 2.0 for s in self.size], dtype=theta.dtype, device=theta.device)
        p = x.to(theta.dtype) - centre
        return torch.einsum("bij,bnj->bni", theta[:, :, :d], p.expand(theta.shape[0], -1, -1)) + theta[:, None, :, d] + centre

    def affine_grid(self, theta: torch.Tensor):
        """For a fixed ``theta``: ``displacement -> grid``, the :meth:`sample_grid` coordinates of
        ``M (x + u - c) + t + c`` at the samples ``x`` for a displacement ``u`` given channels first,
        ``(B, dims, N)`` (``field_at(..., channels_first=True)``).

        The affine part is computed once; each call is one batched matrix product (``M u`` in grid
        coordinates, the long axis last, which is 3x faster than ``u M^T``), which is what a
        deformable refinement level evaluates many times.
        """
        theta = theta.detach()
        scale = self._grid_scale(theta.dtype, theta.device)
        base = (self.affine_positions(theta) * scale - 1.0).flip(-1).transpose(1, 2).contiguous()
        linear = (theta[:, :, : self.dims] * scale.view(1, -1, 1)).flip(1)
        return lambda u: torch.baddbmm(base, linear.expand(u.shape[0], -1, -1), u.to(base.dtype)).transpose(1, 2)

    def field_at(self, ddf: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
        """``(B, N, dims)`` (``(B, dims, N)`` when ``channels_first``): a displacement on a coarser
        grid, upsampled to this one as ``field_to_ddf`` does (linear, ``align_corners=False``,
        vectors scaled), at the samples.

        Separable: the coarse field is interpolated along every axis but the first on the whole
        grid (small: the first axis stays coarse), then along the first axis at the samples only
        (two gathers), so a dense level costs a fraction of upsampling the whole field.
        """
        coarse = tuple(ddf.shape[2:])
        if coarse == self.size:
            out = self.values(ddf)
            return out if channels_first else out.transpose(1, 2)
        b, d = ddf.shape[0], self.dims
        axes, (low, high, weight) = self._upsampling_weights(coarse, ddf.dtype, ddf.device)
        x = ddf
        for axis, (lo, hi, w) in enumerate(axes, start=1):  # interpolate along ``axis`` on the whole (partly coarse) grid
            dim = 2 + axis
            x = torch.lerp(x.index_select(dim, lo), x.index_select(dim, hi), w.view(*([1] * dim), -1, *([1] * (d - axis - 1))))
        flat = x.reshape(b, d, -1)
        gather = lambda at: torch.gather(flat, 2, at.view(1, 1, -1).expand(b, d, -1))  # noqa: E731 - far faster than index_select here
        out = torch.lerp(gather(low), gather(high), weight.view(1, 1, -1))
        factor = torch.as_tensor([s / c for s, c in zip(self.size, coarse)], dtype=ddf.dtype, device=ddf.device)
        out = out * factor.view(1, -1, 1)
        return out if channels_first else out.transpose(1, 2)

    def _upsampling_weights(self, coarse: tuple, dtype, device) -> tuple[list, tuple]:
        """For :meth:`field_at` from ``coarse``: ``(lo, hi, w)`` of every axis but the first (whole grid),
        and the samples' two flat indices and weight along the first; computed once per coarse grid."""
        key = (coarse, dtype, device)
        if key not in self._upsampling:
            axes = [_linear_weights(self.size[a], coarse[a], dtype, device) for a in range(1, self.dims)]
            lo, hi, w = _linear_weights(self.size[0], coarse[0], dtype, device)
            slab = math.prod(self.size[1:])
            rows = self.points[:, 0].long().to(device)
            rest = self.index.to(device) - rows * slab  # the flat index within a first-axis slice
            self._upsampling[key] = (axes, (lo[rows] * slab + rest, hi[rows] * slab + rest, w[rows]))
        return self._upsampling[key]


def _linear_weights(size: int, coarse: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output index of a length-``size`` axis: the two coarse indices and the weight of the
    second, as ``F.interpolate(mode="linear", align_corners=False)`` upsamples ``coarse`` to ``size``."""
    src = ((torch.arange(size, dtype=torch.float64) + 0.5) * (coarse / size) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=coarse - 1)
    hi = (lo + 1).clamp(max=coarse - 1)
    return lo.to(device), hi.to(device), (src - lo).to(dtype=dtype, device=device)
