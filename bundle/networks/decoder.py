"""U-Net style decoders: image synthesis and dense field prediction share one builder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn import functional as F

from .encoder import conv_block

__all__ = ["PyramidDecoder", "SynthesisDecoder"]


class PyramidDecoder(nn.Module):
    """Decode a feature pyramid from the coarsest level up to ``out_level``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input pyramid, finest first (skip connections).
        out_level: pyramid level of the output (0 = full resolution).
        decoder_channels: channels of each decoding block, coarsest first; one per level
            from ``len(in_channels) - 2`` down to ``out_level``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        out_level: int = 0,
        decoder_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        in_channels = tuple(in_channels)
        n_up = len(in_channels) - 1 - out_level
        if n_up < 0:
            raise ValueError(f"out_level {out_level} is deeper than the pyramid ({len(in_channels)} levels).")
        if decoder_channels is None:
            decoder_channels = [in_channels[len(in_channels) - 2 - i] for i in range(n_up)]
        if len(decoder_channels) != n_up:
            raise ValueError(f"expected {n_up} decoder_channels, got {len(decoder_channels)}.")
        self.out_level = out_level
        self.spatial_dims = spatial_dims
        blocks = []
        prev = in_channels[-1]
        for i, ch in enumerate(decoder_channels):
            skip = in_channels[len(in_channels) - 2 - i]
            blocks.append(conv_block(spatial_dims, prev + skip, ch))
            prev = ch
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = prev

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upsample, concatenate the skip of the next finer level, convolve; repeat."""
        x = feats[-1]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        for i, block in enumerate(self.blocks):
            skip = feats[len(feats) - 2 - i]
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class SynthesisDecoder(nn.Module):
    """Render an image of the *other* contrast from the shared encoder's features.

    Args:
        spatial_dims: 2 or 3.
        encoder_channels: channels of the encoder pyramid, finest first.
        out_channels: channels of the synthesised image.
        out_level: pyramid level of the output (0 = the encoder's finest level); a coarser
            output is much cheaper in 3D and is upsampled by the caller.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], out_channels: int = 1, out_level: int = 0):
        super().__init__()
        self.decoder = PyramidDecoder(spatial_dims, encoder_channels, out_level=out_level)
        self.output = Convolution(spatial_dims, self.decoder.out_channels, out_channels, kernel_size=1, conv_only=True)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the synthesised image in [0, 1]."""
        return torch.sigmoid(self.output(self.decoder(feats)))
