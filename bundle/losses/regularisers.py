"""Smoothness regularisers of a displacement field as fused finite-difference stencils.

Same stencils and values as MONAI's ``BendingEnergyLoss`` and ``DiffusionLoss`` (central
differences on the inner voxels: ``[1, -2, 1]`` pure and 4-point mixed second derivatives,
``[-1/2, 0, 1/2]`` first derivatives), computed by one autograd function whose backward is
the stencils' adjoint applied in place. Autograd through MONAI's slicing allocates and
copies a full-size tensor for every shifted view and every backward slice; this does one
pass per stencil tap. ``benchmarks/losses.py`` measures both.
"""

from __future__ import annotations

import itertools

import torch
from torch.nn.modules.loss import _Loss
from monai.utils import LossReduction

__all__ = ["BendingEnergy", "Diffusion", "bending_stencils", "diffusion_stencils", "stencil_energy"]

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


class _StencilEnergy(torch.autograd.Function):
    """Sum over stencils of ``weight * ||stencil * u||^2`` on the inner voxels; adjoint backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, stencils: list[Stencil]):
        responses, energy = [], u.new_zeros(())
        for weight, taps in stencils:
            (c0, o0), rest = taps[0], taps[1:]
            s = torch.mul(_view(u, o0), c0)
            for c, o in rest:
                s.add_(_view(u, o), alpha=c)
            energy = energy + weight * torch.linalg.vector_norm(s).square()
            responses.append(s)
        ctx.save_for_backward(*responses)
        ctx.stencils, ctx.shape = stencils, u.shape
        return energy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad = grad_out.new_zeros(ctx.shape)
        for (weight, taps), s in zip(ctx.stencils, ctx.saved_tensors):
            s = s * (2.0 * weight * grad_out)
            for c, o in taps:
                _view(grad, o).add_(s, alpha=c)
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
