"""Single-tensor wrapper that serves as the bundle's ``network_def``, and its structured-forward adaptor."""

from __future__ import annotations

import torch
from torch import nn

from .regnet import MultiModalRegNet

__all__ = ["RegistrationBundleNet", "StructuredRegistration", "structured_forward"]


class RegistrationBundleNet(MultiModalRegNet):
    """``MultiModalRegNet`` with a single-tensor interface for bundles and TorchScript.

    ``forward(x)`` takes ``x`` of shape ``(B, 2, *spatial)``, channel 0 the moving image and
    channel 1 the fixed image (both in [0, 1]), and returns ``(B, 1 + dims, *spatial)``:
    channel 0 the warped moving image, channels ``1:`` the composed displacement field in
    voxel units (MONAI ``Warp`` convention). ``register(moving, fixed, ...)`` gives the full
    structured :class:`RegistrationOutput` used for training and explanation.
    """

    def register(self, moving: torch.Tensor, fixed: torch.Tensor, bidirectional: bool = True, synthesis: bool = True, deformable: bool = True):
        """The structured two-stage, two-direction result (see ``MultiModalRegNet.forward``)."""
        return super().forward(moving, fixed, bidirectional=bidirectional, synthesis=synthesis, deformable=deformable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != 2:
            raise ValueError(f"expected (B, 2, *spatial) with {self.spatial_dims} spatial dims, got {tuple(x.shape)}.")
        out = self.register(x[:, :1], x[:, 1:], bidirectional=False, synthesis=False).forward
        return torch.cat([out.warped, out.ddf], dim=1)


class StructuredRegistration(nn.Module):
    """Module whose ``forward`` is ``network.register``: what ``DistributedDataParallel`` wraps.

    DDP synchronises gradients only for passes through its own ``forward``; calling
    ``ddp.module.register(...)`` would bypass it. Wrapping this adaptor instead,
    ``DistributedDataParallel(StructuredRegistration(net))(moving, fixed, ...)`` returns the full
    :class:`RegistrationOutput` through DDP, while ``net`` keeps its single-tensor ``forward``
    (and its un-prefixed ``state_dict``) for checkpoints, export and inference.

    Args:
        network: a :class:`RegistrationBundleNet` (anything with ``register(moving, fixed, ...)``).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, bidirectional: bool = True, synthesis: bool = True, deformable: bool = True):
        return self.network.register(moving, fixed, bidirectional=bidirectional, synthesis=synthesis, deformable=deformable)


def structured_forward(network: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor, **kwargs):
    """The structured :class:`RegistrationOutput` of ``network`` for a pair: the one network entry point.

    Training, validation, inference helpers and the explanations all call the network through
    this function.

    ``network.register(...)`` for the bundle network; a call through ``forward`` for a
    :class:`MultiModalRegNet` or a wrapper
    without ``register`` (``DistributedDataParallel(StructuredRegistration(net))``), so that
    DDP sees the pass and synchronises gradients.

    Raises:
        TypeError: ``network`` wraps a module with ``register`` directly (DDP around the bare
            network), whose ``forward`` is the single-tensor one.
    """
    if kwargs.get("deformable", False) is True:
        kwargs.pop("deformable")  # the default: networks without an affine-only mode need not accept it
    if hasattr(network, "register"):
        return network.register(moving, fixed, **kwargs)
    if hasattr(getattr(network, "module", None), "register"):
        raise TypeError(
            f"{type(network).__name__} wraps the bare network; wrap bundle.networks.StructuredRegistration(network) "
            "instead so that the structured pass goes through the wrapper's forward."
        )
    return network(moving, fixed, **kwargs)
