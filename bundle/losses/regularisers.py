"""Smoothness regularisers of a displacement field as fused finite-difference stencils.

Same stencils and values as MONAI's ``BendingEnergyLoss`` and ``DiffusionLoss`` (central
differences on the inner voxels: ``[1, -2, 1]`` pure and 4-point mixed second derivatives,
``[-1/2, 0, 1/2]`` first derivatives), computed by one autograd function whose backward is
the stencils' adjoint applied in place. Autograd through MONAI's slicing allocates and
copies a full-size tensor for every shifted view and every backward slice; this makes about
one pass per stencil tap, slab by slab so the data stay in cache, and stores nothing but the
input for the backward. ``benchmarks/losses.py`` measures both.
"""

from __future__ import annotations

import itertools

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["BendingEnergy", "Diffusion", "REGULARISERS", "regulariser", "bending_stencils", "diffusion_stencils", "stencil_energy"]

# A stencil: (weight, [(coefficient, offset per spatial axis), ...]); energy = weight * (sum coef * u[x + offset])^2.
Stencil = tuple[float, list[tuple[float, tuple[int, ...]]]]


def _unit(dims: int, axis: int, step: int) -> tuple[int, ...]:
    return tuple(step if d == axis else 0 for d in range(dims))


def bending_stencils(dims: int) -> list[Stencil]:
    """Pure second derivatives (weight 1) and mixed ones (weight 2) of MONAI's bending energy."""
    pure = [(1.0, [(1.0, _unit(dims, d, 1)), (-2.0, _unit(dims, d, 0)), (1.0, _unit(dims, d, -1))]) for d in range(dims)]
    mixed = []
    for i, j in itertools.combinations(range(dims), 2):
        taps = []
        for si, sj in itertools.product((1, -1), repeat=2):
            offset = tuple(si if d == i else sj if d == j else 0 for d in range(dims))
            taps.append((si * sj / 4.0, offset))
        mixed.append((2.0, taps))
    return pure + mixed


def diffusion_stencils(dims: int) -> list[Stencil]:
    """Central first derivatives of MONAI's diffusion loss."""
    return [(1.0, [(0.5, _unit(dims, d, 1)), (-0.5, _unit(dims, d, -1))]) for d in range(dims)]


def _view(x: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """The inner region ``[1:-1]`` of every spatial axis, shifted by ``offset``."""
    return x[(slice(None), slice(None), *(slice(1 + o, n - 1 + o) for o, n in zip(offset, x.shape[2:])))]


_SLAB_BYTES = 1 << 22  # slabs of ~4 MiB: in cache through all the passes, few enough for small op overhead


def _response(u: torch.Tensor, taps) -> tuple[torch.Tensor, float]:
    """``sum_k c_k u[x + o_k] / c_0`` on the inner voxels of ``u`` (two taps per pass first) and ``c_0``."""
    (c0, o0), (c1, o1) = taps[0], taps[1]
    r = torch.add(_view(u, o0), _view(u, o1), alpha=c1 / c0)
    for c, o in taps[2:]:
        r.add_(_view(u, o), alpha=c / c0)
    return r, c0


def _slabs(u: torch.Tensor):
    """``(start, stop)`` of slabs along the first spatial axis, each with its one-voxel halo."""
    inner = u.shape[2] - 2
    plane = max(1, u[:, :, 0].numel() * u.element_size())
    step = max(1, _SLAB_BYTES // plane - 2)
    return [(a, min(a + step, inner) + 2) for a in range(0, inner, step)]


class _StencilEnergy(torch.autograd.Function):
    """Sum over stencils of ``weight * ||stencil * u||^2`` on the inner voxels; adjoint backward.

    Works slab by slab along the first spatial axis so each slab stays in cache; the backward
    recomputes the responses slab by slab instead of storing them (memory: input and gradient only).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, stencils: list[Stencil]):
        energy, slabs = u.new_zeros(()), _slabs(u)
        kept = []  # a field that fits in one slab is small: keep its responses instead of recomputing them
        for a, b in slabs:
            slab = u[:, :, a:b]
            for weight, taps in stencils:
                r, c0 = _response(slab, taps)
                energy += weight * c0 * c0 * torch.linalg.vector_norm(r).square()
                if len(slabs) == 1:
                    kept.append(r)
        ctx.save_for_backward(u, *kept)
        ctx.stencils = stencils
        return energy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        u, *kept = ctx.saved_tensors
        grad = torch.zeros_like(u)
        scale = 2.0 * float(grad_out)
        for a, b in _slabs(u):
            slab, grad_slab = u[:, :, a:b], grad[:, :, a:b]
            for k, (weight, taps) in enumerate(ctx.stencils):
                r, c0 = (kept[k], taps[0][0]) if kept else _response(slab, taps)
                for c, o in taps:
                    _view(grad_slab, o).add_(r, alpha=scale * weight * c0 * c)
        return grad, None


def stencil_energy(field: torch.Tensor, stencils: list[Stencil], reduction: str = "mean") -> torch.Tensor:
    """``sum`` or ``mean`` (over batch, components and inner voxels, as MONAI) of the stencil energy."""
    if field.ndim not in (4, 5):
        raise ValueError(f"expected a 2D or 3D displacement field (B, dims, *spatial), got shape {tuple(field.shape)}")
    if field.shape[1] != field.ndim - 2:
        raise ValueError(f"a {field.ndim - 2}D field needs {field.ndim - 2} channels, got {field.shape[1]}")
    if min(field.shape[2:]) <= 2:
        raise ValueError(f"all spatial dimensions must be > 2, got {tuple(field.shape[2:])}")
    if not field.is_floating_point():
        field = field.float()
    total = _StencilEnergy.apply(field, stencils)
    if reduction == LossReduction.SUM.value:
        return total
    if reduction == LossReduction.MEAN.value:
        return total / _view(field, (0,) * (field.ndim - 2)).numel()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


class _StencilLoss(_Loss):
    """A regulariser given by the stencils of ``stencils(dims)``."""

    stencils = staticmethod(diffusion_stencils)

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN):
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        """Args: ``pred``, a displacement field ``(B, dims, *spatial)``."""
        return stencil_energy(pred, self.stencils(pred.ndim - 2), self.reduction)


class BendingEnergy(_StencilLoss):
    """Bending energy of a field ``(B, dims, *spatial)``; MONAI's ``BendingEnergyLoss`` values, faster.

    Args:
        reduction: ``"mean"`` (over batch, components and inner voxels) or ``"sum"``.
    """

    stencils = staticmethod(bending_stencils)


class Diffusion(_StencilLoss):
    """Diffusion regulariser of a field ``(B, dims, *spatial)``; MONAI's ``DiffusionLoss`` values, faster.

    Args:
        reduction: ``"mean"`` (over batch, components and inner voxels) or ``"sum"``.
    """

    stencils = staticmethod(diffusion_stencils)


#: The regularisers by the names configs use.
REGULARISERS = {"diffusion": Diffusion, "bending": BendingEnergy}


def regulariser(name: str, what: str = "regulariser") -> _StencilLoss:
    """The regulariser named ``name`` (:data:`REGULARISERS`); a ``ValueError`` naming ``what`` otherwise."""
    if name not in REGULARISERS:
        raise ValueError(f"{what} must be one of {tuple(REGULARISERS)}, got {name!r}")
    return REGULARISERS[name]()
