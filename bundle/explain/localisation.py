"""Localisation check on a controlled case.

A Gaussian bump displacement confined to a box is applied to an aligned moving image; the
share of the map's mass inside the box, divided by the box's share of the grid, says how much
the map concentrates on the only region that needs deformable registration (1 = no
concentration).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks import Warp

from .gradcam import StageExplainer

__all__ = ["box_mask", "bump_displacement", "default_box", "local_deformation_case", "localisation_fraction", "localisation_check"]

def box_mask(shape: Sequence[int], box: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(1, 1, *shape)`` mask of the box ``[(start, stop), ...]`` (voxel indices, stop exclusive)."""
    if len(box) != len(shape) or any(not 0 <= a < b <= s for (a, b), s in zip(box, shape)):
        raise ValueError(f"box {list(map(tuple, box))} must give 0 <= start < stop <= size on every axis of {tuple(shape)}.")
    mask = torch.zeros(1, 1, *shape)
    mask[(0, 0, *[slice(int(a), int(b)) for a, b in box])] = 1.0
    return mask


def bump_displacement(
    shape: Sequence[int], centre: Sequence[float], sigma: float, amplitude: float, direction: Sequence[float] | None = None
) -> torch.Tensor:
    """Gaussian bump displacement ``amplitude * u * exp(-|x - centre|^2 / (2 sigma^2))`` (voxels).

    Args:
        shape: grid shape.
        centre: bump centre (voxel coordinates).
        sigma: bump width (voxels).
        amplitude: peak displacement (voxels); keep ``amplitude < 1.6 * sigma`` to avoid folding.
        direction: displacement direction ``u`` (normalised); default the diagonal ``(1, ..., 1)``.

    Returns:
        ``(1, dims, *shape)`` DDF for MONAI ``Warp``.
    """
    d = len(shape)
    if len(centre) != d:
        raise ValueError(f"centre {tuple(centre)} must have {d} coordinates for shape {tuple(shape)}.")
    u = torch.ones(d) if direction is None else torch.as_tensor(direction, dtype=torch.float32)
    if u.shape != (d,) or float(u.norm()) == 0:
        raise ValueError(f"direction must be a non-zero vector of {d} components, got {direction!r}.")
    u = u / u.norm()
    axes = [torch.arange(s, dtype=torch.float32) - float(c) for s, c in zip(shape, centre)]
    r2 = sum(g**2 for g in torch.meshgrid(*axes, indexing="ij"))
    g = amplitude * torch.exp(-r2 / (2 * sigma**2))
    return (u.view(d, *([1] * d)) * g).unsqueeze(0)


def default_box(fixed: torch.Tensor) -> list[tuple[int, int]]:
    """The box, a quarter of each side, holding the most image structure of the (first) fixed image.

    Structure is the summed gradient magnitude inside the box, so that the bump of the
    localisation case moves visible anatomy rather than flat background.
    """
    img = fixed[:1, :1].detach().float().cpu()
    dims = img.ndim - 2
    grads = torch.gradient(img[0, 0])
    mag = torch.sqrt(sum(g**2 for g in grads))[None, None]
    sides = [max(4, s // 4) for s in img.shape[2:]]
    pool = torch.nn.functional.avg_pool2d if dims == 2 else torch.nn.functional.avg_pool3d
    energy = pool(mag, kernel_size=sides, stride=1)[0, 0]
    start = np.unravel_index(int(torch.argmax(energy)), tuple(energy.shape))
    return [(int(a), int(a) + side) for a, side in zip(start, sides)]


def local_deformation_case(
    aligned_moving: torch.Tensor, box: Sequence[Sequence[int]], amplitude: float | None = None, direction=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deform an aligned moving image only inside ``box``.

    The bump is centred in the box with ``sigma`` a sixth of the box's shortest side (so it
    is below 1.2% of its peak outside the box) and, by default, ``amplitude = 0.8 * sigma``.

    Returns:
        ``(moving, box mask (1, 1, *spatial), bump ddf (1, dims, *spatial))``.
    """
    shape = aligned_moving.shape[2:]
    mask = box_mask(shape, box).to(aligned_moving.device)
    sides = [b - a for a, b in box]
    sigma = min(sides) / 6.0
    amplitude = 0.8 * sigma if amplitude is None else float(amplitude)
    centre = [(a + b - 1) / 2.0 for a, b in box]
    ddf = bump_displacement(shape, centre, sigma, amplitude, direction).to(aligned_moving)
    warp = Warp(mode="bilinear", padding_mode="border")
    moving = warp(aligned_moving, ddf.expand(aligned_moving.shape[0], *ddf.shape[1:]))
    return moving, mask, ddf


def localisation_fraction(attribution: torch.Tensor, mask: torch.Tensor) -> dict:
    """Share of the map's mass inside ``mask`` and its ratio to the mask's volume share.

    Args:
        attribution: ``(B, 1, *spatial)`` non-negative.
        mask: ``(1 or B, 1, *spatial)`` in {0, 1}.

    Returns:
        dict with ``mass_fraction``, ``volume_fraction`` and ``ratio`` (means over the batch;
        ``nan`` for an all-zero map).
    """
    a = attribution.detach().clamp_min(0).flatten(1).double().cpu()
    m = mask.detach().expand(attribution.shape[0], *mask.shape[1:]).flatten(1).double().cpu()
    if a.shape != m.shape:
        raise ValueError(f"attribution {tuple(attribution.shape)} and mask {tuple(mask.shape)} differ in shape.")
    total = a.sum(dim=1)
    mass = torch.where(total > 0, (a * m).sum(dim=1) / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    vol = m.mean(dim=1)
    return {"mass_fraction": float(mass.mean()), "volume_fraction": float(vol.mean()), "ratio": float((mass / vol).mean())}


def localisation_check(
    explainer: StageExplainer,
    aligned_moving: torch.Tensor,
    fixed: torch.Tensor,
    box: Sequence[Sequence[int]] | None = None,
    amplitude: float | None = None,
    direction=None,
) -> dict:
    """Map mass inside a box where (only) the moving image was deformed; see :func:`local_deformation_case`.

    Args:
        explainer: the stage explainer (the deformable stage is the one expected to localise).
        aligned_moving: ``(B, 1, *spatial)`` moving image aligned with ``fixed``.
        fixed: ``(B, 1, *spatial)``.
        box: ``[(start, stop), ...]`` per axis; default a box of a quarter of each side where
            the fixed image has the most structure (summed gradient magnitude).
        amplitude: bump peak displacement (voxels).
        direction: bump direction.

    Returns:
        :func:`localisation_fraction`'s dict plus ``box``.
    """
    box = default_box(fixed) if box is None else [tuple(int(v) for v in b) for b in box]
    moving, mask, _ = local_deformation_case(aligned_moving, box, amplitude, direction)
    attr = explainer.attribute(moving, fixed)
    return {**localisation_fraction(attr, mask), "box": [list(b) for b in box]}
