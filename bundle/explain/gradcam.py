"""Grad-CAM (Captum ``LayerGradCam``) of one stage of the registration network.

The forward function seen by Captum takes the 2-channel tensor ``x = cat([moving, fixed], 1)``
of shape ``(B, 2, *spatial)``, runs the network (:func:`bundle.networks.structured_forward`) and returns one scalar per batch
item (a :class:`bundle.explain.targets.Target`). Grad-CAM weights each channel of the
explained layer's activation by the spatial mean of the scalar's gradient, sums over
channels, applies a ReLU (Captum's ``relu_attributions=True``) and the result is
upsampled to the image grid with ``LayerAttribution.interpolate``.

Layers called several times per forward pass. The shared encoder runs on the
``(moving, fixed)`` batch, again on the affinely warped pair and, with synthesis, on the
synthesised images; each decoder and head runs once per direction. Captum hooks a module
on *every* call, and the tensor it keeps (and differentiates with respect to) is that of
the *last* call, which for the encoder is not an encoding of the inputs at all. Here
Captum never hooks the network's module: :class:`LayerCallTap` registers a hook on the
layer that routes the output of exactly one call (``call_index``, default 0) through a
private ``nn.Identity`` ("tap"), and Captum hooks the tap, which runs once per forward.
Call 0 is, for every default stage, the call on the raw inputs in the moving-onto-fixed
direction: the encoder on the batch ``cat([moving, fixed])``, ``decoder_ab`` on the moving
image's features, ``decoder_ba`` on the fixed image's features, the affine and deformable
heads of the forward direction. The map therefore shows where the features of *that*
call drive the scalar; gradient paths through other calls (for the encoder: through the
re-encoding of the affinely warped moving image) are part of the function being
differentiated but are not attributed. When the tapped activation holds ``k * B`` items
(the encoder's ``cat([moving, fixed])``, ``k = 2``), the ``k`` per-image maps are summed
(``batch_group=None``) or one of them is kept (``batch_group=j``; stages
``encoder_moving`` / ``encoder_fixed``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation
from torch import nn
from torch.nn import functional as F

from ..networks.bundle_net import structured_forward
from .targets import Target, expand_target_names, make_target

__all__ = [
    "METHODS",
    "StageSpec",
    "STAGES",
    "DEFAULT_STAGES",
    "resolve_layer",
    "stage_specs",
    "spec_for_network",
    "LAYER_FALLBACKS",
    "default_targets",
    "LayerCallTap",
    "StageExplainer",
    "Explanation",
    "explain_pair",
    "stage_explainers",
    "normalise_map",
]


METHODS = ("gradcam", "hirescam", "gradient")


@dataclass(frozen=True)
class StageSpec:
    """Where a stage is explained.

    Attributes:
        layer: dotted path of the explained module (``encoder.levels[-1]``).
        call_index: which call of the module per forward pass is explained.
        batch_group: with ``k * B`` items in the tapped activation, keep group ``j`` (``None``: sum).
        method: ``"gradcam"``, ``"hirescam"`` or ``"gradient"`` (see :class:`StageExplainer`).
    """

    layer: str
    call_index: int = 0
    batch_group: int | None = None
    method: str = "gradcam"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")


#: The explained layer of each stage (stage names are used in file names).
STAGES: dict[str, StageSpec] = {
    "encoder": StageSpec("encoder.levels[-1]"),
    "encoder_moving": StageSpec("encoder.levels[-1]", batch_group=0),
    "encoder_fixed": StageSpec("encoder.levels[-1]", batch_group=1),
    "decoder_ab": StageSpec("decoder_ab.decoder.blocks[-1]"),
    "decoder_ba": StageSpec("decoder_ba.decoder.blocks[-1]"),
    "affine": StageSpec("affine_head.heatmap", method="gradient"),
    "deformable": StageSpec("deformable_head.decoder.blocks[-1]", method="hirescam"),
}
DEFAULT_STAGES = ("encoder", "decoder_ab", "decoder_ba", "affine", "deformable")
#: A stage's spec for networks without its default layer: the regression affine head has no
#: heat maps (its convolution is pooled globally, so Grad-CAM on it is the natural map).
LAYER_FALLBACKS: dict[str, StageSpec] = {"affine_head.heatmap": StageSpec("affine_head.conv")}

_TOKEN = re.compile(r"^([A-Za-z_]\w*)((?:\[-?\d+\])*)$")


def resolve_layer(network: nn.Module, path: str) -> nn.Module:
    """The sub-module at a dotted path, through ``nn.Module.get_submodule``.

    Indices may also be written ``levels[-1]`` (negative indices count from the end of the
    container) besides ``get_submodule``'s own ``levels.2``.

    Raises:
        ValueError: naming the path and the part of it that does not exist.
    """
    names: list[str] = []
    for part in path.split("."):
        m = _TOKEN.match(part)
        if re.fullmatch(r"-?\d+", part):
            attr, indices = None, [int(part)]
        elif m:
            attr, indices = m.group(1), [int(i) for i in re.findall(r"-?\d+", m.group(2))]
        else:
            raise ValueError(f"invalid layer path {path!r} (bad part {part!r}).")
        names += [attr] if attr else []
        for i in indices:
            if i < 0:
                try:
                    i += len(network.get_submodule(".".join(names)))
                except (AttributeError, TypeError):
                    raise ValueError(f"layer {path!r} not found in {type(network).__name__} (at {part!r}).") from None
            names.append(str(i))
    try:
        return network.get_submodule(".".join(names))
    except AttributeError as e:
        raise ValueError(f"layer {path!r} not found in {type(network).__name__} ({e}).") from None


def stage_specs(stages: Sequence[str] | Mapping[str, str | StageSpec | Mapping] | None = None) -> dict[str, StageSpec]:
    """Normalise a stage selection: names of :data:`STAGES`, or ``{name: layer path | spec}``.

    A mapping value may be a layer path (call 0, groups summed, Grad-CAM), a :class:`StageSpec`,
    ``None`` (a stage of :data:`STAGES` as it is) or a dict of :class:`StageSpec` fields (for a
    stage of :data:`STAGES`, overriding its defaults, e.g. ``{"deformable": {"method":
    "hirescam"}}``). ``None`` selects :data:`DEFAULT_STAGES`.
    """
    if stages is None:
        stages = DEFAULT_STAGES
    if isinstance(stages, str):
        stages = [stages]
    out: dict[str, StageSpec] = {}
    if isinstance(stages, Mapping):
        for name, spec in stages.items():
            if isinstance(spec, StageSpec):
                out[name] = spec
            elif isinstance(spec, str):
                out[name] = StageSpec(spec)
            elif isinstance(spec, Mapping):
                unknown = set(spec) - {f.name for f in fields(StageSpec)}
                if unknown:
                    raise ValueError(f"stage {name!r}: unknown option(s) {sorted(unknown)}; expected {[f.name for f in fields(StageSpec)]}.")
                if name in STAGES:
                    out[name] = replace(STAGES[name], **spec)
                elif "layer" in spec:
                    out[name] = StageSpec(**spec)
                else:
                    raise ValueError(f"stage {name!r} is not one of {list(STAGES)}; give its 'layer'.")
            elif spec is None and name in STAGES:
                out[name] = STAGES[name]
            else:
                raise ValueError(f"stage {name!r}: expected a layer path, a StageSpec or a dict, got {spec!r}.")
        return out
    for name in stages:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; expected one of {list(STAGES)} or a {{name: layer path}} mapping.")
        out[name] = STAGES[name]
    return out


def spec_for_network(network: nn.Module, spec: StageSpec) -> StageSpec:
    """``spec``, or its :data:`LAYER_FALLBACKS` entry when ``network`` lacks the layer (e.g. the
    affine stage of a regression head)."""
    if spec.layer in LAYER_FALLBACKS:
        try:
            resolve_layer(network, spec.layer)
        except ValueError:
            return LAYER_FALLBACKS[spec.layer]
    return spec


def default_targets(stage: str, layer: str | None = None, spacing_mm=None, roi: bool = False) -> list[str]:
    """The scalar each stage explains by default, chosen from the layer's top-level module.

    ``encoder``: ``similarity``; ``decoder_ab``: ``synthesis_l1``; ``decoder_ba``:
    ``synthesis_ba_l1``; ``affine_head``: every affine parameter (``affine_mm`` when the
    voxel size is known, else ``affine``); ``deformable_head``: ``displacement_rms`` (``_mm``
    when the voxel size is known) and, with a ROI, ``displacement_rms_roi``. The root mean
    square rather than the mean magnitude: the mean's gradient weights every voxel's unit
    displacement direction equally, so small residual displacements everywhere dominate
    the map; the RMS weights each voxel by its displacement.
    """
    layer = layer or (STAGES[stage].layer if stage in STAGES else stage)
    top = layer.split(".")[0].split("[")[0]
    mm = "_mm" if spacing_mm is not None else ""
    table = {
        "encoder": ["similarity"],
        "decoder_ab": ["synthesis_l1"],
        "decoder_ba": ["synthesis_ba_l1"],
        "affine_head": [f"affine{mm}"],
        "deformable_head": [f"displacement_rms{mm}"] + ([f"displacement_rms_roi{mm}"] if roi else []),
    }
    if top not in table:
        raise ValueError(f"no default target for stage {stage!r} (layer {layer!r}); give its targets explicitly.")
    return table[top]


class LayerCallTap:
    """Route the output of one call of ``layer`` through a private identity module.

    Use as a context manager around the forward pass; give ``tap.tap`` to Captum as its
    layer. ``calls`` counts the calls of ``layer`` seen during the last ``with`` block.

    Args:
        layer: the module to tap.
        call_index: the call (0-based, per forward pass) to route through the tap.
    """

    def __init__(self, layer: nn.Module, call_index: int = 0):
        if call_index < 0:
            raise ValueError(f"call_index must be >= 0, got {call_index}.")
        self.layer = layer
        self.call_index = int(call_index)
        self.tap = nn.Identity()
        self.calls = 0
        self._handle = None

    def _hook(self, module, args, output):
        index, self.calls = self.calls, self.calls + 1
        if index == self.call_index:
            return self.tap(output)
        return None

    def __enter__(self) -> LayerCallTap:
        self.calls = 0
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def normalise_map(attribution: torch.Tensor) -> torch.Tensor:
    """Scale each batch item of a non-negative map to [0, 1] by its maximum (all-zero maps stay 0)."""
    flat = attribution.flatten(1)
    peak = flat.max(dim=1).values.clamp_min(torch.finfo(attribution.dtype).tiny)
    return (attribution / peak.view(-1, *([1] * (attribution.ndim - 1)))).clamp(0, 1)


class StageExplainer:
    """Grad-CAM (or HiResCAM) of one layer of a registration network for one scalar target.

    ``method="gradcam"`` is Captum ``LayerGradCam``: each channel of the activation ``A`` is
    weighted by the spatial mean of the gradient, ``ReLU(sum_c mean_x(dy/dA_c) A_c(x))``.
    ``method="hirescam"`` (Draelos and Carin, 2020) keeps the gradient per voxel,
    ``ReLU(sum_c dy/dA_c(x) A_c(x))`` (Captum ``LayerGradientXActivation`` summed over
    channels). The two coincide when the gradient is spatially uniform (a head that pools
    globally). For dense outputs (the deformable field, synthesised images) the gradient is
    concentrated where the output changes and Grad-CAM's spatial averaging discards that; see
    ``docs/explanations.md``. ``method="gradient"`` is the magnitude of the layer's gradient
    alone, ``sum_c |dy/dA_c(x)|`` (Captum ``LayerGradientXActivation`` without the
    multiplication by the activation): for a layer whose output is read only through a
    spatial expectation, such as the keypoint head's heat-map logits, it is how much voxel
    ``x`` moves the scalar through the keypoints, with no copy of the activation's (the
    anatomy's) pattern in it.

    Args:
        network: a ``RegistrationBundleNet`` or ``MultiModalRegNet``.
        layer: dotted layer path (see :func:`resolve_layer`) or the module itself.
        target: a :class:`Target` or a target name (see :func:`bundle.explain.targets.make_target`).
        call_index: which call of ``layer`` per forward pass is explained (module docstring).
        batch_group: for a tapped activation with ``k * B`` items, keep group ``j``; ``None`` sums them.
        spacing_mm: network grid voxel size, for the ``_mm`` targets.
        roi_mask: ROI for the ``displacement_roi`` targets, on the network grid.
        relu: keep only evidence that increases the scalar (Captum's ``relu_attributions``).
        method: ``"gradcam"``, ``"hirescam"`` or ``"gradient"``.
    """

    def __init__(
        self,
        network: nn.Module,
        layer: str | nn.Module,
        target: Target | str,
        call_index: int = 0,
        batch_group: int | None = None,
        spacing_mm=None,
        roi_mask: torch.Tensor | None = None,
        relu: bool = True,
        method: str = "gradcam",
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.network = network
        self.spatial_dims = int(network.spatial_dims)
        if isinstance(layer, str):
            module, self.layer_name = resolve_layer(network, layer), layer
        else:
            names = [n for n, m in network.named_modules() if m is layer]
            if not names:
                raise ValueError(f"the given {type(layer).__name__} module is not part of the network.")
            module, self.layer_name = layer, names[0]
        self.tap = LayerCallTap(module, call_index)
        if isinstance(target, str):
            target = make_target(target, self.spatial_dims, spacing_mm=spacing_mm, roi_mask=roi_mask)
        self.target = target
        self.batch_group = batch_group
        self.relu = bool(relu)
        self.method = method
        self.last_value: torch.Tensor | None = None

    @classmethod
    def for_stage(cls, network: nn.Module, stage: str | StageSpec, target: Target | str, **kwargs) -> StageExplainer:
        """An explainer for a named stage of :data:`STAGES` (or a :class:`StageSpec`); kwargs override."""
        spec = spec_for_network(network, stage if isinstance(stage, StageSpec) else stage_specs([stage])[stage])
        opts = {"call_index": spec.call_index, "batch_group": spec.batch_group, "method": spec.method, **kwargs}
        return cls(network, spec.layer, target, **opts)

    def _check(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        d = self.spatial_dims
        if moving.ndim != d + 2 or moving.shape[1] != 1 or fixed.shape != moving.shape:
            raise ValueError(
                f"moving and fixed must both be (B, 1, *spatial) with {d} spatial dims, got {tuple(moving.shape)} and {tuple(fixed.shape)}."
            )

    def forward_func(self, x: torch.Tensor) -> torch.Tensor:
        """Captum's forward function: ``(B, 2, *spatial)`` (moving, fixed) -> target ``(B,)``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != 2:
            raise ValueError(f"expected (B, 2, *spatial) with {self.spatial_dims} spatial dims, got {tuple(x.shape)}.")
        moving, fixed = x[:, :1], x[:, 1:]
        out = structured_forward(self.network, moving, fixed, bidirectional=self.target.needs_backward, synthesis=self.target.needs_synthesis)
        value = self.target(out, moving, fixed)
        self.last_value = value.detach()
        return value

    @torch.no_grad()
    def scalar_on_reference(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The target when the network sees ``x`` but the target compares the images of ``reference``.

        Both are ``(B, 2, *spatial)`` (moving, fixed). The network's fields come from ``x``; the
        registered images are ``reference``'s, warped by those fields with the network's own
        ``warp``, and images the target reads directly are ``reference``'s. So the value changes
        only through what the network predicts, not through the target's own formula (a
        blurred moving image changes the mutual information by itself, whatever the network does).
        Equals :meth:`forward_func` when ``x`` is ``reference``.
        """
        if x.shape != reference.shape:
            raise ValueError(f"x {tuple(x.shape)} and reference {tuple(reference.shape)} must have the same shape.")
        out = structured_forward(self.network, x[:, :1], x[:, 1:], bidirectional=self.target.needs_backward, synthesis=self.target.needs_synthesis)
        moving, fixed = reference[:, :1], reference[:, 1:]
        out = replace(out, forward=replace(out.forward, warped=self.network.warp(moving, out.forward.ddf)))
        if out.backward is not None:
            out = replace(out, backward=replace(out.backward, warped=self.network.warp(fixed, out.backward.ddf)))
        return self.target(out, moving, fixed)

    @torch.no_grad()
    def scalar(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The explained scalar ``(B,)`` without gradients."""
        self._check(moving, fixed)
        return self.forward_func(torch.cat([moving, fixed], dim=1))

    def _group(self, attr: torch.Tensor, batch: int) -> torch.Tensor:
        if attr.shape[0] == batch:
            return attr
        if attr.shape[0] % batch:
            raise ValueError(f"the tapped activation has {attr.shape[0]} items, not a multiple of the batch size {batch}.")
        groups = attr.reshape(attr.shape[0] // batch, batch, *attr.shape[1:])
        if self.batch_group is None:
            return groups.sum(dim=0)
        if not 0 <= self.batch_group < groups.shape[0]:
            raise ValueError(f"batch_group {self.batch_group} out of range for {groups.shape[0]} groups.")
        return groups[self.batch_group]

    def _layer_attribution(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "gradcam":
            return LayerGradCam(self.forward_func, self.tap.tap).attribute(x, relu_attributions=self.relu)
        if self.method == "gradient":
            return LayerGradientXActivation(self.forward_func, self.tap.tap, multiply_by_inputs=False).attribute(x).abs().sum(dim=1, keepdim=True)
        attr = LayerGradientXActivation(self.forward_func, self.tap.tap).attribute(x).sum(dim=1, keepdim=True)
        return F.relu(attr) if self.relu else attr

    def attribute(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The map ``(B, 1, *spatial)`` on the input grid (raw values, ReLU'd unless ``relu=False``).

        Raises:
            ValueError: bad input shapes, or the layer was not called ``call_index + 1`` times.
        """
        self._check(moving, fixed)
        x = torch.cat([moving, fixed], dim=1).detach()
        was_training = self.network.training
        self.network.eval()
        try:
            with self.tap:
                attr = self._layer_attribution(x)
        except (AssertionError, RuntimeError) as e:
            if self.tap.calls <= self.tap.call_index:
                raise ValueError(
                    f"layer {self.layer_name!r} ran {self.tap.calls} time(s) in the forward pass of target "
                    f"{self.target.name!r}; call_index {self.tap.call_index} was never reached."
                ) from None
            if "not have been used in the graph" in str(e):
                raise ValueError(
                    f"target {self.target.name!r} does not depend on call {self.tap.call_index} of layer {self.layer_name!r}."
                ) from None
            raise
        finally:
            self.network.train(was_training)
        attr = self._group(attr.detach(), moving.shape[0])
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return LayerAttribution.interpolate(attr, tuple(moving.shape[2:]), interpolate_mode=mode)


@dataclass
class Explanation:
    """One stage map.

    Attributes:
        stage: stage name.
        layer: explained layer path.
        target: target name.
        description: what the target measures.
        value: the target's value ``(B,)``.
        attribution: raw map ``(B, 1, *spatial)`` on the network input grid.
        method: ``"gradcam"`` or ``"hirescam"``.
    """

    stage: str
    layer: str
    target: str
    description: str
    value: torch.Tensor
    attribution: torch.Tensor
    method: str = "gradcam"


def explain_pair(
    network: nn.Module,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    stages: Sequence[str] | Mapping | None = None,
    targets: Mapping[str, str | Sequence[str]] | None = None,
    spacing_mm=None,
    roi_mask: torch.Tensor | None = None,
    method: str | None = None,
) -> list[Explanation]:
    """Grad-CAM maps of every selected stage and target for a batch of pairs.

    Args:
        network: the registration network (eval mode is used).
        moving: ``(B, 1, *spatial)`` in [0, 1].
        fixed: ``(B, 1, *spatial)`` in [0, 1], same grid.
        stages: see :func:`stage_specs`; default :data:`DEFAULT_STAGES`.
        targets: ``{stage: target name(s)}``; stages not listed use :func:`default_targets`.
        spacing_mm: network grid voxel size (enables mm targets and makes them the defaults).
        roi_mask: ROI on the network grid (enables ``displacement_roi`` targets).
        method: ``"gradcam"`` or ``"hirescam"`` for every stage; ``None`` keeps each stage's.

    Returns:
        one :class:`Explanation` per (stage, target), in order.
    """
    out = []
    for stage, _spec, name, ex in stage_explainers(network, stages, targets, spacing_mm, roi_mask, method):
        attr = ex.attribute(moving, fixed)
        out.append(Explanation(stage, ex.layer_name, name, ex.target.description, ex.last_value, attr, ex.method))
    return out


def stage_explainers(
    network: nn.Module,
    stages: Sequence[str] | Mapping | None = None,
    targets: Mapping[str, str | Sequence[str]] | None = None,
    spacing_mm=None,
    roi_mask: torch.Tensor | None = None,
    method: str | None = None,
):
    """Yield ``(stage, spec, target name, StageExplainer)`` for every selected stage and target
    (the selection of :func:`explain_pair` and :func:`bundle.explain.sanity.sanity_report`).

    Raises:
        ValueError: targets given for a stage that is not selected.
    """
    dims = int(network.spatial_dims)
    specs = stage_specs(stages)
    targets = dict(targets or {})
    unknown = set(targets) - set(specs)
    if unknown:
        raise ValueError(f"targets given for stage(s) {sorted(unknown)} that are not selected ({list(specs)}).")
    for stage, spec in specs.items():
        names = targets.get(stage) or default_targets(stage, spec.layer, spacing_mm, roi_mask is not None)
        for name in expand_target_names(names, dims):
            yield stage, spec, name, StageExplainer.for_stage(
                network, spec, name, spacing_mm=spacing_mm, roi_mask=roi_mask, **({"method": method} if method else {})
            )
