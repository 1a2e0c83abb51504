"""Streamed training pairs synthesised from tissue label maps (in the spirit of SynthMorph).

A model trained only on the deformed templates it is evaluated on can learn that anatomy
rather than registration. Here every pair has its own anatomy and its own two contrasts:

1. **Anatomy**: tissue probability maps (CSF, grey, white matter and non-brain head tissue) of
   one source template (SPM's avg152 priors, or nilearn's MNI152 2009 grey/white maps), moved
   by a strong random diffeomorphism (a smooth random velocity field integrated by scaling and
   squaring, MONAI ``DVF2DDF``) that changes the shape of the brain, not just its pose.
2. **Two contrasts of that anatomy**: each image is either an MR-physics contrast (spin-echo or
   inversion-recovery signal equation with tissue T1/T2/PD jittered around literature values
   and a random protocol) or random per-tissue intensities, rendered with partial volume from
   the probabilities, then blurred, multiplied by a smooth bias field, gamma-corrected and
   given noise. The fixed image is T1-weighted with probability ``p_fixed_t1``.
3. **Motion**: the moving image (and its labels) is moved by the random affine + elastic
   transform of the template pairs (``bundle.data.deform``). The pair carries the motion as
   ``gt_ddf``, in the convention of the evaluation pairs (``Warp()(moving, gt_ddf)`` gives the
   unmoved image back), for the synthetic-supervision loss term (``loss#weights#displacement``).
4. **Skull stripping**: with probability ``p_skull_strip`` each image, independently, shows
   the brain only (its head tissue rendered black), so that pairs of a stripped and an
   unstripped image (a skull-stripped FLAIR against a whole-head T1) occur in training.
5. **Real images**: with probability ``p_real_image`` a pair is made of the source template's
   real MR images instead (:func:`source_images`: a real T1 as the fixed image; as the moving
   one, half the time a real image of any contrast of the source, else a rendered contrast),
   moved by the same new anatomy and degraded the same way. Rendered images alone leave a
   domain gap: a network trained on them alone finds the affine of rendered pairs to 1.8 mm
   but that of a real T1 against itself (moved) only to about 5 mm.
   With probability ``p_posterior_render`` a rendered moving image of such a pair is rendered
   from the real T1's own segmentation (:func:`source_posteriors`), so that its tissue
   boundaries are the fixed T1's; rendered from the population priors, they are not. (Training
   with it gained about 0.1 mm on both benchmark sets; the model card's probes trace the
   subject's stretched null pairs to its real appearance rather than to these boundaries.)
6. **Field of view**: with probability ``p_field_of_view`` an image covers less than the grid
   (a black slab at some faces), or, for the moving image, shows the streaks of a resliced
   scan (its edge values replicated outwards, then moved). Rendered pairs never end inside
   the grid otherwise, and evaluation pairs resampled with edge replication do.
7. **Aligned pairs**: with probability ``p_still`` nothing moves (and nothing is resampled), as
   for two contrasts of one session: otherwise every moving image is interpolated and moved,
   and a network learns no answer for the pair that needs none.

Everything runs in torch on the training grid (~0.2 s per 3D pair at 2 mm on one core) and is
seeded: item ``i`` of draw ``k`` of a :class:`SynthPairDataset` is always the same pair, and each
epoch draws new pairs. No file is written and the evaluation subject (SPM's
``single_subj_T1``) is never read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks import DVF2DDF, Warp
from monai.networks.layers import GaussianFilter
from scipy import ndimage
from torch.nn import functional as F

from ..resample import grid_world_points, sample_at_world
from .contrast import SEQUENCES, TISSUE_PARAMETERS_1P5T, TissueParameters, signal_equation
from .deform import MotionRange, compose_affine_ddf
from .templates import source_volumes
from .tissue_mixture import head_probability, tissue_posteriors

__all__ = ["TISSUES", "HEAD_TISSUE_RANGE", "source_anatomies", "source_images", "source_posteriors", "SynthPairGenerator", "SynthPairDataset"]

#: Channels of a source anatomy; label values are the channel index + 1 for the brain tissues.
TISSUES = ("csf", "grey", "white", "head")

#: Non-brain head tissue (scalp, fat, muscle, marrow) at 1.5 T: drawn between fat and muscle.
HEAD_TISSUE_RANGE = (TissueParameters(t1_ms=350.0, t2_ms=70.0, pd=1.0), TissueParameters(t1_ms=900.0, t2_ms=47.0, pd=0.8))


def _mni152_on(affine: np.ndarray, shape: Sequence[int]) -> dict[str, np.ndarray]:
    """nilearn's MNI152 2009 T1, grey and white maps resampled onto a RAS grid (linear)."""
    from .templates import load_mni152

    mni = load_mni152(2)
    stack = torch.from_numpy(np.stack([np.asarray(getattr(mni, k), dtype=np.float32) for k in ("t1", "grey", "white")]))
    out = sample_at_world(stack, mni.affine, grid_world_points(affine, shape), padding_mode="zeros").numpy()
    return dict(zip(("t1", "grey", "white"), out))


