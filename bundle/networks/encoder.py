"""Modality-independent encoder shared by the moving and the fixed image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["ModalityEncoder", "conv_block"]


def conv_block(spatial_dims: int, in_channels: int, out_channels: int, strides: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with instance norm and LeakyReLU; the first may be strided."""
    kwargs = {"act": ("leakyrelu", {"negative_slope": 0.2}), "norm": "instance"}
    return nn.Sequential(
        Convolution(spatial_dims, in_channels, out_channels, strides=strides, **kwargs),
        Convolution(spatial_dims, out_channels, out_channels, **kwargs),
    )


class ModalityEncoder(nn.Module):
    """A convolutional pyramid encoder applied with the same weights to every contrast.

    Instance normalisation removes per-image intensity statistics, so features depend on
    anatomy rather than contrast; the synthesis decoders and the cycle loss push the
    features to carry what is needed to render either contrast.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one input image (1 for a single MRI contrast).
        channels: feature channels per level; level ``i`` has resolution ``1 / 2**i``.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, channels: Sequence[int] = (8, 16, 32, 32)):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.channels = tuple(channels)
        levels = []
        prev = in_channels
        for i, ch in enumerate(self.channels):
            levels.append(conv_block(spatial_dims, prev, ch, strides=1 if i == 0 else 2))
            prev = ch
        self.levels = nn.ModuleList(levels)

    @property
    def depth(self) -> int:
        """Number of down-sampling steps; input sizes must be divisible by ``2**depth``."""
        return len(self.channels) - 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of every level, finest first."""
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats
