"""Keypoint affine head: corresponding points in both images, then a closed-form affine fit (KeyMorph-style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..fields import centered_grid
from .encoder import conv_block

__all__ = ["KeypointAffineHead", "fit_affine", "soft_argmax"]


def soft_argmax(logits: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Expected position of each heat map, in centred voxel coordinates of the full image grid.

    Args:
        logits: ``(B, K, *S)`` heat-map logits on a grid ``image_size / S`` times coarser.
        image_size: the full grid the positions refer to.

    Returns:
        ``(B, K, dims)`` positions (the centre of a coarse cell is the centre of its full-grid voxels).
    """
    b, k, *size = logits.shape
    d = len(size)
    prob = torch.softmax(logits.reshape(b, k, -1), dim=-1)
    scale = torch.as_tensor([full / s for full, s in zip(image_size, size)], dtype=logits.dtype, device=logits.device)
    coords = centered_grid(size, device=logits.device, dtype=logits.dtype).reshape(d, -1) * scale[:, None]
    return prob @ coords.T


def fit_affine(fixed_points: torch.Tensor, moving_points: torch.Tensor, weights: torch.Tensor, half_size: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Weighted least-squares affine ``[M | t]`` with ``M p_fixed + t ~ p_moving`` (differentiable).

    Points are normalised by ``half_size`` before the fit, and the normal equations carry a ridge
    ``ridge * sum(weights)`` towards the identity, so that degenerate point sets give the identity
    rather than a singular solve.

    Args:
        fixed_points, moving_points: ``(B, K, dims)`` centred voxel coordinates.
        weights: ``(B, K)`` or ``(K,)`` non-negative.
        half_size: ``(dims,)`` half the image size in voxels.

    Returns:
        ``(B, dims, dims + 1)`` in centred voxel coordinates (the network's ``theta``).
    """
    b, k, d = fixed_points.shape
    w = weights.expand(b, k).unsqueeze(-1)
    x = torch.cat([fixed_points / half_size, torch.ones(b, k, 1, dtype=fixed_points.dtype, device=fixed_points.device)], dim=-1)
    y = moving_points / half_size
    eye = torch.eye(d + 1, dtype=x.dtype, device=x.device)
    lam = ridge * w.sum(dim=1, keepdim=True)
    a = (x * w).transpose(1, 2) @ x + lam * eye
    rhs = (x * w).transpose(1, 2) @ y + lam * eye[:, :d]
    coef = torch.linalg.solve(a, rhs).transpose(1, 2)  # (B, d, d + 1), normalised coordinates
    m = coef[:, :, :d] * half_size[:, None] / half_size[None, :]
    t = coef[:, :, d] * half_size
    return torch.cat([m, t.unsqueeze(-1)], dim=2)


class KeypointAffineHead(nn.Module):
    """Predict ``theta`` from ``num_keypoints`` corresponding points found in each image.

    One small convolutional network, the same for both images (contrast-independent through
    instance normalisation and training on synthesised contrasts), turns an image into
    ``num_keypoints`` heat maps at 1/2 of its resolution; the expected position of each map
    (:func:`soft_argmax`) is a keypoint. Point ``k`` of the moving image corresponds to point
    ``k`` of the fixed image, and the affine is their weighted least-squares fit
    (:func:`fit_affine`), exact and differentiable. A wide context path (1/8 resolution) is
    fused into the heat-map features by ``conv``, the layer the explanations tap.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image.
        channels: feature channels at 1, 1/2, 1/4 and 1/8 of the input resolution.
        num_keypoints: number of corresponding points.
        ridge: regularisation of the fit towards the identity (see :func:`fit_affine`).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, channels: Sequence[int] = (16, 32, 32, 64), num_keypoints: int = 32, ridge: float = 1e-3):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"channels must give 4 levels, got {tuple(channels)}.")
        self.spatial_dims = spatial_dims
        self.num_keypoints = int(num_keypoints)
        self.ridge = float(ridge)
        c0, c1, c2, c3 = channels
        self.levels = nn.ModuleList(
            [
                conv_block(spatial_dims, in_channels, c0),
                conv_block(spatial_dims, c0, c1, 2),
                conv_block(spatial_dims, c1, c2, 2),
                conv_block(spatial_dims, c2, c3, 2),
            ]
        )
        self.conv = conv_block(spatial_dims, c1 + c2 + c3, c3)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.heatmap = conv(c3, self.num_keypoints, kernel_size=1)
        self.log_weight = nn.Parameter(torch.zeros(self.num_keypoints))

    def keypoint_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, K, *S/2)`` heat-map logits of ``image`` ``(B, C, *S)``."""
        feats = []
        x = image
        for level in self.levels:
            x = level(x)
            feats.append(x)
        size = feats[1].shape[2:]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        up = [F.interpolate(f, size=size, mode=mode, align_corners=False) for f in feats[2:]]
        return self.heatmap(self.conv(torch.cat([feats[1], *up], dim=1)))

    def points(self, image: torch.Tensor, image_size) -> torch.Tensor:
        """Keypoints ``(B, K, dims)`` of ``image``, centred voxel coordinates of ``image_size``."""
        return soft_argmax(self.keypoint_logits(image), image_size)

    def keypoints(self, moving: torch.Tensor, fixed: torch.Tensor, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints ``(B, K, dims)`` of each image (one batched pass), centred voxel coordinates of ``image_size``."""
        points = self.points(torch.cat([moving, fixed], dim=0), image_size)
        return points[: moving.shape[0]], points[moving.shape[0] :]

    @property
    def weights(self) -> torch.Tensor:
        """``(K,)`` positive weights of the keypoints in the fit (learned; 1 at initialisation)."""
        return torch.exp(self.log_weight)

    def fit(self, fixed_points: torch.Tensor, moving_points: torch.Tensor, image_size) -> torch.Tensor:
        """``theta`` ``(B, dims, dims + 1)`` mapping ``fixed_points`` onto ``moving_points`` (weighted fit)."""
        half = torch.as_tensor([max(s / 2.0, 1.0) for s in image_size], dtype=fixed_points.dtype, device=fixed_points.device)
        return fit_affine(fixed_points, moving_points, self.weights, half, self.ridge)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, image_size) -> torch.Tensor:
        """``theta`` ``(B, dims, dims + 1)``: the fixed -> moving affine of the two images' keypoints."""
        pm, pf = self.keypoints(moving, fixed, image_size)
        return self.fit(pf, pm, image_size)