@functools.lru_cache(maxsize=4)
def source_anatomies(spacing_mm: float = 2.0) -> tuple[np.ndarray, ...]:
    """Tissue probability stacks ``(4, X, Y, Z)`` (:data:`TISSUES`) of every source template.

    SPM avg152 (OldSeg priors; head tissue from the T1 template outside the brain) and, when
    nilearn is installed, MNI152 2009 (grey/white maps; CSF fills the rest of the brain mask;
    skull-stripped, so no head tissue), on the RAS grid of ``source_volumes(spacing_mm)``.
    """
    volumes, affine = source_volumes(float(spacing_mm))
    brain = np.clip(volumes["csf"] + volumes["grey"] + volumes["white"], 0.0, 1.0)
    spm = np.stack([volumes["csf"], volumes["grey"], volumes["white"], head_probability(volumes["t1"], brain, 0.15)])
    anatomies = [spm.astype(np.float32)]
    try:
        mni = _mni152_on(affine, volumes["t1"].shape)
    except ImportError:
        return tuple(anatomies)
    mask = ndimage.gaussian_filter((mni["t1"] > 0.05).astype(np.float32), 0.7)
    csf = np.clip(mask - mni["grey"] - mni["white"], 0.0, 1.0)
    anatomies.append(np.stack([csf, mni["grey"], mni["white"], np.zeros_like(csf)]).astype(np.float32))
    return tuple(anatomies)


@functools.lru_cache(maxsize=4)
def source_images(spacing_mm: float = 2.0) -> tuple[dict[str, np.ndarray], ...]:
    """The real MR images of each :func:`source_anatomies` entry, same order and grid, keyed by contrast.

    SPM avg152 gives ``t1``, ``t2`` and ``pd`` (one grid, real paired contrasts); nilearn's
    MNI152 2009 gives ``t1`` (skull-stripped). Real images carry what rendering from tissue
    maps lacks (smooth template intensities, texture, the head around the brain).
    """
    volumes, affine = source_volumes(float(spacing_mm))
    images = [{k: np.asarray(volumes[k], dtype=np.float32) for k in ("t1", "t2", "pd")}]
    try:
        mni = _mni152_on(affine, volumes["t1"].shape)
    except ImportError:
        return tuple(images)
    images.append({"t1": np.clip(mni["t1"], 0.0, 1.0).astype(np.float32)})
    return tuple(images)


@functools.lru_cache(maxsize=4)
def source_posteriors(spacing_mm: float = 2.0) -> tuple[np.ndarray, ...]:
    """Tissue stacks ``(4, X, Y, Z)`` (:data:`TISSUES`) segmented from each source's real T1
    (:func:`source_images`), same order and grid as :func:`source_anatomies`.

    CSF, grey and white are the posteriors of a three-class mixture of the T1 intensities inside
    the source's brain (its maps summing to at least 0.5, eroded by one voxel, where the T1 is
    above 0.05); the head tissue, where the source has any, is the bright T1 outside it
    (:mod:`bundle.data.tissue_mixture`). Contrasts rendered from them have the real T1's tissue
    boundaries, which the smooth population priors of :func:`source_anatomies` lack.
    """
    anatomies, images = source_anatomies(float(spacing_mm)), source_images(float(spacing_mm))
    stacks = []
    for anatomy, real in zip(anatomies, images):
        t1 = real["t1"]
        brain = ndimage.binary_erosion(anatomy[:3].sum(axis=0) >= 0.5) & (t1 > 0.05)
        maps = tissue_posteriors(t1, brain)
        head = head_probability(t1, brain, 0.15) if anatomy[3].any() else np.zeros_like(t1)
        stacks.append(np.stack([maps["csf"], maps["grey"], maps["white"], head]).astype(np.float32))
    return tuple(stacks)


