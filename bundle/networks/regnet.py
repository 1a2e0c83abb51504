"""The composed FIRE-style network: shared encoder, two synthesis decoders, affine then deformable stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from monai.networks.blocks import Warp
from torch import nn
from torch.nn import functional as F

from ..fields import affine_to_ddf, compose_ddf, compose_theta
from .affine_head import AffineHead
from .decoder import SynthesisDecoder
from .deformable_head import DeformableHead
from .encoder import ModalityEncoder
from .keypoint_head import KeypointAffineHead

__all__ = ["StageResult", "RegistrationOutput", "MultiModalRegNet", "compose_ddf"]


@dataclass
class StageResult:
    """Registration of one image onto another (all fields on the target grid, voxel units).

    Attributes:
        theta: ``(B, dims, dims + 1)`` affine ``[M | t]`` in centred voxel coordinates.
        ddf_affine: displacement of the affine stage.
        ddf_deformable: displacement of the deformable stage (applied after the affine one).
        ddf: composed displacement; ``Warp()(source, ddf)`` is ``warped``.
        velocity: the deformable head's raw field (velocity when integrated) at its level.
        warped_affine: source after the affine stage only.
        warped: source after both stages.
        synth: source rendered in the target's contrast by a synthesis decoder (unwarped).
        synth_warped: ``synth`` warped by ``ddf``; comparable to the target with a mono-modal loss.
    """

    theta: torch.Tensor
    ddf_affine: torch.Tensor
    ddf_deformable: torch.Tensor
    ddf: torch.Tensor
    velocity: torch.Tensor
    warped_affine: torch.Tensor
    warped: torch.Tensor
    synth: torch.Tensor | None = None
    synth_warped: torch.Tensor | None = None


@dataclass
class RegistrationOutput:
    """Both directions of a bi-directional pass.

    Attributes:
        forward: moving registered onto fixed.
        backward: fixed registered onto moving (``None`` when not requested).
        cycle_moving: moving -> fixed contrast -> moving contrast (synthesis cycle).
        cycle_fixed: fixed -> moving contrast -> fixed contrast.
    """

    forward: StageResult
    backward: StageResult | None = None
    cycle_moving: torch.Tensor | None = None
    cycle_fixed: torch.Tensor | None = None

    def as_dict(self) -> dict:
        """Flat dict (``forward_ddf``, ``backward_theta``, ...) for logging and handlers."""
        out = {}
        for name in ("forward", "backward"):
            stage = getattr(self, name)
            if stage is not None:
                out.update({f"{name}_{f.name}": getattr(stage, f.name) for f in fields(stage)})
        out["cycle_moving"], out["cycle_fixed"] = self.cycle_moving, self.cycle_fixed
        return out


class MultiModalRegNet(nn.Module):
    """Affine-then-deformable multi-modal registration with cross-modality synthesis.

    One ``ModalityEncoder`` encodes both contrasts; ``decoder_ab`` renders a moving-contrast
    image in the fixed contrast and ``decoder_ba`` the reverse. The affine head gives ``theta``:
    either an ``AffineHead`` regressing it from the coarsest features of the pair, or a
    ``KeypointAffineHead`` fitting it in closed form to corresponding keypoints it finds in the
    two images. The moving image is warped by it, re-encoded, and the ``DeformableHead``
    predicts the remaining (diffeomorphic) field.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        encoder_channels: channels per encoder level (finest first).
        affine_channels: hidden channels of the affine head.
        deformable_level: pyramid level of the deformable field (0 = full resolution).
        deformable_channels: channels of the deformable head's decoding blocks, coarsest first,
            one per level from the coarsest skip down to ``deformable_level`` (default: the
            encoder's, doubled).
        integrate: predict a stationary velocity field integrated with MONAI ``DVF2DDF``.
        integration_steps: scaling-and-squaring steps.
        input_downsample: number of 2x average-poolings applied to the images before the
            encoder (1 halves the working resolution, ~8x cheaper in 3D); fields and
            synthesised images are upsampled back and warping happens at full resolution.
        synthesis_level: pyramid level at which the synthesis decoders output their image.
        affine: ``"regression"`` (:class:`AffineHead`) or ``"keypoints"`` (:class:`KeypointAffineHead`).
        num_keypoints: keypoints of the ``"keypoints"`` head.
        affine_passes: passes of the keypoint head (a recursive cascade): each later pass finds the
            points again in the source warped by the estimate so far and composes the fitted
            correction onto it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        encoder_channels: Sequence[int] = (8, 16, 32, 32),
        affine_channels: int = 64,
        deformable_level: int = 1,
        deformable_channels: Sequence[int] | None = None,
        integrate: bool = True,
        integration_steps: int = 7,
        input_downsample: int = 0,
        synthesis_level: int = 0,
        affine: str = "regression",
        num_keypoints: int = 32,
        affine_passes: int = 1,
    ):
        super().__init__()
        if affine not in ("regression", "keypoints"):
            raise ValueError(f"affine must be 'regression' or 'keypoints', got {affine!r}.")
        self.spatial_dims = spatial_dims
        self.input_downsample = int(input_downsample)
        self.encoder = ModalityEncoder(spatial_dims, in_channels, encoder_channels)
        self.decoder_ab = SynthesisDecoder(spatial_dims, encoder_channels, in_channels, synthesis_level)
        self.decoder_ba = SynthesisDecoder(spatial_dims, encoder_channels, in_channels, synthesis_level)
        self.affine = affine
        if affine_passes < 1 or (affine_passes > 1 and affine != "keypoints"):
            raise ValueError(f"affine_passes must be 1, or more with the 'keypoints' head, got {affine_passes}.")
        self.affine_passes = int(affine_passes)
        if affine == "keypoints":
            self.affine_head = KeypointAffineHead(spatial_dims, in_channels, num_keypoints=num_keypoints)
        else:
            self.affine_head = AffineHead(spatial_dims, 2 * encoder_channels[-1], affine_channels)
        self.deformable_head = DeformableHead(
            spatial_dims, encoder_channels, deformable_level, integrate, integration_steps, decoder_channels=deformable_channels
        )
        self.warp = Warp(mode="bilinear", padding_mode="border")

    @property
    def size_divisor(self) -> int:
        """Image sizes must be multiples of this (the regression head adds one down-sampling, the keypoint head has 3)."""
        depth = max(self.encoder.depth + 1, 3) if self.affine == "keypoints" else self.encoder.depth + 1
        return 2 ** (depth + self.input_downsample)

    def _check(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        d = self.spatial_dims
        if moving.ndim != d + 2 or fixed.shape != moving.shape:
            raise ValueError(
                f"moving and fixed must both be (B, C, *spatial) with {d} spatial dims, "
                f"got {tuple(moving.shape)} and {tuple(fixed.shape)}."
            )
        bad = [s for s in moving.shape[2:] if s % self.size_divisor]
        if bad:
            raise ValueError(f"spatial size {tuple(moving.shape[2:])} is not divisible by {self.size_divisor}.")

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` at the working resolution (``input_downsample`` 2x average-poolings)."""
        if self.input_downsample:
            x = F.avg_pool2d(x, 2**self.input_downsample) if self.spatial_dims == 2 else F.avg_pool3d(x, 2**self.input_downsample)
        return x

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder pyramid of ``x`` (after the optional input down-sampling)."""
        return self.encoder(self.downsample(x))

    def synthesise(self, decoder: SynthesisDecoder, feats: list[torch.Tensor], size) -> torch.Tensor:
        """Run a synthesis decoder and bring its image to the full grid."""
        img = decoder(feats)
        if tuple(img.shape[2:]) != tuple(size):
            img = F.interpolate(img, size=tuple(size), mode="bilinear" if self.spatial_dims == 2 else "trilinear", align_corners=False)
        return img

    def _encode_pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.encode(torch.cat([a, b], dim=0))
        n = a.shape[0]
        return [f[:n] for f in feats], [f[n:] for f in feats]

    def _thetas(self, moving, fixed, fm, ff, size, bidirectional: bool):
        """``(theta_ab, theta_ba or None)``; the keypoint head finds each image's points once for both directions."""
        if self.affine == "keypoints":
            pm, pf = self.keypoints(moving, fixed)
            # both directions as one batch: (moving, fixed) sources, (fixed, moving) target points
            sources, targets, found = (torch.cat([moving, fixed]), torch.cat([pf, pm]), torch.cat([pm, pf])) if bidirectional else (moving, pf, pm)
            theta = self.affine_head.fit(targets, found, size)
            for _ in range(self.affine_passes - 1):
                theta = self._cascade_pass(sources, targets, theta, size)
            n = moving.shape[0]
            return theta[:n], theta[n:] if bidirectional else None
        theta_ab = self.affine_head(torch.cat([fm[-1], ff[-1]], dim=1), size)
        return theta_ab, self.affine_head(torch.cat([ff[-1], fm[-1]], dim=1), size) if bidirectional else None

    def _cascade_pass(self, source, target_points, theta, size):
        """``theta`` refined by one more keypoint fit between ``target_points`` and ``source`` warped by ``theta``."""
        warped = self.warp(source, affine_to_ddf(theta, size))
        points = self.affine_head.points(self.downsample(warped), size)
        return compose_theta(theta, self.affine_head.fit(target_points, points, size))

    def deformable_field(self, moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The deformable head's raw field (a velocity when it integrates) for ``moving`` warped by a given
        affine ``theta`` (e.g. one refined after the network): what the forward pass predicts behind its own affine."""
        size = moving.shape[2:]
        moving_aff = self.warp(moving, affine_to_ddf(theta, size))
        return self.deformable_head(self.encode(moving_aff), self.encode(fixed), size)[1]

    def affine_and_velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass's affine ``theta`` and deformable field (velocity) only, moving onto fixed:
        what a refinement starts from, without composing and warping at full resolution."""
        self._check(moving, fixed)
        size = moving.shape[2:]
        feats = (None, None) if self.affine == "keypoints" else self._encode_pair(moving, fixed)
        theta = self._thetas(moving, fixed, *feats, size, bidirectional=False)[0]
        return theta, self.deformable_field(moving, fixed, theta)

    def keypoints(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keypoint head's points ``(B, K, dims)`` in each image (centred voxel coordinates of the input grid)."""
        if self.affine != "keypoints":
            raise ValueError("keypoints need the 'keypoints' affine head.")
        return self.affine_head.keypoints(self.downsample(moving), self.downsample(fixed), moving.shape[2:])

    def _affine_only(self, moving, fixed, bidirectional, size) -> RegistrationOutput:
        thetas = self._thetas(moving, fixed, None, None, size, bidirectional)
        results = []
        for src, theta in ((moving, thetas[0]), (fixed, thetas[1]))[: 2 if bidirectional else 1]:
            ddf = affine_to_ddf(theta, size)
            warped = self.warp(src, ddf)
            zero = torch.zeros_like(ddf)
            results.append(StageResult(theta, ddf, zero, ddf, zero, warped, warped))
        return RegistrationOutput(forward=results[0], backward=results[1] if bidirectional else None)

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, bidirectional: bool = True, synthesis: bool = True, deformable: bool = True
    ) -> RegistrationOutput:
        """Register ``moving`` onto ``fixed`` (and, if ``bidirectional``, the reverse).

        Args:
            moving: ``(B, C, *spatial)`` in [0, 1].
            fixed: ``(B, C, *spatial)`` in [0, 1], same grid as ``moving``.
            bidirectional: also compute the fixed-onto-moving direction.
            synthesis: also run the synthesis decoders and the synthesis cycle.
            deformable: run the deformable stage; ``False`` (keypoint head, no synthesis) runs the
                affine stage alone, with a zero deformable field (what training that stage needs).
        """
        self._check(moving, fixed)
        size = moving.shape[2:]
        if not deformable:
            if self.affine != "keypoints" or synthesis:
                raise ValueError("deformable=False needs the 'keypoints' affine head and synthesis=False.")
            return self._affine_only(moving, fixed, bidirectional, size)
        fm, ff = self._encode_pair(moving, fixed)
        theta_ab, theta_ba = self._thetas(moving, fixed, fm, ff, size, bidirectional)
        ddf_aff_ab = affine_to_ddf(theta_ab, size)
        moving_aff = self.warp(moving, ddf_aff_ab)
        if bidirectional:
            ddf_aff_ba = affine_to_ddf(theta_ba, size)
            fixed_aff = self.warp(fixed, ddf_aff_ba)
            fma, ffa = self._encode_pair(moving_aff, fixed_aff)
        else:
            fma = self.encode(moving_aff)
        def_ab, vel_ab = self.deformable_head(fma, ff, size)
        ddf_ab = compose_ddf(ddf_aff_ab, def_ab, self.warp)
        fwd = StageResult(theta_ab, ddf_aff_ab, def_ab, ddf_ab, vel_ab, moving_aff, self.warp(moving, ddf_ab))
        out = RegistrationOutput(forward=fwd)
        if bidirectional:
            def_ba, vel_ba = self.deformable_head(ffa, fm, size)
            ddf_ba = compose_ddf(ddf_aff_ba, def_ba, self.warp)
            out.backward = StageResult(theta_ba, ddf_aff_ba, def_ba, ddf_ba, vel_ba, fixed_aff, self.warp(fixed, ddf_ba))
        if synthesis:
            fwd.synth = self.synthesise(self.decoder_ab, fm, size)
            fwd.synth_warped = self.warp(fwd.synth, ddf_ab)
            if bidirectional:
                out.backward.synth = self.synthesise(self.decoder_ba, ff, size)
                out.backward.synth_warped = self.warp(out.backward.synth, out.backward.ddf)
                fs_ab, fs_ba = self._encode_pair(fwd.synth, out.backward.synth)
                out.cycle_moving = self.synthesise(self.decoder_ba, fs_ab, size)
                out.cycle_fixed = self.synthesise(self.decoder_ab, fs_ba, size)
        return out
