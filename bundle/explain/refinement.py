"""Explanations of the refinement stage: where its update came from.

The refinement moves the image by gradient steps on a similarity, so the honest answer to
"why did it move this" is that similarity's gradient. At the point the refinement starts
from (the network's prediction), the gradient of the similarity ``S`` with respect to the
displacement at each voxel, ``g(v) = dS/du(v)``, is the voxel-wise force; by the chain rule
each refined parameter's gradient is the sum over voxels of its share:

* affine parameter ``theta_ij``: ``c(v) = g_i(v) * p_j(v)`` (``p``: centred voxel coordinates;
  ``p_j = 1`` for the translation column), ``sum_v c(v) = dS/dtheta_ij``;
* velocity field: ``|g(v)|``, the magnitude of the force at the refined affine.

:func:`refinement_deletion_check` and :func:`refinement_deformable_checks` run the deletion and
localisation checks of :mod:`bundle.explain.sanity` on these maps (randomisation does not apply:
the refinement has no learned weights).

Each map is ``|c(v)|`` on the network grid, returned as :class:`bundle.explain.gradcam.Explanation`
objects (method ``"similarity_gradient"``) so the writer stores them with the Grad-CAM maps.
"""

from __future__ import annotations

import torch

from ..fields import affine_to_ddf, centered_grid, compose_affine_ddf
from ..networks.deformable_head import field_to_ddf
from ..refine import InstanceRefiner
from .gradcam import Explanation

__all__ = ["affine_parameter_names", "refinement_explanations", "refinement_deletion_check", "refinement_deformable_checks", "refinement_sanity_report"]

_AXES = "xyz"


def affine_parameter_names(dims: int) -> list[tuple[int, int, str]]:
    """``(row, column, name)`` of every affine parameter: ``matrix_xy``..., ``translation_x``..."""
    out = [(i, j, f"matrix_{_AXES[i]}{_AXES[j]}") for i in range(dims) for j in range(dims)]
    return out + [(i, dims, f"translation_{_AXES[i]}") for i in range(dims)]


def _similarity_and_force(refiner: InstanceRefiner, name: str, moving, fixed, synth, ddf: torch.Tensor, threshold: float, foreground_of=None):
    """``S`` (higher is better) at ``ddf`` and its gradient with respect to ``ddf``.

    ``S`` is evaluated where ``foreground_of`` (default ``fixed``) exceeds ``threshold``, as the refiner does.
    """
    loss_fn = refiner.similarity_loss(name, moving.ndim - 2)
    src, tgt = refiner.source_target(name, moving, fixed, synth)
    with torch.enable_grad():
        u = ddf.detach().clone().requires_grad_(True)
        s = -refiner.level_loss(loss_fn, name, refiner.warp(src, u), tgt, fixed if foreground_of is None else foreground_of, threshold)
        (g,) = torch.autograd.grad(s, u)
    return float(s.detach()), g


def _affine_shares(g: torch.Tensor):
    """``(row, column, name, share)`` per affine parameter: each voxel's part of ``dS/dtheta``."""
    dims = g.shape[1]
    grid = centered_grid(g.shape[2:], device=g.device, dtype=g.dtype)
    for i, j, name in affine_parameter_names(dims):
        yield i, j, name, g[:, i : i + 1] * (grid[j] if j < dims else 1.0)


def refinement_explanations(
    refiner: InstanceRefiner, moving: torch.Tensor, fixed: torch.Tensor, theta_start: torch.Tensor, velocity_start: torch.Tensor,
    theta_refined: torch.Tensor, integrate=None, synth: torch.Tensor | None = None,
) -> list[Explanation]:
    """Similarity-gradient maps of the affine and deformable refinement stages (batch of one).

    Args:
        refiner: the configured :class:`InstanceRefiner` (its similarities are explained).
        moving, fixed: ``(1, 1, *S)`` images on the network grid.
        theta_start, velocity_start: where the refinement started (the network's prediction).
        theta_refined: the refined affine (the deformable stage starts from it).
        integrate: the network's ``DVF2DDF``.
        synth: the synthesised moving image (for ``"lncc"``).
    """
    size = tuple(moving.shape[2:])
    dims = len(size)
    out = []
    _, g = _similarity_and_force(refiner, refiner.affine_similarity, moving, fixed, synth, affine_to_ddf(theta_start, size), refiner.affine_foreground)
    for _, _, name, share in _affine_shares(g):
        out.append(Explanation(
            "refine_affine", "similarity", name,
            f"share of each voxel in d{refiner.affine_similarity.upper()}/d{name} at the network's affine (sum = the gradient)",
            share.sum(dim=tuple(range(1, dims + 2))), share.abs(), "similarity_gradient",
        ))
    ddf = compose_affine_ddf(theta_refined, affine_to_ddf(theta_refined, size), field_to_ddf(velocity_start, size, integrate))
    value, g = _similarity_and_force(refiner, refiner.deformable_similarity, moving, fixed, synth, ddf, refiner.deformable_foreground)
    out.append(Explanation(
        "refine_deformable", "similarity", "force_magnitude",
        f"|d{refiner.deformable_similarity.upper()}/du| per voxel where the velocity refinement starts (value: the similarity)",
        torch.tensor([value]), g.norm(dim=1, keepdim=True), "similarity_gradient",
    ))
    return out


