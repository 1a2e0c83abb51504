"""Checks that the Grad-CAM maps mean something.

* **Model randomisation** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018):
  the map of the trained network is compared (Spearman rank correlation over voxels) with
  the map of a copy whose weights are re-initialised. With ``scope="downstream"`` (the
  default, the full cascading randomisation down to the explained layer) every
  parameterised module whose first execution starts at or after the explained call of the
  explained layer is re-initialised, i.e. the explained layer and everything between it
  and the output, while the modules that compute its input keep their weights;
  ``scope="all"`` re-initialises every weight; ``scope="layer"`` only the explained layer.
  A map that survives re-initialisation reflects the image rather than what the network
  learned; the correlation should be low.
* **Deletion faithfulness**: the ``fraction`` most attributed voxels of the input are
  replaced by a Gaussian-blurred copy of the input (in the moving image, the fixed image
  or both: both images are on the same grid, so a voxel of the map names the same place
  in each), and the change of the explained scalar is compared with the change caused by
  blurring as many random voxels (mean over ``n_random`` draws). ``ratio > 1`` means the
  map points at input the scalar depends on more than average.
* **Localisation on a controlled case**: a Gaussian bump displacement confined to a box
  is applied to an aligned moving image; the share of the map's mass inside the box,
  divided by the box's share of the grid, says how much the map concentrates on the only
  region that needs deformable registration (1 = no concentration).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.networks.blocks import Warp
from monai.networks.layers import GaussianFilter
from scipy.stats import spearmanr
from torch import nn

from .gradcam import StageExplainer, default_targets, resolve_layer, run_registration, stage_specs
from .targets import expand_target_names

__all__ = [
    "spearman",
    "randomised_copy",
    "randomisation_check",
    "blur_voxels",
    "deletion_check",
    "box_mask",
    "bump_displacement",
    "local_deformation_case",
    "localisation_fraction",
    "localisation_check",
    "sanity_report",
]

_SEED_OFFSET = 0x5EED  # re-initialisation seeds are offset from the user's seed


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps over all voxels (ties get average ranks).

    Returns ``nan`` when either map is constant (the correlation is undefined).
    """
    x = a.detach().flatten().double().cpu().numpy()
    y = b.detach().flatten().double().cpu().numpy()
    if x.shape != y.shape:
        raise ValueError(f"maps must have the same number of voxels, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _resettable(network: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in network.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]


def randomised_copy(
    network: nn.Module,
    scope: str = "downstream",
    layer: str | None = None,
    call_index: int = 0,
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    bidirectional: bool = False,
    synthesis: bool = False,
    seed: int = 0,
) -> nn.Module:
    """A deep copy of ``network`` with re-initialised weights (each module's ``reset_parameters``).

    Args:
        network: the trained network (left untouched).
        scope: ``"all"``, ``"layer"`` (the modules inside ``layer``) or ``"downstream"``
            (modules whose first execution starts at or after call ``call_index`` of ``layer``
            in a forward pass on ``example``; never-executed modules too).
        layer: explained layer path, for ``"layer"`` and ``"downstream"``.
        call_index: explained call of ``layer``.
        example: ``(moving, fixed)`` for the forward pass that orders the modules.
        bidirectional: forward-pass option of that pass (as the explained target needs).
        synthesis: forward-pass option of that pass.
        seed: seed of the re-initialisation.
    """
    if scope not in ("all", "layer", "downstream"):
        raise ValueError(f"scope must be 'all', 'layer' or 'downstream', got {scope!r}.")
    net = copy.deepcopy(network)
    modules = _resettable(net)
    if scope != "all":
        if layer is None:
            raise ValueError(f"scope {scope!r} needs the explained layer.")
        target = resolve_layer(net, layer)
        inside = {id(m) for m in target.modules()}
        if scope == "layer":
            modules = [(n, m) for n, m in modules if id(m) in inside]
        else:
            if example is None:
                raise ValueError("scope 'downstream' needs an example (moving, fixed) to order the modules.")
            modules = _downstream(net, modules, target, call_index, example, bidirectional, synthesis)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(_SEED_OFFSET + seed)  # offset: seed 0 would redraw the weights of a network built after manual_seed(0)
    try:
        for _, m in modules:
            m.reset_parameters()
    finally:
        torch.random.set_rng_state(gen_state)
    return net


def _downstream(net, modules, target, call_index, example, bidirectional, synthesis):
    order: dict[int, int] = {}
    counter = [0]
    layer_start: list[int] = []
    calls = [0]

    def pre(module, args):
        order.setdefault(id(module), counter[0])
        counter[0] += 1

    def pre_layer(module, args):
        if calls[0] == call_index:
            layer_start.append(counter[0])
        calls[0] += 1

    handles = [target.register_forward_pre_hook(pre_layer)] + [m.register_forward_pre_hook(pre) for _, m in modules]
    try:
        with torch.no_grad():
            run_registration(net, example[0], example[1], bidirectional, synthesis)
    finally:
        for h in handles:
            h.remove()
    if not layer_start:
        raise ValueError(f"the explained layer ran {calls[0]} time(s); call_index {call_index} was never reached.")
    start = layer_start[0]
    return [(n, m) for n, m in modules if order.get(id(m), math.inf) >= start]


def randomisation_check(
    explainer: StageExplainer,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    scope: str = "downstream",
    seed: int = 0,
    attribution: torch.Tensor | None = None,
) -> dict:
    """Spearman correlation between the maps of the network and of a re-initialised copy.

    Args:
        explainer: the stage explainer of the trained network.
        moving: ``(B, 1, *spatial)``.
        fixed: ``(B, 1, *spatial)``.
        scope: see :func:`randomised_copy`.
        seed: re-initialisation seed.
        attribution: the trained network's map if already computed.

    Returns:
        dict with ``spearman`` (mean over the batch, ignoring undefined ones), ``spearman_per_item``
        and ``scope``.
    """
    if attribution is None:
        attribution = explainer.attribute(moving, fixed)
    t = explainer.target
    rand_net = randomised_copy(
        explainer.network, scope, explainer.layer_name, explainer.tap.call_index, (moving, fixed),
        t.needs_backward, t.needs_synthesis, seed,
    )
    rand = StageExplainer(
        rand_net, explainer.layer_name, t, explainer.tap.call_index, explainer.batch_group, relu=explainer.relu, method=explainer.method
    )
    rand_attr = rand.attribute(moving, fixed)
    per_item = [spearman(a, b) for a, b in zip(attribution, rand_attr)]
    finite = [v for v in per_item if math.isfinite(v)]
    return {"spearman": float(np.mean(finite)) if finite else float("nan"), "spearman_per_item": per_item, "scope": scope}


_PERTURB = {"moving": (0,), "fixed": (1,), "both": (0, 1)}


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


def _top_mask(attribution: torch.Tensor, k: int) -> torch.Tensor:
    flat = attribution.flatten(1)
    idx = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
    return mask.view_as(attribution)


def _random_mask(shape, k: int, generator: torch.Generator) -> torch.Tensor:
    b, n = shape[0], int(np.prod(shape[1:]))
    mask = torch.zeros(b, n)
    for i in range(b):
        mask[i, torch.randperm(n, generator=generator)[:k]] = 1.0
    return mask.view(shape)


def _shifted_mask(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sizes = mask.shape[2:]
    shifts = [int(torch.randint(s // 4, max(s // 4 + 1, 3 * s // 4 + 1), (1,), generator=generator)) for s in sizes]
    return torch.roll(mask, shifts=shifts, dims=tuple(range(2, mask.ndim)))


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

    Returns:
        dict with ``ratio`` (mean top change / mean random change), ``top_change``,
        ``random_change`` (means over the batch of absolute changes) and ``value``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    if perturb not in _PERTURB:
        raise ValueError(f"perturb must be one of {list(_PERTURB)}, got {perturb!r}.")
    if baseline not in ("voxels", "shifted"):
        raise ValueError(f"baseline must be 'voxels' or 'shifted', got {baseline!r}.")
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}.")
    if attribution is None:
        attribution = explainer.attribute(moving, fixed)
    x = torch.cat([moving, fixed], dim=1)
    if attribution.shape != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"attribution must be {(x.shape[0], 1, *x.shape[2:])}, got {tuple(attribution.shape)}.")
    n = int(np.prod(x.shape[2:]))
    k = max(1, int(round(fraction * n)))
    channels = _PERTURB[perturb]

    @torch.no_grad()
    def value(inp):
        return explainer.forward_func(inp)

    v0 = value(x)
    top = _top_mask(attribution.detach().cpu(), k).to(x.device)
    top_change = (value(blur_voxels(x, top, sigma, channels)) - v0).abs()
    gen = torch.Generator().manual_seed(seed)
    rand_changes = []
    for _ in range(n_random):
        if baseline == "voxels":
            mask = _random_mask(attribution.shape, k, gen).to(x.device)
        else:
            mask = _shifted_mask(top, gen)
        rand_changes.append((value(blur_voxels(x, mask, sigma, channels)) - v0).abs())
    rand_change = torch.stack(rand_changes).mean(dim=0)
    t, r = float(top_change.mean()), float(rand_change.mean())
    return {
        "ratio": t / max(r, 1e-12),
        "top_change": t,
        "random_change": r,
        "value": v0.tolist(),
        "fraction": fraction,
        "perturb": perturb,
        "baseline": baseline,
    }


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


def _default_box(fixed: torch.Tensor) -> list[tuple[int, int]]:
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
    box = _default_box(fixed) if box is None else [tuple(int(v) for v in b) for b in box]
    moving, mask, _ = local_deformation_case(aligned_moving, box, amplitude, direction)
    attr = explainer.attribute(moving, fixed)
    return {**localisation_fraction(attr, mask), "box": [list(b) for b in box]}


def sanity_report(
    network: nn.Module,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    stages: Sequence[str] | Mapping | None = None,
    targets: Mapping[str, str | Sequence[str]] | None = None,
    spacing_mm=None,
    roi_mask: torch.Tensor | None = None,
    aligned_moving: torch.Tensor | None = None,
    box: Sequence[Sequence[int]] | None = None,
    amplitude: float | None = None,
    scope: str = "downstream",
    fraction: float = 0.1,
    n_random: int = 5,
    sigma: float = 4.0,
    perturb: str = "both",
    seed: int = 0,
    method: str | None = None,
) -> dict:
    """All three checks for every selected stage and target.

    Args:
        network: the trained network.
        moving: ``(B, 1, *spatial)`` on the network grid, in [0, 1].
        fixed: ``(B, 1, *spatial)``.
        stages: see :func:`bundle.explain.gradcam.stage_specs`.
        targets: ``{stage: names}``; defaults from :func:`bundle.explain.gradcam.default_targets`.
        spacing_mm: network grid voxel size.
        roi_mask: ROI for ``displacement_roi`` targets.
        aligned_moving: moving image aligned with ``fixed`` for the localisation case; default
            the network's own registered moving image (``forward.warped``).
        box: localisation box (see :func:`localisation_check`).
        amplitude: localisation bump amplitude (voxels).
        scope: randomisation scope (see :func:`randomised_copy`).
        fraction: deletion top-k share.
        n_random: deletion random draws.
        sigma: deletion blur (voxels).
        perturb: images perturbed by deletion.
        seed: seed of every random choice.
        method: ``"gradcam"`` or ``"hirescam"`` for every stage; ``None`` keeps each stage's.

    Returns:
        ``{"settings": {...}, "<stage>": {"<target>": {"value", "randomisation_spearman",
        "deletion_ratio", "deletion_top_change", "deletion_random_change",
        "deletion_ratio_shifted", "localisation_ratio", "localisation_mass_fraction",
        "localisation_volume_fraction"}}}``.
    """
    dims = int(network.spatial_dims)
    was_training = network.training
    network.eval()
    try:
        if aligned_moving is None:
            with torch.no_grad():
                aligned_moving = run_registration(network, moving, fixed, False, False).forward.warped
        box = _default_box(fixed) if box is None else box
        report: dict = {
            "settings": {
                "scope": scope, "fraction": fraction, "n_random": n_random, "sigma": sigma,
                "perturb": perturb, "seed": seed, "box": [list(map(int, b)) for b in box], "amplitude": amplitude,
                "method": method,
            }
        }
        targets = dict(targets or {})
        for stage, spec in stage_specs(stages).items():
            names = targets.get(stage) or default_targets(stage, spec.layer, spacing_mm, roi_mask is not None)
            report[stage] = {}
            for name in expand_target_names(names, dims):
                ex = StageExplainer.for_stage(
                    network, spec, name, spacing_mm=spacing_mm, roi_mask=roi_mask, **({"method": method} if method else {})
                )
                attr = ex.attribute(moving, fixed)
                rnd = randomisation_check(ex, moving, fixed, scope, seed, attribution=attr)
                dele = deletion_check(ex, moving, fixed, attr, fraction, n_random, sigma, perturb, "voxels", seed)
                shifted = deletion_check(ex, moving, fixed, attr, fraction, n_random, sigma, perturb, "shifted", seed)
                loc = localisation_check(ex, aligned_moving, fixed, box, amplitude)
                report[stage][name] = {
                    "method": ex.method,
                    "value": dele["value"],
                    "randomisation_spearman": rnd["spearman"],
                    "deletion_ratio": dele["ratio"],
                    "deletion_top_change": dele["top_change"],
                    "deletion_random_change": dele["random_change"],
                    "deletion_ratio_shifted": shifted["ratio"],
                    "localisation_ratio": loc["ratio"],
                    "localisation_mass_fraction": loc["mass_fraction"],
                    "localisation_volume_fraction": loc["volume_fraction"],
                }
    finally:
        network.train(was_training)
    return report
