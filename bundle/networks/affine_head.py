"""Affine head: regress an affine matrix from the coarsest features of both images."""

from __future__ import annotations

import torch
from torch import nn

from ..fields import affine_to_ddf, centered_grid
from .encoder import conv_block

__all__ = ["AffineHead", "affine_to_ddf", "centered_grid"]  # the field functions live in bundle.fields


class AffineHead(nn.Module):
    """Predict ``theta`` (``[M | t]`` in centred voxel coordinates) from paired features.

    The last linear layer is zero-initialised so that the untrained head is the identity.
    Translations are predicted as fractions of the half image size. Normalised coordinate
    channels are appended to the features (CoordConv): after global average pooling a
    translation-equivariant convolution alone cannot tell *where* structures are, while
    products with coordinates give the head image moments, from which position follows.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the concatenated (moving, fixed) coarsest features.
        hidden_channels: channels of the convolution before global pooling.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int = 64):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv = conv_block(spatial_dims, in_channels + spatial_dims, hidden_channels, strides=2)
        self.pool = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        n_out = spatial_dims * (spatial_dims + 1)
        self.fc = nn.Linear(hidden_channels, n_out)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor, image_size) -> torch.Tensor:
        """Return ``theta`` of shape ``(B, dims, dims + 1)``."""
        d = self.spatial_dims
        size = features.shape[2:]
        coords = centered_grid(size, device=features.device, dtype=features.dtype)
        coords = coords / torch.as_tensor([max((s - 1) / 2.0, 1.0) for s in size], device=features.device, dtype=features.dtype).view(d, *([1] * d))
        features = torch.cat([features, coords.unsqueeze(0).expand(features.shape[0], *coords.shape)], dim=1)
        raw = self.fc(self.pool(self.conv(features)).flatten(1)).view(-1, d, d + 1)
        eye = torch.eye(d, device=raw.device, dtype=raw.dtype)
        half = torch.as_tensor([s / 2.0 for s in image_size], device=raw.device, dtype=raw.dtype)
        return torch.cat([eye + raw[:, :, :d], (raw[:, :, d] * half).unsqueeze(-1)], dim=2)