def _affine_gradient(refiner: InstanceRefiner, moving, fixed, theta, synth=None, foreground_of=None) -> torch.Tensor:
    """``dS/dtheta`` of the affine similarity (batch of one), the scalar each affine map explains."""
    ddf = affine_to_ddf(theta, moving.shape[2:])
    _, g = _similarity_and_force(refiner, refiner.affine_similarity, moving, fixed, synth, ddf, refiner.affine_foreground, foreground_of)
    out = torch.zeros(g.shape[1], g.shape[1] + 1, dtype=g.dtype)
    for i, j, _, share in _affine_shares(g):
        out[i, j] = share.sum()
    return out


def refinement_deletion_check(
    refiner: InstanceRefiner, moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor, maps: list[Explanation],
    fraction: float = 0.1, n_random: int = 5, sigma: float = 4.0, baseline: str = "voxels", seed: int = 0,
) -> dict[str, float]:
    """Deletion test of the ``refine_affine`` maps: blurring the most attributed voxels (both images)
    must change the explained gradient more than blurring random ones of equal number. The
    similarity keeps the unblurred fixed image's foreground, so that blurring changes the images,
    not which voxels are compared.

    Args:
        refiner, moving, fixed, theta: as for :func:`refinement_explanations` (``theta``: the start).
        maps: its ``refine_affine`` explanations.
        fraction, n_random, sigma, baseline, seed: as in :func:`bundle.explain.deletion.deletion_check`.

    Returns:
        ``{parameter name: top change / mean random change}``.
    """
    from .deletion import deletion_changes

    x = torch.cat([moving, fixed], dim=1)
    k = max(1, int(round(fraction * moving[0, 0].numel())))
    base = _affine_gradient(refiner, moving, fixed, theta)
    gen = torch.Generator().manual_seed(seed)
    names = {name: (i, j) for i, j, name in affine_parameter_names(moving.ndim - 2)}
    out = {}
    for ex in maps:
        if ex.stage != "refine_affine":
            continue
        i, j = names[ex.target]

        def value(y, i=i, j=j):
            return float(_affine_gradient(refiner, y[:, :1], y[:, 1:], theta, foreground_of=fixed)[i, j])

        _, top, rand = deletion_changes(value, x, ex.attribution, k, sigma, (0, 1), n_random, baseline, gen, reference=float(base[i, j]))
        out[ex.target] = top / max(rand, 1e-12)
    return out


def _velocity_gradient(refiner: InstanceRefiner, moving, fixed, theta, velocity, integrate, foreground_of=None) -> torch.Tensor:
    """``dS/dv``: the gradient of the deformable similarity with respect to the velocity (the update the stage takes)."""
    size = tuple(moving.shape[2:])
    ddf_aff = affine_to_ddf(theta, size)
    with torch.enable_grad():
        v = velocity.detach().clone().requires_grad_(True)
        ddf = compose_affine_ddf(theta, ddf_aff, field_to_ddf(v, size, integrate))
        src, tgt = refiner.source_target(refiner.deformable_similarity, moving, fixed)
        name, threshold = refiner.deformable_similarity, refiner.deformable_foreground
        s = -refiner.level_loss(refiner.similarity_loss(name, len(size)), name, refiner.warp(src, ddf), tgt,
                                fixed if foreground_of is None else foreground_of, threshold)
        (g,) = torch.autograd.grad(s, v)
    return g


