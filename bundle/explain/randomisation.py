"""Model randomisation check (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

The map of the trained network is compared (Spearman rank correlation over voxels) with the
map of a copy whose weights are re-initialised. With ``scope="downstream"`` (the default, the
full cascading randomisation down to the explained layer) every parameterised module whose
first execution starts at or after the explained call of the explained layer is
re-initialised, i.e. the explained layer and everything between it and the output, while
the modules that compute its input keep their weights; ``scope="all"`` re-initialises every
weight; ``scope="layer"`` only the explained layer. A map that survives re-initialisation
reflects the image rather than what the network learned; the correlation should be low.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from ..networks.bundle_net import structured_forward
from .gradcam import StageExplainer, resolve_layer

__all__ = ["spearman", "randomised_copy", "randomisation_check"]

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
            structured_forward(net, example[0], example[1], bidirectional=bidirectional, synthesis=synthesis)
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
    return_maps: bool = False,
) -> dict:
    """Spearman correlation between the maps of the network and of a re-initialised copy.

    Args:
        explainer: the stage explainer of the trained network.
        moving: ``(B, 1, *spatial)``.
        fixed: ``(B, 1, *spatial)``.
        scope: see :func:`randomised_copy`.
        seed: re-initialisation seed.
        attribution: the trained network's map if already computed.
        return_maps: also return both maps (``attribution``, ``randomised_attribution``), e.g. to draw them.

    Returns:
        dict with ``spearman`` (mean over the batch, ignoring undefined ones), ``spearman_per_item``
        and ``scope`` (and the maps with ``return_maps``).
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
    out = {"spearman": float(np.mean(finite)) if finite else float("nan"), "spearman_per_item": per_item, "scope": scope}
    if return_maps:
        out.update(attribution=attribution, randomised_attribution=rand_attr)
    return out
