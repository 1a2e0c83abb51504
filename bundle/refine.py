"""Test-time instance optimisation, warm-started from the network's affine and velocity field.

The network makes registration fast; this stage makes it exact, as in uniGradICON and the
SynthMorph pipelines. On the network grid (voxel units, MONAI ``Warp`` convention):

1. **affine**: Adam on the 12 (2D: 6) parameters of ``theta``, starting from the network's,
   on a multi-resolution pyramid (2x average poolings), driven by the affine similarity;
2. **deformable**: Adam on the stationary velocity field, starting from the network's and on
   its grid, integrated by the network's own scaling and squaring (MONAI ``DVF2DDF``), so the
   result stays diffeomorphic; similarity + ``regularisation`` x the bending (or diffusion) energy of the velocity, one weight per level.

Similarities (``"mi"``, ``"lncc"``, ``"mind"``): the project's Mattes mutual information on
intensities; MONAI LNCC between the *synthesised* moving image (rendered in the fixed contrast
by the network's decoder) and the fixed one, the FIRE idea; MIND-SSC descriptors compared by
SSD. The affine stage's MI or MIND is evaluated only inside the fixed image's foreground
(intensity above ``affine_foreground``), as a fixed-image mask in elastix and ANTs: the empty
background otherwise pulls the affine optimum millimetres away from the anatomy's. With
``samples`` (one number per level), MI and MIND are evaluated at that many voxels of the level's
foreground (a fixed random subset, :class:`bundle.voxel_sample.VoxelSample`), as elastix and ANTs
do, so that a full-resolution level costs what a coarse one does. Each level stops early when the objective
has not improved by ``tolerance`` (relative) for ``patience`` iterations, keeps its best
parameters, and a stage whose result is worse than its start at the finest level is reverted,
so refinement never lowers the objective it optimises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from torch import nn
from torch.nn import functional as F

from .cli import as_bool
from .fields import affine_to_ddf, compose_affine_ddf, theta_on_coarser_grid
from .losses.mind import MINDSSCLoss, mind_ssc
from .losses.mutual_information import SparseMutualInformationLoss
from .losses.regularisers import regulariser as make_regulariser
from .networks.deformable_head import field_to_ddf
from .voxel_sample import VoxelSample

__all__ = ["SIMILARITIES", "RefinementResult", "InstanceRefiner"]

SIMILARITIES = ("mi", "lncc", "mind")
OPTIMISERS = ("adam", "lbfgs")


def _restore(params, state) -> None:
    """Copy the saved tensors ``state`` back into ``params`` (the best point an optimiser saw)."""
    with torch.no_grad():
        for p, b in zip(params, state):
            p.copy_(b)


def _against(loss_fn, target: torch.Tensor):
    """``pred -> loss_fn(pred, target)`` for a fixed target; the MI bins the target once (``against``)."""
    return loss_fn.against(target) if hasattr(loss_fn, "against") else lambda pred: loss_fn(pred, target)


class _BudgetSpent(Exception):
    """Raised inside the L-BFGS closure once its evaluation budget is spent."""


@dataclass
class RefinementResult:
    """Refined parameters and field on the network grid, and what each stage did.

    Attributes:
        theta: ``(B, dims, dims + 1)`` refined affine (centred voxel coordinates).
        velocity: refined velocity field: on the deformable head's grid, or finer with ``velocity_upsample`` (unless reverted).
        ddf: composed displacement on the full network grid (voxel units).
        ddf_affine: displacement of the refined affine alone.
        stats: per stage: iterations per level, similarity before/after, seconds, reverted.
    """

    theta: torch.Tensor
    velocity: torch.Tensor
    ddf: torch.Tensor
    ddf_affine: torch.Tensor
    stats: dict = field(default_factory=dict)


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return x
    return (F.avg_pool3d if x.ndim == 5 else F.avg_pool2d)(x, factor)


def _per_level(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} needs one value per level ({n}), got {values}")
    return values


class InstanceRefiner:
    """Refine a network's affine and velocity field on one image pair.

    Args:
        levels: pyramid factors, coarsest first (``[4, 2]``: 4x and 2x the network voxel size).
        affine_iterations: iterations of the affine stage, per level (an int: every level; Adam
            steps, or objective evaluations for ``"lbfgs"``).
        deformable_iterations: iterations of the velocity stage, per level (Adam steps, or
            objective evaluations for ``"lbfgs"``); 0 skips the level.
        affine_similarity, deformable_similarity: ``"mi"``, ``"lncc"`` or ``"mind"`` (see module).
        affine_lr: Adam step of the affine parameters (matrix entries; translations as fractions
            of the half image size), per level (a float: every level).
        velocity_lr: Adam step of the velocity, in voxels of its grid.
        velocity_optimiser: ``"adam"`` or ``"lbfgs"`` (L-BFGS with a strong Wolfe line search), per
            level (a string: every level). An evaluation costs what an Adam step costs; on the
            benchmark pairs L-BFGS with half Adam's budget matched or beat its error (docs/README.md).
        affine_optimiser: ``"adam"`` or ``"lbfgs"`` for the affine parameters, per level (a string:
            every level); ``affine_lr`` applies to Adam only.
        regularisation: weight of the regulariser of the velocity, per level (a float: every level).
        regulariser: ``"diffusion"`` (first derivatives: pulls the field towards a constant where the
            images carry no signal) or ``"bending"`` (second derivatives: extrapolates it smoothly there).
        tolerance: relative improvement below which an iteration does not count as progress.
        patience: iterations without progress before a level stops.
        num_bins: MI histogram bins, per level (an int: every level); both stages. Each level's MI
            spans its own intensity range.
        lncc_kernel: LNCC window (rectangular; MONAI's Gaussian window is wrong above 3).
        affine_foreground, deformable_foreground: per stage, the ``"mi"`` and ``"mind"`` similarities
            are evaluated only where the fixed image (in [0, 1], pooled to the level) exceeds this
            intensity; 0 evaluates every voxel.
        samples: voxels at which the ``"mi"`` and ``"mind"`` similarities are evaluated (a fixed
            random subset of the level's foreground), per level (an int: every level); 0 evaluates
            all of them.
        velocity_upsample: refine the velocity on a grid this many times finer than the
            network's (its start resampled, vectors scaled); 1 keeps the network's grid, and a
            factor below 1 refines a coarser, smoother field (0.5: twice the spacing, the start
            average-pooled), with fewer parameters and a cheaper integration.
        multistart: also start the affine stage from the identity (the initialisation alone)
            and keep whichever start reaches the better coarse similarity; start the velocity
            stage from zero instead of the network's field when that has the lower objective.
        repredict_velocity: start the velocity stage from the deformable head's field predicted
            again behind the *refined* affine (one encoder + head pass, when :meth:`refine` gets
            ``predict_velocity``), instead of the field it predicted behind its own affine, which
            no longer fits once the affine has moved.
        enabled: ``False`` returns the network's result untouched.
    """

    def __init__(
        self,
        levels: Sequence[int] = (4, 2),
        affine_iterations: int | Sequence[int] = 100,
        deformable_iterations: int | Sequence[int] = 50,
        affine_similarity: str = "mi",
        deformable_similarity: str = "mind",
        affine_lr: float | Sequence[float] = 0.005,
        velocity_lr: float = 0.05,
        velocity_optimiser: str | Sequence[str] = "adam",
        affine_optimiser: str | Sequence[str] = "adam",
        regularisation: float | Sequence[float] = 1.0,
        regulariser: str = "diffusion",
        tolerance: float = 1e-4,
        patience: int = 20,
        num_bins: int | Sequence[int] = 32,
        lncc_kernel: int = 5,
        affine_foreground: float = 0.1,
        deformable_foreground: float = 0.0,
        samples: int | Sequence[int] = 0,
        velocity_upsample: int = 1,
        multistart: bool = True,
        repredict_velocity: bool = False,
        enabled: bool = True,
    ):
        self.levels = [int(v) for v in levels]
        if not self.levels or any(v < 1 for v in self.levels):
            raise ValueError(f"levels must be positive pyramid factors, got {list(levels)}")
        self.affine_iterations = [int(v) for v in _per_level(affine_iterations, len(self.levels), "affine_iterations")]
        self.deformable_iterations = [int(v) for v in _per_level(deformable_iterations, len(self.levels), "deformable_iterations")]
        for name in (affine_similarity, deformable_similarity):
            if name not in SIMILARITIES:
                raise ValueError(f"similarity must be one of {SIMILARITIES}, got {name!r}")
        self.affine_similarity, self.deformable_similarity = affine_similarity, deformable_similarity
        self.affine_lr = [float(v) for v in _per_level(affine_lr, len(self.levels), "affine_lr")]
        self.velocity_lr = float(velocity_lr)
        self.velocity_optimiser = [str(v) for v in _per_level(velocity_optimiser, len(self.levels), "velocity_optimiser")]
        self.affine_optimiser = [str(v) for v in _per_level(affine_optimiser, len(self.levels), "affine_optimiser")]
        for name, chosen in (("velocity_optimiser", self.velocity_optimiser), ("affine_optimiser", self.affine_optimiser)):
            bad = sorted(set(chosen) - set(OPTIMISERS))
            if bad:
                raise ValueError(f"{name} must be one of {OPTIMISERS} (or one per level), got {bad}")
        self.regularisation = [float(v) for v in _per_level(regularisation, len(self.levels), "regularisation")]
        if any(v < 0 for v in self.regularisation):
            raise ValueError(f"regularisation must be >= 0, got {self.regularisation}")
        self.smoothness = make_regulariser(regulariser)
        self.regulariser = regulariser
        self.tolerance, self.patience = float(tolerance), int(patience)
        self.num_bins = [int(v) for v in _per_level(num_bins, len(self.levels), "num_bins")]
        self._mi = [SparseMutualInformationLoss(num_bins=b) for b in self.num_bins]  # checks the bins (a config error, not a run error)
        self.lncc_kernel = int(lncc_kernel)
        self.affine_foreground, self.deformable_foreground = float(affine_foreground), float(deformable_foreground)
        for value in (self.affine_foreground, self.deformable_foreground):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"foreground must be an intensity in [0, 1) (0: every voxel), got {value}")
        self.samples = [int(v) for v in _per_level(samples, len(self.levels), "samples")]
        if any(v < 0 for v in self.samples):
            raise ValueError(f"samples must be >= 0 (0: every voxel), got {samples}")
        self.velocity_upsample = float(velocity_upsample)
        if not self.velocity_upsample > 0:
            raise ValueError(f"velocity_upsample must be > 0 (1: the network's grid, 0.5: twice as coarse), got {velocity_upsample}")
        self.multistart = as_bool(multistart, "multistart")
        self.repredict_velocity = as_bool(repredict_velocity, "repredict_velocity")
        self.enabled = as_bool(enabled, "refine")
        self.warp = Warp(mode="bilinear", padding_mode="zeros")

    @property
    def needs_synthesis(self) -> bool:
        """Whether a stage compares the synthesised moving image (LNCC)."""
        return "lncc" in (self.affine_similarity, self.deformable_similarity)

    # -- similarity ---------------------------------------------------------------------------
    def similarity_loss(self, name: str, dims: int, level: int = -1) -> nn.Module:
        """The loss (lower is better) of a similarity at pyramid level ``level`` (default: the finest);
        ``"mind"`` compares descriptors (see :meth:`source_target`)."""
        if name == "mi":
            return self._mi[level]
        if name == "lncc":
            return LocalNormalizedCrossCorrelationLoss(spatial_dims=dims, kernel_size=self.lncc_kernel, kernel_type="rectangular")
        return MINDSSCLoss(descriptors=True)

    def source_target(self, name: str, moving, fixed, synth=None, factor: int = 1):
        """What a similarity compares at pyramid factor ``factor``: (source to warp, target).

        ``"lncc"`` warps the synthesised moving image; ``"mind"`` compares MIND-SSC descriptors
        of the pooled images.
        """
        if name == "lncc" and synth is None:
            raise ValueError("the 'lncc' refinement similarity needs the network's synthesised moving image")
        src, tgt = _pool(synth if name == "lncc" else moving, factor), _pool(fixed, factor)
        if name == "mind":
            src, tgt = mind_ssc(src), mind_ssc(tgt)
        return src, tgt

    def _pyramid(self, name: str, moving, fixed, synth):
        """Per level: (source image to warp, target) for a similarity."""
        return [self.source_target(name, moving, fixed, synth, s) for s in self.levels]

    @staticmethod
    def foreground_mask(name: str, fixed_level: torch.Tensor, threshold: float) -> torch.Tensor | None:
        """Voxels ``(*S)`` of a level where similarity ``name`` is evaluated: the fixed image above
        ``threshold`` (any of a batch); ``None`` for every voxel (0, LNCC, or under 8 foreground voxels)."""
        if threshold <= 0 or name not in ("mi", "mind"):
            return None
        mask = (fixed_level > threshold).any(dim=0).any(dim=0)
        return mask if int(mask.sum()) >= 8 else None

    def level_loss(self, loss_fn, name: str, warped: torch.Tensor, target: torch.Tensor, fixed_level: torch.Tensor, threshold: float) -> torch.Tensor:
        """``loss_fn`` of a warped source against its target over the level's foreground (:meth:`foreground_mask`)."""
        mask = self.foreground_mask(name, fixed_level, threshold)
        if mask is None:
            return loss_fn(warped, target)
        inside = VoxelSample(tuple(mask.shape), None, device=warped.device, mask=mask)
        return loss_fn(inside.values(warped), inside.values(target))

    def _samplers(self, name: str, pyramid, fixed: torch.Tensor, threshold: float) -> list[VoxelSample | None]:
        """Per level, the voxels where the similarity is evaluated (``None``: all of them, densely)."""
        out = []
        for k, ((src, _), s) in enumerate(zip(pyramid, self.levels)):
            size = tuple(src.shape[2:])
            mask = self.foreground_mask(name, _pool(fixed, s), threshold)
            n = self.samples[k] if self.samples[k] and name in ("mi", "mind") and math.prod(size) > self.samples[k] else None
            sampled = mask is not None or n is not None
            out.append(VoxelSample(size, n, seed=k, device=src.device, dtype=src.dtype, mask=mask) if sampled else None)
        return out

    def _affine_objective(self, loss_fn, src, tgt, factor: int, sampler: VoxelSample | None):
        """``theta -> loss`` of the affinely warped ``src`` against ``tgt`` at one level."""
        if sampler is None:
            size = tuple(src.shape[2:])
            return lambda theta: loss_fn(self.warp(src, self._affine_ddf(theta, factor, size)), tgt)
        values = sampler.values(tgt)
        against = _against(loss_fn, values)
        return lambda theta: against(sampler.sample(src, sampler.affine_positions(theta_on_coarser_grid(theta, factor))))

    def _deformable_objective(self, loss_fn, src, tgt, factor: int, sampler: VoxelSample | None, theta, integrate):
        """``velocity -> loss`` of ``src`` warped by the velocity's map, then ``theta``, against ``tgt``."""
        if sampler is None:
            size, scaled = tuple(src.shape[2:]), theta_on_coarser_grid(theta, factor)
            ddf_aff = affine_to_ddf(scaled, size).detach()  # the affine is fixed in this stage: one field per level
            return lambda v: loss_fn(self.warp(src, compose_affine_ddf(scaled, ddf_aff, field_to_ddf(v, size, integrate))), tgt)
        values, grid = sampler.values(tgt), sampler.affine_grid(theta_on_coarser_grid(theta, factor))
        against = _against(loss_fn, values)

        def objective(v):
            return against(sampler.sample_grid(src, grid(sampler.field_at(integrate(v) if integrate is not None else v, channels_first=True))))

        return objective

    # -- stages -------------------------------------------------------------------------------
    def _optimise(self, params, objective, iterations: int, lr: float, method: str = "adam") -> tuple[int, float, float]:
        """Adam with early stopping (or :meth:`_lbfgs`); leaves ``params`` at the best point. Returns (iterations, start, best)."""
        if method == "lbfgs":
            return self._lbfgs(params, objective, iterations)
        opt = torch.optim.Adam(params, lr=lr)
        best, best_state, stale, start, done = float("inf"), [p.detach().clone() for p in params], 0, None, 0
        for it in range(iterations + 1):
            opt.zero_grad(set_to_none=True)
            loss = objective()
            value = float(loss.detach())
            if start is None:
                start = value
            if value < best - self.tolerance * abs(best if best != float("inf") else value):
                best, best_state, stale = value, [p.detach().clone() for p in params], 0
            else:
                stale += 1
                if value < best:
                    best, best_state = value, [p.detach().clone() for p in params]
            if it == iterations or stale >= self.patience:
                break
            loss.backward()
            opt.step()
            done += 1
        _restore(params, best_state)
        return done, start, best

    def _lbfgs(self, params, objective, evaluations: int) -> tuple[int, float, float]:
        """L-BFGS (strong Wolfe line search) for at most ``evaluations`` objective+gradient evaluations.

        Leaves ``params`` at the best point evaluated. Returns (evaluations, start, best).
        """
        best, best_state, start, done = float("inf"), [p.detach().clone() for p in params], None, 0
        if evaluations <= 0:
            with torch.no_grad():
                value = float(objective())
            return 0, value, value
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=evaluations, max_eval=evaluations, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            nonlocal best, best_state, start, done
            if done >= evaluations:  # the line search may ask for more than max_eval: a hard budget
                raise _BudgetSpent
            opt.zero_grad(set_to_none=True)
            loss = objective()
            value = float(loss.detach())
            start = value if start is None else start
            if value < best:
                best, best_state = value, [p.detach().clone() for p in params]
            loss.backward()
            done += 1
            return loss

        try:
            opt.step(closure)
        except _BudgetSpent:
            pass
        _restore(params, best_state)
        return done, start, best

    def _affine_ddf(self, theta: torch.Tensor, factor: int, size) -> torch.Tensor:
        return affine_to_ddf(theta_on_coarser_grid(theta, factor), size)

    def refine(
        self, moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor, velocity: torch.Tensor, integrate=None, synth=None, starts=(),
        predict_velocity=None, deformable: bool = True,
    ) -> RefinementResult:
        """Refine ``theta`` then ``velocity`` for ``moving`` -> ``fixed`` (both ``(B, 1, *S)`` on the network grid).

        Args:
            moving, fixed: images in [0, 1], same grid.
            theta: the network's affine ``(B, dims, dims + 1)``.
            velocity: the network's deformable field on its own grid (velocity if ``integrate``).
            integrate: the network's ``DVF2DDF`` (``None``: ``velocity`` is a displacement).
            synth: the moving image rendered in the fixed contrast (for ``"lncc"``).
            starts: other affines to start from (e.g. the identity); each is optimised on the
                coarsest level beside ``theta`` and the best one continues (a multi-start).
            predict_velocity: ``theta -> velocity``, the network's deformable field behind a given
                affine (used with ``repredict_velocity``).
            deformable: ``False`` refines the affine alone (for an affine-only result; the
                velocity is returned as given).
        """
        size_full = tuple(moving.shape[2:])
        bad = [s for s in self.levels if any(n % s for n in size_full)]
        if bad:
            raise ValueError(f"network grid {size_full} is not divisible by the refinement pyramid factors {bad}")
        theta0, velocity0 = theta.detach().clone(), velocity.detach().clone()
        stats: dict = {}
        if not self.enabled:
            return self._result(theta0, velocity0, integrate, size_full, stats)
        with torch.enable_grad():
            theta_r = self._refine_affine(moving, fixed, synth, theta0, stats, starts)
            if not deformable:
                return self._result(theta_r, velocity0, integrate, size_full, stats)
            repredicted = self.repredict_velocity and predict_velocity is not None and any(self.deformable_iterations)
            if repredicted:
                with torch.no_grad():
                    velocity0 = predict_velocity(theta_r).detach().to(velocity0)
            velocity_r = self._refine_velocity(moving, fixed, synth, theta_r, velocity0, integrate, stats)
            if "deformable" in stats:
                stats["deformable"]["network_field"] = "re-predicted behind the refined affine" if repredicted else "the forward pass's"
        return self._result(theta_r, velocity_r, integrate, size_full, stats)

    def _result(self, theta, velocity, integrate, size, stats) -> RefinementResult:
        with torch.no_grad():
            ddf_aff = affine_to_ddf(theta, size)
            ddf = compose_affine_ddf(theta, ddf_aff, field_to_ddf(velocity, size, integrate))
        return RefinementResult(theta, velocity, ddf, ddf_aff, stats)

    def _refine_affine(self, moving, fixed, synth, theta0, stats, starts=()) -> torch.Tensor:
        t0 = time.perf_counter()
        dims = moving.ndim - 2
        pyramid = self._pyramid(self.affine_similarity, moving, fixed, synth)
        samplers = self._samplers(self.affine_similarity, pyramid, fixed, self.affine_foreground)
        objectives = [
            self._affine_objective(self.similarity_loss(self.affine_similarity, dims, k), src, tgt, s, sampler)
            for k, ((src, tgt), s, sampler) in enumerate(zip(pyramid, self.levels, samplers))
        ]
        half = torch.as_tensor([s / 2.0 for s in moving.shape[2:]], dtype=theta0.dtype).view(1, dims, 1)

        def run_level(base, delta_m, delta_t, k):
            s, n = self.levels[k], self.affine_iterations[k]
            current = lambda: base + torch.cat([delta_m, delta_t * half], dim=2)  # noqa: E731
            method = self.affine_optimiser[k]
            done, start, best = self._optimise([delta_m, delta_t], lambda: objectives[k](current()), n, self.affine_lr[k], method)
            return {"level": s, "optimiser": method, "iterations": done, "similarity_before": -start, "similarity_after": -best}

        # every start is optimised on the coarsest level; the best one goes on to the finer levels
        candidates = []
        for i, base in enumerate([theta0, *starts]):
            base = base.detach().to(theta0)
            delta_m = torch.zeros_like(base[:, :, :dims], requires_grad=True)
            delta_t = torch.zeros_like(base[:, :, dims:], requires_grad=True)
            candidates.append((run_level(base, delta_m, delta_t, 0), base, delta_m, delta_t, i))
        first, base, delta_m, delta_t, chosen = max(candidates, key=lambda c: c[0]["similarity_after"])
        levels = [first] + [run_level(base, delta_m, delta_t, k) for k in range(1, len(self.levels))]
        with torch.no_grad():
            theta = (base + torch.cat([delta_m, delta_t * half], dim=2)).detach()
            before, after = float(objectives[-1](theta0)), float(objectives[-1](theta))
        reverted = after > before
        stats["affine"] = {
            "similarity": self.affine_similarity, "num_bins": self.num_bins, "samples": self.samples,
            "start": "network" if chosen == 0 else f"alternative {chosen}",
            "coarse_similarity_per_start": [c[0]["similarity_after"] for c in candidates], "levels": levels,
            "iterations": sum(c[0]["iterations"] for c in candidates) + sum(v["iterations"] for v in levels[1:]),
            "similarity_before": -before, "similarity_after": -min(before, after), "reverted": reverted,
            "seconds": time.perf_counter() - t0,
        }
        return theta0 if reverted else theta

    def finer_velocity(self, velocity: torch.Tensor, size_full) -> torch.Tensor:
        """``velocity`` on a grid :attr:`velocity_upsample` times finer (at most the network grid, at
        least 2 voxels a side), in its voxels; linear resampling, which for a factor 0.5 is 2x average pooling."""
        size = tuple(max(2, min(int(round(n * self.velocity_upsample)), full)) for n, full in zip(velocity.shape[2:], size_full))
        if size == tuple(velocity.shape[2:]):
            return velocity
        return field_to_ddf(velocity, size)  # trilinear, vectors scaled to the finer voxels

    def _refine_velocity(self, moving, fixed, synth, theta, velocity0, integrate, stats) -> torch.Tensor:
        if not any(self.deformable_iterations):
            return velocity0
        t0 = time.perf_counter()
        dims = moving.ndim - 2
        network_velocity, velocity0 = velocity0, self.finer_velocity(velocity0, tuple(moving.shape[2:]))
        pyramid = self._pyramid(self.deformable_similarity, moving, fixed, synth)
        velocity = velocity0.clone().requires_grad_(True)
        def reg(k, v):
            weight = self.regularisation[k]
            return weight * self.smoothness(v) if weight > 0 and min(v.shape[2:]) > 2 else v.new_zeros(())

        samplers = self._samplers(self.deformable_similarity, pyramid, fixed, self.deformable_foreground)
        similarities = [
            self._deformable_objective(self.similarity_loss(self.deformable_similarity, dims, k), src, tgt, s, sampler, theta, integrate)
            for k, ((src, tgt), s, sampler) in enumerate(zip(pyramid, self.levels, samplers))
        ]

        def objective_at(k, v):
            return similarities[k](v) + reg(k, v)

        start_from = "network"
        if self.multistart:  # the network's field or none at all, whichever starts with the lower objective
            with torch.no_grad():
                zero = torch.zeros_like(velocity0)
                if float(objective_at(0, zero)) < float(objective_at(0, velocity0)):
                    velocity0, start_from = zero, "zero"
                    velocity = zero.clone().requires_grad_(True)
        levels = []
        for k, (s, n) in enumerate(zip(self.levels, self.deformable_iterations)):
            if n <= 0:
                continue
            method = self.velocity_optimiser[k]
            done, start, best = self._optimise([velocity], lambda k=k: objective_at(k, velocity), n, self.velocity_lr, method)
            levels.append({"level": s, "optimiser": method, "iterations": done, "objective_before": start, "objective_after": best})
        with torch.no_grad():
            before, after = float(objective_at(-1, velocity0)), float(objective_at(-1, velocity))
        reverted = after > before
        stats["deformable"] = {
            "similarity": self.deformable_similarity, "num_bins": self.num_bins, "samples": self.samples,
            "velocity_upsample": self.velocity_upsample, "regulariser": self.regulariser, "regularisation": self.regularisation,
            "start": start_from, "levels": levels,
            "iterations": sum(v["iterations"] for v in levels), "objective_before": before, "objective_after": min(before, after),
            "reverted": reverted, "seconds": time.perf_counter() - t0,
        }
        if reverted:
            return network_velocity if start_from == "network" else velocity0
        return velocity.detach()
