"""Deletion faithfulness check.

The ``fraction`` most attributed voxels of the input are replaced by a Gaussian-blurred copy
of the input (in the moving image, the fixed image or both: both images are on the same grid,
so a voxel of the map names the same place in each), and the change of the explained scalar
is compared with the change caused by blurring as many random voxels (mean over ``n_random``
draws). ``ratio > 1`` means the map points at input the scalar depends on more than average.

With ``scalar="network"`` only the network sees the blurred images; the scalar compares the clean
ones, warped by the network's new fields (:meth:`StageExplainer.scalar_on_reference`). That is the
question a map of a network layer answers: which input the *prediction* depends on. With
``scalar="perturbed"`` the scalar also reads the blurred images, so a scalar that compares images
(the mutual information, a synthesis error) changes by blurring alone, wherever the map points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import GaussianFilter

from .gradcam import StageExplainer

__all__ = ["PERTURB", "SCALARS", "blur_voxels", "top_mask", "random_mask", "shifted_mask", "deletion_changes", "deletion_check"]

PERTURB = {"moving": (0,), "fixed": (1,), "both": (0, 1)}
SCALARS = ("perturbed", "network")


def blur_voxels(x: torch.Tensor, mask: torch.Tensor, sigma: float = 4.0, channels: Sequence[int] = (0, 1)) -> torch.Tensor:
    """Replace the voxels of ``mask`` in ``channels`` of ``x`` by a Gaussian-blurred ``x``.

    Args:
        x: ``(B, C, *spatial)``.
        mask: ``(B, 1, *spatial)`` in {0, 1}.
        sigma: blur standard deviation in voxels.
        channels: channels to perturb.
    """
    blurred = GaussianFilter(x.ndim - 2, sigma).to(x.device)(x)
    sel = torch.zeros(1, x.shape[1], *([1] * (x.ndim - 2)), dtype=x.dtype, device=x.device)
    sel[:, list(channels)] = 1
    w = mask.to(x.dtype) * sel
    return x * (1 - w) + blurred * w


def top_mask(attribution: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` most attributed voxels of each map ``(B, 1, *spatial)``."""
    flat = attribution.flatten(1)
    idx = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
    return mask.view_as(attribution)


def random_mask(shape, k: int, generator: torch.Generator) -> torch.Tensor:
    """Mask of ``k`` voxels drawn uniformly at random per batch item."""
    b, n = shape[0], int(np.prod(shape[1:]))
    mask = torch.zeros(b, n)
    for i in range(b):
        mask[i, torch.randperm(n, generator=generator)[:k]] = 1.0
    return mask.view(shape)


def shifted_mask(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``mask`` rolled by a random quarter to three quarters of the grid along each axis."""
    sizes = mask.shape[2:]
    shifts = [int(torch.randint(s // 4, max(s // 4 + 1, 3 * s // 4 + 1), (1,), generator=generator)) for s in sizes]
    return torch.roll(mask, shifts=shifts, dims=tuple(range(2, mask.ndim)))


def deletion_changes(value, x, attribution, k, sigma, channels, n_random, baseline, generator, reference=None):
    """How much ``value`` changes when the top-``k`` voxels of ``attribution`` are blurred, and when random ones are.

    Args:
        value: ``value(x)`` -> a tensor or float (the explained quantity).
        x: ``(B, C, *spatial)`` input; ``attribution``: ``(B, 1, *spatial)``.
        k, sigma, channels: voxels per mask, blur width (voxels), perturbed channels.
        n_random, baseline: random masks averaged; ``"voxels"`` or ``"shifted"`` (see :func:`deletion_check`).
        generator: draws the random masks (shared across calls to continue one stream).
        reference: ``value(x)`` if already computed.

    Returns:
        ``(value(x), |top change|, mean |random change|)``.
    """
    v0 = value(x) if reference is None else reference
    top = top_mask(attribution.detach().cpu(), k).to(x.device)
    top_change = abs(value(blur_voxels(x, top, sigma, channels)) - v0)
    changes = []
    for _ in range(n_random):
        mask = random_mask(attribution.shape, k, generator).to(x.device) if baseline == "voxels" else shifted_mask(top, generator)
        changes.append(abs(value(blur_voxels(x, mask, sigma, channels)) - v0))
    return v0, top_change, sum(changes) / len(changes)


def deletion_check(
    explainer: StageExplainer,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    attribution: torch.Tensor | None = None,
    fraction: float = 0.1,
    n_random: int = 5,
    sigma: float = 4.0,
    perturb: str = "both",
    baseline: str = "voxels",
    seed: int = 0,
    scalar: str = "perturbed",
) -> dict:
    """Change of the explained scalar when blurring the most attributed vs random voxels.

    Args:
        explainer: the stage explainer.
        moving: ``(B, 1, *spatial)``.
        fixed: ``(B, 1, *spatial)``.
        attribution: the map if already computed.
        fraction: share of the voxels perturbed (top-k%).
        n_random: random draws averaged for the baseline.
        sigma: Gaussian blur standard deviation (voxels).
        perturb: ``"moving"``, ``"fixed"`` or ``"both"`` images.
        baseline: ``"voxels"`` (as many voxels drawn uniformly at random) or ``"shifted"``
            (the top-k mask circularly shifted by a random quarter to three quarters of the
            grid along each axis: same shape and compactness, elsewhere).
        seed: seed of the random draws.
        scalar: ``"perturbed"`` (the scalar of the blurred images) or ``"network"`` (the network
            sees the blurred images, the scalar compares the clean ones; see module).

    Returns:
        dict with ``ratio`` (mean top change / mean random change), ``top_change``,
        ``random_change`` (means over the batch of absolute changes) and ``value``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    if perturb not in PERTURB:
        raise ValueError(f"perturb must be one of {list(PERTURB)}, got {perturb!r}.")
    if baseline not in ("voxels", "shifted"):
        raise ValueError(f"baseline must be 'voxels' or 'shifted', got {baseline!r}.")
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}.")
    if scalar not in SCALARS:
        raise ValueError(f"scalar must be one of {list(SCALARS)}, got {scalar!r}.")
    if attribution is None:
        attribution = explainer.attribute(moving, fixed)
    x = torch.cat([moving, fixed], dim=1)
    if attribution.shape != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"attribution must be {(x.shape[0], 1, *x.shape[2:])}, got {tuple(attribution.shape)}.")
    n = int(np.prod(x.shape[2:]))
    k = max(1, int(round(fraction * n)))
    channels = PERTURB[perturb]

    @torch.no_grad()
    def value(inp):
        return explainer.forward_func(inp) if scalar == "perturbed" else explainer.scalar_on_reference(inp, x)

    gen = torch.Generator().manual_seed(seed)
    v0, top_change, rand_change = deletion_changes(value, x, attribution, k, sigma, channels, n_random, baseline, gen)
    t, r = float(top_change.mean()), float(rand_change.mean())
    return {
        "ratio": t / max(r, 1e-12),
        "top_change": t,
        "random_change": r,
        "value": v0.tolist(),
        "fraction": fraction,
        "perturb": perturb,
        "baseline": baseline,
        "scalar": scalar,
    }