def _smooth_noise(gen: torch.Generator, channels: int, shape: Sequence[int], spacing_vox: float) -> torch.Tensor:
    """Gaussian noise on a coarse grid of ``spacing_vox`` voxels, upsampled (linear) to ``shape``."""
    coarse = [max(2, int(round(s / spacing_vox)) + 1) for s in shape]
    noise = torch.randn(1, channels, *coarse, generator=gen)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=tuple(shape), mode=mode, align_corners=True)


class SynthPairGenerator:
    """Render random registration pairs from :func:`source_anatomies` (see the module docstring).

    Args:
        spatial_dims: 3, or 2 for random axial slices (near the largest brain area) deformed in plane.
        spacing_mm: voxel size of the generated images.
        size_divisor: images are zero-padded to multiples of this.
        anatomy_velocity_mm: standard deviation of the anatomy-changing velocity field, mm.
        anatomy_spacing_mm: its smoothness (coarse grid spacing), mm.
        p_fixed_t1: probability that the fixed image is T1-weighted (else any contrast).
        p_random_intensity: probability that an image gets random per-tissue intensities
            instead of an MR-physics contrast.
        parameter_jitter: relative jitter of the tissue T1/T2/PD values.
        motion: ranges of the moving image's motion (:class:`bundle.data.deform.MotionRange`,
            the evaluation pairs' defaults when ``None``).
        max_blur_vox, max_bias, max_noise: ranges of blur sigma, log bias-field amplitude and
            noise standard deviation (fraction of the maximum intensity).
        p_skull_strip: probability that an image, independently of the other, shows the brain
            only (0 draws nothing, so the pairs of earlier versions stay bitwise the same).
        p_real_image: probability that a pair is made of the source's real images
            (:func:`source_images`) moved by the new anatomy instead of rendered ones (0 draws
            nothing, as above).
        p_field_of_view, max_field_of_view_cut: probability that an image, independently of the
            other, covers less than the grid: each face, with probability 1/2, loses a slab of up
            to ``max_field_of_view_cut`` of the extent (see :meth:`_field_of_view`; 0 draws nothing).
        p_still: probability of an aligned pair (no motion, the moving image not resampled, a zero
            ``gt_ddf``), as two contrasts of one session are; 0 draws nothing.
        p_posterior_render: probability that the rendered moving image of a real-image pair is
            rendered from the real T1's own segmentation (:func:`source_posteriors`) instead of the
            population priors, so that it shares the fixed T1's tissue boundaries (0 draws nothing).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        spacing_mm: float = 2.0,
        size_divisor: int = 16,
        anatomy_velocity_mm: float = 3.0,
        anatomy_spacing_mm: float = 24.0,
        p_fixed_t1: float = 0.7,
        p_random_intensity: float = 0.3,
        parameter_jitter: float = 0.2,
        motion: MotionRange | None = None,
        max_blur_vox: float = 1.0,
        max_bias: float = 0.3,
        max_noise: float = 0.04,
        p_skull_strip: float = 0.0,
        p_real_image: float = 0.0,
        p_field_of_view: float = 0.0,
        max_field_of_view_cut: float = 0.15,
        p_still: float = 0.0,
        p_posterior_render: float = 0.0,
    ):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.dims, self.spacing = spatial_dims, float(spacing_mm)
        self.size_divisor = int(size_divisor)
        self.velocity_vox = anatomy_velocity_mm / self.spacing
        self.velocity_spacing_vox = anatomy_spacing_mm / self.spacing
        self.p_fixed_t1, self.p_random = p_fixed_t1, p_random_intensity
        self.jitter = parameter_jitter
        self.motion = motion or MotionRange()
        self.max_blur, self.max_bias, self.max_noise = max_blur_vox, max_bias, max_noise
        self.p_skull_strip = float(p_skull_strip)
        if not 0.0 <= p_real_image <= 1.0:
            raise ValueError(f"p_real_image must be in [0, 1], got {p_real_image}")
        self.p_real = float(p_real_image)
        if not 0.0 <= p_field_of_view <= 1.0:
            raise ValueError(f"p_field_of_view must be in [0, 1], got {p_field_of_view}")
        if not 0.0 <= max_field_of_view_cut < 0.5:
            raise ValueError(f"max_field_of_view_cut must be in [0, 0.5) (a slab at each face), got {max_field_of_view_cut}")
        self.p_fov, self.max_fov_cut = float(p_field_of_view), float(max_field_of_view_cut)
        if not 0.0 <= p_still <= 1.0:
            raise ValueError(f"p_still must be in [0, 1], got {p_still}")
        self.p_still = float(p_still)
        if not 0.0 <= p_posterior_render <= 1.0:
            raise ValueError(f"p_posterior_render must be in [0, 1], got {p_posterior_render}")
        self.p_posterior = float(p_posterior_render) if self.p_real > 0 else 0.0
        self.integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")
        self.warp = Warp(mode="bilinear", padding_mode="zeros")
        self.warp_nearest = Warp(mode="nearest", padding_mode="zeros")
        self.warp_border = Warp(mode="bilinear", padding_mode="border")

    # -- anatomy ------------------------------------------------------------------------------
    def _anatomy(self, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """A padded ``(1, 4, *S)`` tissue probability stack with new anatomy; the source's real
        images (:func:`source_images`, ``(1, 1, *S)`` each) moved by the same field when
        ``p_real_image`` > 0 (else an empty dict); its real T1's tissue stack
        (:func:`source_posteriors`, ``(1, 4, *S)``) moved by it when ``p_posterior_render`` > 0 (else None)."""
        sources = source_anatomies(self.spacing)
        index = int(rng.integers(len(sources)))
        maps = torch.from_numpy(sources[index].copy())
        names: list[str] = []
        if self.p_real > 0:
            images = source_images(self.spacing)[index]
            names = sorted(images)
            maps = torch.cat([maps, torch.from_numpy(np.stack([images[k] for k in names]))])
        if self.p_posterior > 0:
            maps = torch.cat([maps, torch.from_numpy(source_posteriors(self.spacing)[index].copy())])
        if self.dims == 2:
            brain = maps[:3].sum(dim=(0, 1, 2))
            centre = int(torch.argmax(brain))
            z = int(np.clip(centre + rng.integers(-6, 7) * 2.0 / self.spacing, 0, maps.shape[-1] - 1))
            maps = maps[..., z]
        pad = []
        for s in reversed(maps.shape[1:]):
            extra = (-s) % self.size_divisor
            pad += [extra // 2, extra - extra // 2]
        maps = F.pad(maps[None], pad)
        # integrate at half resolution (the field is smooth), then upsample the displacement
        half = [s // 2 for s in maps.shape[2:]]
        velocity = (self.velocity_vox / 2.0) * _smooth_noise(gen, self.dims, half, self.velocity_spacing_vox / 2.0)
        mode = "bilinear" if self.dims == 2 else "trilinear"
        ddf = 2.0 * F.interpolate(self.integrate(velocity), size=tuple(maps.shape[2:]), mode=mode, align_corners=True)
        maps = self.warp(maps, ddf).clamp(0.0, 1.0)
        real = {k: maps[:, len(TISSUES) + i : len(TISSUES) + i + 1] for i, k in enumerate(names)}
        posteriors = maps[:, len(TISSUES) + len(names) :] if self.p_posterior > 0 else None
        return maps[:, : len(TISSUES)], real, posteriors

    # -- contrast -----------------------------------------------------------------------------
    def _tissue_intensities(self, rng: np.random.Generator, t1_weighted: bool) -> np.ndarray:
        """Signal of each tissue of :data:`TISSUES` for one random contrast."""
        if not t1_weighted and rng.random() < self.p_random:
            return rng.uniform(0.0, 1.0, size=len(TISSUES))
        kind = "t1" if t1_weighted else str(rng.choice(["t2", "pd", "flair", "t1"]))
        seq = SEQUENCES[kind]
        tr, te = seq.tr_ms * rng.uniform(0.8, 1.25), seq.te_ms * rng.uniform(0.8, 1.25)
        ti = None if seq.ti_ms is None else seq.ti_ms * rng.uniform(0.9, 1.1)
        fat, muscle = HEAD_TISSUE_RANGE
        w = rng.uniform()
        head = TissueParameters(*(a + w * (b - a) for a, b in zip(fat, muscle)))
        params = [TISSUE_PARAMETERS_1P5T[t] for t in TISSUES[:3]] + [head]
        signal = []
        for t1, t2, pd in params:
            t1, t2, pd = np.array([t1, t2, pd]) * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, size=3)
            signal.append(float(signal_equation(pd, t1, t2, tr, te, ti)))
        signal = np.asarray(signal)
        return signal / max(signal.max(), 1e-6)

    def _render(self, maps: torch.Tensor, intensities: np.ndarray, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        """Partial-volume image of ``maps`` with blur, bias field, gamma and noise, in [0, 1]."""
        mu = torch.as_tensor(intensities, dtype=maps.dtype).view(1, -1, *([1] * self.dims))
        total = maps.sum(dim=1, keepdim=True)
        img = (maps * mu).sum(dim=1, keepdim=True) / total.clamp(min=1.0)  # overlapping maps renormalised
        return self._degrade(img, rng, gen)

    def _degrade(self, img: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        """``img`` ``(1, 1, *S)`` with random blur, bias field, gamma and noise, in [0, 1]."""
        sigma = float(rng.uniform(0.0, self.max_blur))
        if sigma > 0.1:
            img = GaussianFilter(self.dims, sigma)(img)
        bias = float(rng.uniform(0.0, self.max_bias))
        img = img * torch.exp(bias * _smooth_noise(gen, 1, img.shape[2:], 64.0 / self.spacing))
        img = img / img.amax().clamp(min=1e-6)
        img = img.clamp(min=0.0) ** float(np.exp(rng.normal(0.0, 0.25)))
        img = img + float(rng.uniform(0.0, self.max_noise)) * torch.randn(img.shape, generator=gen)
        return img.clamp(0.0, 1.0)

    # -- motion -------------------------------------------------------------------------------
    def _motion(self, rng: np.random.Generator, shape: Sequence[int]) -> torch.Tensor:
        """``(1, dims, *S)`` random affine + elastic DDF (voxels) that moves the moving image."""
        matrix, elastic = self.motion.sample(rng, shape, self.spacing)
        return torch.from_numpy(np.asarray(compose_affine_ddf(matrix, elastic), dtype=np.float32))[None]

    def _inverse(self, ddf: torch.Tensor, iterations: int = 20) -> torch.Tensor:
        """``u`` with ``u(x) = -ddf(x + u(x))`` (fixed-point iteration): the field that undoes ``ddf``.

        ``moving(y) = image(y + ddf(y))``, so ``moving(x + u(x)) = image(x)``: ``u`` is the
        ground-truth answer of the registration, as ``gt_ddf`` of the evaluation pairs.
        """
        u = -ddf
        for _ in range(iterations):
            u = -self.warp_border(ddf, u)
        return u

    def _real(self, images: dict[str, torch.Tensor], maps: torch.Tensor, kind: str, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        """The real ``kind`` image of the anatomy, skull-stripped with probability ``p_skull_strip``, degraded."""
        img = images[kind]
        if self.p_skull_strip > 0 and rng.random() < self.p_skull_strip:
            img = img * (maps[:, :3].sum(dim=1, keepdim=True) >= 0.5)
        return self._degrade(img, rng, gen)

    def _images(
        self, maps: torch.Tensor, images: dict[str, torch.Tensor], posteriors: torch.Tensor | None, rng: np.random.Generator, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fixed, moving)`` of the anatomy: rendered from the tissue maps, or, with probability
        ``p_real_image``, a real T1 as the fixed image and, half the time, a real image of a random
        contrast of the source as the moving one (else a contrast rendered from the tissue maps or,
        with probability ``p_posterior_render``, from the real T1's ``posteriors``)."""
        if images and rng.random() < self.p_real:
            fixed = self._real(images, maps, "t1", rng, gen)
            if rng.random() < 0.5:
                moving = self._real(images, maps, str(rng.choice(sorted(images))), rng, gen)
            else:
                use_posteriors = posteriors is not None and rng.random() < self.p_posterior
                moving = self._render(posteriors if use_posteriors else maps, self._strip(self._tissue_intensities(rng, False), rng), rng, gen)
            return fixed, moving
        fixed = self._render(maps, self._strip(self._tissue_intensities(rng, rng.random() < self.p_fixed_t1), rng), rng, gen)
        moving = self._render(maps, self._strip(self._tissue_intensities(rng, False), rng), rng, gen)
        return fixed, moving

    def _field_of_view(self, img: torch.Tensor, rng: np.random.Generator, resliced: bool) -> torch.Tensor:
        """``img`` ``(1, 1, *S)`` seen through a smaller field of view, with probability ``p_field_of_view``.

        Scans differ in coverage: outside a random box the fixed image is black. The moving image
        is resampled by the motion afterwards, so half the time its box's faces are extended
        outwards instead (edge replication, the streaks that a resliced scan shows where it was
        sampled beyond its own field of view, as ``mode="nearest"`` resampling gives).
        """
        if not self.p_fov or rng.random() >= self.p_fov:
            return img
        size = img.shape[2:]
        lo = [int(rng.random() < 0.5) * int(rng.uniform(0.0, self.max_fov_cut) * s) for s in size]
        hi = [s - int(rng.random() < 0.5) * int(rng.uniform(0.0, self.max_fov_cut) * s) for s in size]
        if resliced and rng.random() < 0.5:
            for axis, (a, b) in enumerate(zip(lo, hi)):
                index = torch.arange(size[axis]).clamp(a, b - 1)
                img = img.index_select(2 + axis, index)
            return img
        box = torch.zeros_like(img, dtype=torch.bool)
        box[(..., *[slice(a, b) for a, b in zip(lo, hi)])] = True
        return img * box

    def _strip(self, intensities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``intensities`` with the head tissue black with probability ``p_skull_strip``."""
        if self.p_skull_strip > 0 and rng.random() < self.p_skull_strip:
            intensities = np.array(intensities, dtype=np.float64)
            intensities[TISSUES.index("head")] = 0.0
        return intensities

    def __call__(self, seed: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """The pair of ``seed``: ``fixed``, ``moving``, ``fixed_label``, ``moving_label`` as ``(1, *S)``
        and ``gt_ddf`` ``(dims, *S)`` (voxels, see :meth:`_inverse`).

        Labels are 0 background (and head tissue), 1 CSF, 2 grey, 3 white matter: the most
        probable brain tissue where the brain probability is at least 0.5.
        """
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad():
            maps, images, posteriors = self._anatomy(rng, gen)
            fixed, moving = self._images(maps, images, posteriors, rng, gen)
            fixed, moving = self._field_of_view(fixed, rng, False), self._field_of_view(moving, rng, True)
            brain = maps[:, :3]
            label = (brain.argmax(dim=1, keepdim=True) + 1).float()
            label[brain.sum(dim=1, keepdim=True) < 0.5] = 0
            if self.p_still and rng.random() < self.p_still:  # an aligned pair: nothing moved, nothing resampled
                return {"fixed": fixed[0], "moving": moving[0], "fixed_label": label[0], "moving_label": label[0].clone(),
                        "gt_ddf": torch.zeros(self.dims, *maps.shape[2:])}
            ddf = self._motion(rng, maps.shape[2:])
            moving = self.warp(moving, ddf).clamp(0.0, 1.0)
            moving_label = self.warp_nearest(label, ddf)
            gt_ddf = self._inverse(ddf)
        return {"fixed": fixed[0], "moving": moving[0], "fixed_label": label[0], "moving_label": moving_label[0], "gt_ddf": gt_ddf[0]}


class SynthPairDataset(torch.utils.data.Dataset):
    """``length`` synthesised pairs per epoch, new ones each epoch, reproducible from ``seed``.

    Item ``i`` on its ``k``-th request is ``generator((seed, i, k))``; with the same seed and
    the same sequence of requests (as a seeded training run makes) the data are identical.
    In a ``DataLoader`` worker the request counts live in the worker's copy and restart with
    every epoch's workers, so there the worker's seed (new each epoch, drawn from the main
    process's seeded generator) joins the key: ``generator((seed, i, k, worker_seed))``.
    Keyword arguments go to :class:`SynthPairGenerator`.
    """

    def __init__(self, length: int = 32, seed: int = 0, **generator_kwargs):
        self.length, self.seed = int(length), int(seed)
        self.generator = SynthPairGenerator(**generator_kwargs)
        self._draws = [0] * self.length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        draw = self._draws[index]
        self._draws[index] += 1
        worker = torch.utils.data.get_worker_info()
        key = (self.seed, int(index), draw) if worker is None else (self.seed, int(index), draw, int(worker.seed))
        return self.generator(key)