def refinement_deformable_checks(
    refiner: InstanceRefiner, moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor, velocity: torch.Tensor, integrate,
    aligned_moving: torch.Tensor, box=None, amplitude: float | None = None, fraction: float = 0.1, n_random: int = 5, sigma: float = 4.0,
    seed: int = 0,
) -> dict:
    """Deletion and localisation checks of the ``refine_deformable`` map (batch of one).

    * deletion: the map where the velocity refinement starts (``theta``, ``velocity``); blurring
      its top ``fraction`` of voxels in both images must change the map's value, the similarity
      ``S``, more than blurring random voxels of equal number (``deletion_ratio``, the check the
      network's stages get). ``deletion_ratio_update`` does the same for the stage's update, the
      gradient ``dS/dv`` with respect to the velocity (relative L2 change): MI's force at a voxel
      depends on the whole joint histogram, so any blurring changes it everywhere and this ratio
      stays near 1 (reported, not a pass/fail). The similarity keeps the unblurred fixed image's
      foreground;
    * localisation: ``aligned_moving`` (the pair's refined, aligned moving image) deformed only
      inside ``box`` (:func:`bundle.explain.localisation.local_deformation_case`); at the identity
      the force map should put its mass in the box (ratio to the box's volume share; 1 = none).

    Returns:
        ``{"value", "deletion_ratio", "deletion_top_change", "deletion_random_change", "deletion_ratio_update",
        "localisation_ratio", "localisation_mass_fraction", "localisation_volume_fraction", "box"}``.
    """
    from .deletion import blur_voxels, deletion_changes, random_mask, top_mask
    from .localisation import default_box, local_deformation_case, localisation_fraction

    name, threshold = refiner.deformable_similarity, refiner.deformable_foreground
    size = tuple(moving.shape[2:])
    ddf = compose_affine_ddf(theta, affine_to_ddf(theta, size), field_to_ddf(velocity, size, integrate))
    value, force = _similarity_and_force(refiner, name, moving, fixed, None, ddf, threshold)
    x = torch.cat([moving, fixed], dim=1)
    k = max(1, int(round(fraction * moving[0, 0].numel())))
    base = _velocity_gradient(refiner, moving, fixed, theta, velocity, integrate)

    def change(mask):
        y = blur_voxels(x, mask.to(x.device), sigma, (0, 1))
        g = _velocity_gradient(refiner, y[:, :1], y[:, 1:], theta, velocity, integrate, foreground_of=fixed)
        return float((g - base).norm() / base.norm().clamp_min(1e-12))

    def similarity(y):
        return _similarity_and_force(refiner, name, y[:, :1], y[:, 1:], None, ddf, threshold, foreground_of=fixed)[0]

    attribution = force.norm(dim=1, keepdim=True)
    _, top, rand = deletion_changes(similarity, x, attribution, k, sigma, (0, 1), n_random, "voxels", torch.Generator().manual_seed(seed), value)
    gen = torch.Generator().manual_seed(seed)  # the same random masks for the update
    top_update = change(top_mask(attribution.detach().cpu(), k))
    rand_update = sum(change(random_mask(attribution.shape, k, gen)) for _ in range(n_random)) / n_random
    box = default_box(fixed) if box is None else [tuple(int(v) for v in b) for b in box]
    deformed, mask, _ = local_deformation_case(aligned_moving, box, amplitude)
    _, g_case = _similarity_and_force(refiner, name, deformed, fixed, None, torch.zeros_like(ddf), threshold)
    loc = localisation_fraction(g_case.norm(dim=1, keepdim=True), mask)
    return {
        "value": value, "deletion_ratio": top / max(rand, 1e-12), "deletion_top_change": top, "deletion_random_change": rand,
        "deletion_ratio_update": top_update / max(rand_update, 1e-12), "localisation_ratio": loc["ratio"], "localisation_mass_fraction": loc["mass_fraction"],
        "localisation_volume_fraction": loc["volume_fraction"], "box": [list(b) for b in box],
    }


def refinement_sanity_report(refiner: InstanceRefiner, network, moving: torch.Tensor, fixed: torch.Tensor, box=None, seed: int = 0) -> dict:
    """Deletion and localisation checks of the refinement's maps on one pair, as the pipeline runs it.

    The network predicts, the refiner refines from there (multi-start as configured); the
    ``refine_affine`` maps are checked at the network's affine, the ``refine_deformable`` map
    where the velocity refinement started and, for localisation, on the refined (aligned)
    moving image deformed inside ``box``. ``moving``/``fixed``: ``(1, 1, *S)`` on the network grid.

    Returns:
        ``{"refine_affine": {parameter: {"deletion_ratio"}}, "refine_deformable": {"force_magnitude":
        :func:`refinement_deformable_checks`}}``, in the layout of :func:`bundle.explain.sanity.sanity_report`.
    """
    from monai.networks.blocks import Warp

    from ..networks.bundle_net import structured_forward

    dims = moving.ndim - 2
    integrate = network.deformable_head.integrate
    with torch.no_grad():
        out = structured_forward(network, moving, fixed, bidirectional=False, synthesis=refiner.needs_synthesis).forward
    identity = torch.cat([torch.eye(dims), torch.zeros(dims, 1)], 1)[None].to(out.theta)
    res = refiner.refine(moving, fixed, out.theta, out.velocity, integrate, out.synth, [identity] if refiner.multistart else [])
    maps = refinement_explanations(refiner, moving, fixed, out.theta, out.velocity, res.theta, integrate, out.synth)
    affine = refinement_deletion_check(refiner, moving, fixed, out.theta, maps, seed=seed)
    velocity_start = torch.zeros_like(out.velocity) if res.stats.get("deformable", {}).get("start") == "zero" else out.velocity
    with torch.no_grad():
        aligned = Warp(mode="bilinear", padding_mode="zeros")(moving, res.ddf)
    deformable = refinement_deformable_checks(refiner, moving, fixed, res.theta, velocity_start, integrate, aligned, box=box, seed=seed)
    return {"refine_affine": {k: {"deletion_ratio": v} for k, v in affine.items()}, "refine_deformable": {"force_magnitude": deformable}}
