"""Register a moving image to a fixed image from files, writing results in the fixed image's space.

The network works on an axis-aligned RAS grid at its training voxel size; everything it
produces is mapped back to the user's original fixed grid in physical coordinates:

* ``warped_moving.nii.gz``: the original moving image resampled once through the composed field;
* ``ddf_mm.nii.gz``: the displacement in mm (ITK/ANTs vector image, LPS components);
* ``affine.tfm``: the affine stage as an ITK ``AffineTransform`` (fixed -> moving points);
* ``transform.h5``: the whole map as one ITK ``CompositeTransform`` (affine and displacement field);
* ``ddf_inverse_mm.nii.gz`` and ``transform_inverse.h5``: the inverse map (moving -> fixed points) on
  the moving image's grid, ``exp(-v)`` after the inverse affine, so inverse by construction;
* ``jacobian.nii.gz``: the Jacobian determinant of the composed map;
* ``warped_moving_label.nii.gz`` when a moving label is given;
* ``metrics.json``: timings, folding, inverse consistency and (with labels) Dice.

Outputs are written to a hidden staging folder and moved into place only when all of them
exist, so a failure leaves no partial result.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoints import load_network_weights
from .cli import as_bool
from .data.datalist import read_datalist
from .data.validation import check_label_grid, load_checked_image, load_checked_label
from .fields import apply_affine, inverse_consistency_mm, invert_displacement, jacobian_determinant, ras_to_lps, theta_on_coarser_grid, theta_to_world
from .initialise import centre_of_mass_translation, check_network_grid, check_network_size, check_overlap
from .io import in_parallel, save_displacement, save_displacement_mm, save_image, save_itk_affine, staged_output_dir
from .itk_transforms import affine_step, field_step, save_composite_transform
from .keypoints import network_keypoints, write_keypoints
from .metrics import dice_per_label
from .networks.bundle_net import structured_forward
from .networks.deformable_head import field_to_ddf
from .resample import grid_world_points, label_dtype, ras_grid_for, sample_at_world, sample_labels_at_world, spatial_affine

__all__ = ["OUTPUT_FILES", "PairRegistrar", "default_intensity_scaling"]

logger = logging.getLogger(__name__)

OUTPUT_FILES = (
    "warped_moving.nii.gz", "ddf_mm.nii.gz", "ddf_inverse_mm.nii.gz", "affine.tfm", "transform.h5", "transform_inverse.h5",
    "jacobian.nii.gz", "metrics.json", "keypoints.csv",
)


STAGES = ("full", "affine")


def check_stage(stage: str) -> str:
    """``stage`` if it names what a registration can return (:data:`STAGES`), else a ``ValueError``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 'full' or 'affine', got {stage!r}")
    return stage


def default_intensity_scaling():
    """``configs/common.json``'s ``intensity_scaling``: the 0.5-99.5 percentile range to [0, 1], clipped."""
    from bundle.transforms import ScaleIntensityRangePercentilesOrMinMax

    return ScaleIntensityRangePercentilesOrMinMax(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)


class PairRegistrar:
    """Run a trained network on image files and write results in the fixed image's space.

    Args:
        network: a :class:`bundle.networks.RegistrationBundleNet`.
        checkpoint: weights file (``models/model.pt``); ``None`` keeps the current weights.
        device: torch device.
        spacing_mm: voxel size of the network grid (the training voxel size).
        size_divisor: network grid sizes are padded to multiples of this.
        overwrite: replace results already in an output folder instead of refusing.
        initialise: align the intensity centres of mass in physical space before the network
            (:mod:`bundle.initialise`); off, a pair whose extents do not overlap is refused.
        refiner: a :class:`bundle.refine.InstanceRefiner` run after the network (``None``, or
            one with ``enabled=False``: the network's result as it is).
        intensity: the intensity transform of training's preprocessing (``configs/common.json``
            ``intensity_scaling``), applied to each original image before it is resampled;
            default: :func:`default_intensity_scaling`.
        refine_upsample: the refinement runs on the network grid made this many times finer per
            axis (same cell extent and centre, so the network's affine and velocity carry over
            exactly); ``"auto"``: the network voxel size over the fixed image's smallest one,
            rounded, so that data finer than the network grid are refined at their own resolution.
        max_refine_upsample: the bound on ``"auto"`` (the finest grid costs ``k ** dims`` times more).
        stage: what is registered and written: ``"full"`` (affine then deformable) or ``"affine"``
            (the affine stage alone; its refinement skips the velocity stage).
    """

    def __init__(
        self, network, checkpoint=None, device="cpu", spacing_mm: float = 2.0, size_divisor: int = 16, overwrite: bool = False,
        initialise: bool = True, refiner=None, intensity=None, refine_upsample: int | str = 1, max_refine_upsample: int = 2,
        stage: str = "full",
    ):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.checkpoint = checkpoint
        self._weights_loaded = checkpoint is None
        self.dims = network.spatial_dims
        self.spacing_mm = float(spacing_mm)
        self.size_divisor = int(size_divisor)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.initialise = as_bool(initialise, "initialise")
        self.refiner = refiner
        self.intensity = intensity if intensity is not None else default_intensity_scaling()
        if refine_upsample != "auto" and (isinstance(refine_upsample, bool) or int(refine_upsample) < 1):
            raise ValueError(f"refine_upsample must be 'auto' or an integer >= 1, got {refine_upsample!r}")
        self.refine_upsample = refine_upsample if refine_upsample == "auto" else int(refine_upsample)
        self.max_refine_upsample = max(1, int(max_refine_upsample))
        self.stage = check_stage(stage)

    def load_weights(self) -> None:
        """Load ``checkpoint`` once (lazily, so that a bad checkpoint is a user error, not a config error)."""
        if not self._weights_loaded:
            load_network_weights(self.network, self.checkpoint, map_location=self.device)
            self._weights_loaded = True

    # -- pieces -----------------------------------------------------------------------------
    def _load(self, path):
        array, affine = load_checked_image(path, expected_dims=self.dims)
        return array.astype(np.float32), spatial_affine(affine, self.dims), affine

    def scale_intensity(self, array: np.ndarray) -> torch.Tensor:
        """``(1, *S)`` tensor of ``array`` through :attr:`intensity` (the config's ``intensity_scaling``)."""
        from monai.utils import convert_to_tensor

        return convert_to_tensor(self.intensity(torch.from_numpy(np.asarray(array, dtype=np.float32))[None]), track_meta=False)

    def _to_network_grid(self, array, affine, net_affine, net_shape, shift_mm=None) -> torch.Tensor:
        img = self.scale_intensity(array)
        pts = grid_world_points(net_affine, net_shape)
        if shift_mm is not None:
            pts += torch.as_tensor(shift_mm, dtype=pts.dtype).reshape(-1, *([1] * len(net_shape)))
        return sample_at_world(img, affine, pts, padding_mode="zeros")

    def initial_translation(self, fixed, fixed_affine, moving, moving_affine, names=("fixed", "moving")) -> np.ndarray:
        """The initialisation's world translation (RAS mm, fixed -> moving points); zero when off.

        Raises:
            ValueError: initialisation off and the images' physical extents do not overlap.
        """
        if self.initialise:
            return centre_of_mass_translation(fixed, fixed_affine, moving, moving_affine)
        check_overlap(fixed_affine, fixed.shape, moving_affine, moving.shape, names)
        return np.zeros(fixed.ndim)

    def to_network_grid(self, fixed, fixed_affine, moving, moving_affine, shift_mm=None):
        """Both images normalised to [0, 1] on the network's RAS grid covering the fixed image.

        The moving image is sampled at the grid's points moved by ``shift_mm`` (the initialisation).

        Returns:
            ``(moving, fixed, net_affine, net_shape)``; images are ``(1, 1, *net_shape)`` tensors
            and ``net_affine`` is the grid's spatial voxel-to-world affine.
        """
        net_affine, net_shape = ras_grid_for(fixed_affine, fixed.shape, self.spacing_mm, self.size_divisor)
        f = self._to_network_grid(fixed, fixed_affine, net_affine, net_shape)
        m = self._to_network_grid(moving, moving_affine, net_affine, net_shape, shift_mm)
        return m[None], f[None], net_affine, net_shape

    def refinement_factor(self, fixed_affine: np.ndarray) -> int:
        """How many times finer than the network grid the refinement runs (see ``refine_upsample``)."""
        if self.refine_upsample != "auto":
            return self.refine_upsample
        d = self.dims
        finest = float(np.min(np.linalg.norm(np.asarray(fixed_affine, dtype=np.float64)[:d, :d], axis=0)))
        return int(np.clip(round(self.spacing_mm / finest), 1, self.max_refine_upsample))

    def refinement_grid(self, fixed, fixed_affine, moving, moving_affine, shift_mm, net_affine, net_shape, factor: int):
        """Both images on the network grid ``factor`` times finer: the same cells, split ``factor`` ways.

        Returns ``(moving, fixed, grid_affine, grid_shape)`` as :meth:`to_network_grid`.
        """
        d = self.dims
        grid_affine = np.array(net_affine, dtype=np.float64)
        grid_affine[:d, :d] /= factor
        grid_affine[:d, d] -= net_affine[:d, :d] @ np.full(d, (factor - 1) / (2.0 * factor))
        grid_shape = tuple(int(n) * factor for n in net_shape)
        f = self._to_network_grid(fixed, fixed_affine, grid_affine, grid_shape)
        m = self._to_network_grid(moving, moving_affine, grid_affine, grid_shape, shift_mm)
        return m[None], f[None], grid_affine, grid_shape

    def load_pair(self, fixed_path, moving_path):
        """Load and validate two files; returns ``(fixed, fixed_affine, fixed_affine4, moving, moving_affine)``."""
        fixed, fixed_aff, fixed_aff4 = self._load(fixed_path)
        moving, moving_aff, _ = self._load(moving_path)
        return fixed, fixed_aff, fixed_aff4, moving, moving_aff

    def register_arrays(
        self, fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray, stage: str | None = None,
        refine: bool | None = None, network: bool = True, names: tuple[str, str] = ("fixed", "moving"), inverse: bool = False,
        keypoints: bool = False,
    ) -> dict:
        """Register arrays with spatial affines; returns fields on the fixed grid (numpy).

        Args:
            fixed, moving: spatial-first arrays.
            fixed_affine, moving_affine: their spatial affines (see ``resample.spatial_affine``).
            stage: ``"full"`` (affine then deformable) or ``"affine"`` (affine stage only); default :attr:`stage`.
            refine: run the refiner (default: when one is configured and enabled).
            network: start the refinement from the network's prediction; ``False`` starts it
                from the identity (measures what the network contributes).
            names: how errors name the two images.
            inverse: also return the inverse map (see :meth:`inverse_fields`).
            keypoints: also return the keypoint head's points (a second, cheap pass of that head).

        Returns:
            dict with ``ddf_mm`` (dims, *fixed.shape) RAS mm, ``ddf_voxel`` (fixed voxels),
            ``warped``, ``theta``, ``affine_world`` (the affine stage as a RAS world matrix,
            initialisation included), ``initial_translation_mm``, ``refinement`` (per-stage stats),
            ``net_affine``, ``net_shape``, ``seconds`` per stage; with ``inverse``, also
            ``ddf_inverse_mm`` and ``inverse_deformable_mm``; with ``keypoints`` and a keypoint
            affine head, ``keypoints`` (:func:`bundle.keypoints.network_keypoints`).
        """
        stage = self.stage if stage is None else check_stage(stage)
        t0 = time.perf_counter()
        self.load_weights()
        check_network_size(fixed.shape, fixed_affine, self.spacing_mm, self.size_divisor, names[0])
        check_network_size(moving.shape, moving_affine, self.spacing_mm, self.size_divisor, names[1])
        t_init = self.initial_translation(fixed, fixed_affine, moving, moving_affine, names)
        m, f, net_affine, net_shape = self.to_network_grid(fixed, fixed_affine, moving, moving_affine, t_init)
        check_network_grid(net_shape, self.size_divisor, names[0])
        m, f = m.to(self.device), f.to(self.device)
        refiner = self.refiner
        if refine and refiner is None:
            raise ValueError("refine=True needs a refiner")
        refining = refiner is not None and refiner.enabled and (refine is None or bool(refine))
        t1 = time.perf_counter()
        synthesis = refining and refiner.needs_synthesis
        with torch.no_grad():
            if refining and not synthesis and hasattr(self.network, "affine_and_velocity"):
                # what the refinement starts from, nothing composed or warped
                (theta_net, velocity_net), synth_net = self.network.affine_and_velocity(m, f), None
            else:
                out = structured_forward(self.network, m, f, bidirectional=False, synthesis=synthesis).forward
                theta_net, velocity_net, synth_net = out.theta, out.velocity, out.synth
        points = network_keypoints(self.network, m, f, net_affine, t_init) if keypoints else None
        t2 = time.perf_counter()
        stats: dict = {}
        if refining:
            theta0, velocity0 = theta_net, velocity_net
            identity = torch.cat([torch.eye(self.dims), torch.zeros(self.dims, 1)], 1)[None].to(theta_net)
            if not network:
                theta0, velocity0 = identity, torch.zeros_like(velocity_net)
            starts = [identity] if network and refiner.multistart else []
            k = self.refinement_factor(fixed_affine)
            grid_affine, synth, m_net, f_net = net_affine, synth_net, m, f
            if k > 1:  # finer data: refine at their resolution; theta's translation is in the grid's voxels
                m, f, grid_affine, grid_shape = self.refinement_grid(fixed, fixed_affine, moving, moving_affine, t_init, net_affine, net_shape, k)
                m, f = m.to(self.device), f.to(self.device)
                theta0 = torch.cat([theta0[:, :, : self.dims], theta0[:, :, self.dims :] * k], 2)
                if synth is not None:
                    synth = torch.nn.functional.interpolate(synth, size=grid_shape, mode="bilinear" if self.dims == 2 else "trilinear", align_corners=False)
            predict = self._velocity_predictor(m_net, f_net, k) if network else None
            res = refiner.refine(m, f, theta0, velocity0, self.network.deformable_head.integrate, synth, starts, predict, deformable=stage == "full")
            ddf_vox, theta, stats, velocity = (res.ddf if stage == "full" else res.ddf_affine), res.theta, res.stats, res.velocity
            theta = theta_on_coarser_grid(theta, k)  # back to network-grid voxels
            stats = {**stats, "upsample": k} if k > 1 else stats
        else:
            grid_affine = net_affine
            ddf_vox, theta, velocity = (out.ddf if stage == "full" else out.ddf_affine), theta_net, velocity_net
        ddf_vox = ddf_vox[0].cpu().double()
        theta = theta[0].cpu().double().numpy()
        affine_world = theta_to_world(theta, net_affine, net_shape, t_init)
        t3 = time.perf_counter()
        d = self.dims
        # float32 from here: mm coordinates keep ~1e-5 mm precision, at half the time and memory of float64
        ddf_mm_net = torch.einsum("ij,j...->i...", torch.as_tensor(grid_affine[:d, :d], dtype=torch.float32), ddf_vox.float())
        ddf_mm_net += torch.as_tensor(t_init, dtype=torch.float32).reshape(d, *([1] * d))  # zero without initialisation
        fixed_pts = grid_world_points(fixed_affine, fixed.shape)
        ddf_mm = sample_at_world(ddf_mm_net, grid_affine, fixed_pts, padding_mode="border")
        lo, hi = float(moving.min()), float(moving.max())
        warped = sample_at_world(torch.from_numpy(moving)[None], moving_affine, fixed_pts.add_(ddf_mm), padding_mode="zeros")[0]
        inv = torch.as_tensor(np.linalg.inv(fixed_affine[:d, :d]), dtype=torch.float32)
        ddf_voxel = torch.einsum("ij,j...->i...", inv, ddf_mm)
        t4 = time.perf_counter()
        seconds = {"preprocess": t1 - t0, "network": t2 - t1, "refine": t3 - t2, "resample": t4 - t3}
        extra = {}
        if inverse:
            deformable = velocity if stage == "full" else None
            extra = self.inverse_fields(deformable, affine_world, net_affine, net_shape, fixed_affine, fixed.shape, moving_affine, moving.shape)
            seconds["inverse"] = time.perf_counter() - t4
        if points is not None:
            extra["keypoints"] = points
        return {
            **extra,
            "affine_world": affine_world,
            "ddf_mm": ddf_mm.numpy(),
            "ddf_voxel": ddf_voxel.numpy(),
            "warped": warped.clamp(lo, hi).numpy(),
            "theta": theta,
            "initial_translation_mm": t_init,
            "refinement": stats,
            "net_affine": net_affine,
            "net_shape": net_shape,
            "seconds": seconds,
        }

    def _velocity_predictor(self, moving: torch.Tensor, fixed: torch.Tensor, k: int):
        """``theta -> velocity``: the network's deformable field behind an affine given on a grid ``k``
        times finer than the network grid ``moving``/``fixed`` (translation in that grid's voxels)."""

        def predict(theta: torch.Tensor) -> torch.Tensor:
            return self.network.deformable_field(moving, fixed, theta_on_coarser_grid(theta, k).to(moving.dtype))

        return predict

    def inverse_fields(self, velocity, affine_world, net_affine, net_shape, fixed_affine, fixed_shape, moving_affine, moving_shape) -> dict:
        """The inverse map ``phi^-1 = psi^-1 o A^-1`` (moving points -> fixed points).

        ``psi^-1`` is the deformable head's field integrated with the opposite sign
        (``exp(-v)``: the inverse by construction, up to integration error), or, for a head
        that does not integrate, the fixed-point inverse of its displacement.

        Args:
            velocity: the final deformable field at the head's level, ``(1, dims, *s)``;
                ``None`` for the affine stage alone.
            affine_world: the affine stage, ``(dims + 1)^2`` RAS (fixed -> moving points).

        Returns:
            ``ddf_inverse_mm``: ``(dims, *moving_shape)`` RAS mm on the moving grid;
            ``inverse_deformable_mm``: ``psi^-1 - id`` ``(dims, *fixed_shape)`` on the fixed grid.
        """
        d = self.dims
        if velocity is None:
            u_net = torch.zeros(d, *net_shape)
        else:
            with torch.no_grad():
                integrate = self.network.deformable_head.integrate
                if integrate is not None:
                    ddf = field_to_ddf(-velocity, net_shape, integrate)
                else:
                    ddf = invert_displacement(field_to_ddf(velocity, net_shape))
            lin = torch.as_tensor(net_affine[:d, :d], dtype=torch.float32)
            u_net = torch.einsum("ij,j...->i...", lin, ddf[0].cpu().float())
        y = grid_world_points(moving_affine, moving_shape)
        z = apply_affine(np.linalg.inv(affine_world), y)
        ddf_inverse = z + sample_at_world(u_net, net_affine, z, padding_mode="border") - y
        on_fixed = sample_at_world(u_net, net_affine, grid_world_points(fixed_affine, fixed_shape), padding_mode="border")
        return {"ddf_inverse_mm": ddf_inverse.numpy(), "inverse_deformable_mm": on_fixed.numpy()}

    # -- files ------------------------------------------------------------------------------
    def _check_output_dir(self, output_dir: Path) -> None:
        existing = [n for n in OUTPUT_FILES if (output_dir / n).exists()]
        if existing and not self.overwrite:
            raise FileExistsError(f"{output_dir}: already holds results ({existing[0]}); pass overwrite=True (--overwrite true) to replace them")

    def _save_transforms(self, stage: Path, res: dict, fixed_aff: np.ndarray, fixed_shape) -> None:
        """``affine.tfm``, ``transform.h5`` (``A o psi``) and ``transform_inverse.h5`` (``psi^-1 o A^-1``)."""
        a = res["affine_world"]
        lps = ras_to_lps(a)
        d = self.dims
        save_itk_affine(stage / "affine.tfm", lps[:d, :d], lps[:d, d])
        x = grid_world_points(fixed_aff, fixed_shape)
        deformable = apply_affine(np.linalg.inv(a), x + torch.from_numpy(res["ddf_mm"])) - x  # psi - id, exact on the grid
        save_composite_transform(stage / "transform.h5", [field_step(deformable.numpy(), fixed_aff), affine_step(a)])
        inverse = [affine_step(np.linalg.inv(a)), field_step(res["inverse_deformable_mm"], fixed_aff)]
        save_composite_transform(stage / "transform_inverse.h5", inverse)

    def register_files(self, fixed_path, moving_path, output_dir, fixed_label=None, moving_label=None) -> dict:
        """Register two image files and write every output to ``output_dir``; returns the metrics."""
        output_dir = Path(output_dir)
        self._check_output_dir(output_dir)
        t0 = time.perf_counter()
        fixed, fixed_aff, fixed_aff4 = self._load(fixed_path)
        moving, moving_aff, moving_aff4 = self._load(moving_path)
        for img, lab in ((fixed_path, fixed_label), (moving_path, moving_label)):
            if lab is not None:
                check_label_grid(img, lab)
        t_load = time.perf_counter() - t0
        res = self.register_arrays(fixed, fixed_aff, moving, moving_aff, names=(str(fixed_path), str(moving_path)), inverse=True, keypoints=True)
        t1 = time.perf_counter()
        det = jacobian_determinant(torch.from_numpy(res["ddf_voxel"])[None])[0, 0].numpy()
        consistency = inverse_consistency_mm(
            torch.from_numpy(res["ddf_mm"]), fixed_aff, torch.from_numpy(res["ddf_inverse_mm"]), moving_aff, self.scale_intensity(fixed)[0] > 0.1
        )
        metrics = {
            "fixed": str(fixed_path),
            "moving": str(moving_path),
            "folding_percent": float(100.0 * np.mean(det <= 0)),  # same as metrics.folding_percent, from det
            "jacobian_min": float(det.min()),
            "theta": res["theta"].tolist(),
            "initial_translation_mm": [float(v) for v in res["initial_translation_mm"]],
            "refinement": res["refinement"],
            "inverse_consistency_mm": consistency,
            "seconds": {"load": t_load, **res["seconds"], "jacobian_and_inverse_check": time.perf_counter() - t1},
        }
        with staged_output_dir(output_dir) as stage:
            t1 = time.perf_counter()
            in_parallel(  # gzip releases the GIL: the volumes compress side by side
                lambda: save_image(stage / "warped_moving.nii.gz", res["warped"], fixed_aff4),
                lambda: save_displacement(stage / "ddf_mm.nii.gz", res["ddf_voxel"], fixed_aff4),
                lambda: save_displacement_mm(stage / "ddf_inverse_mm.nii.gz", res["ddf_inverse_mm"], moving_aff4),
                lambda: save_image(stage / "jacobian.nii.gz", det, fixed_aff4),
                lambda: self._save_transforms(stage, res, fixed_aff, fixed.shape),
            )
            if "keypoints" in res:
                write_keypoints(stage / "keypoints.csv", res["keypoints"])
                residual = res["keypoints"]["residual_mm"]
                metrics["keypoint_residual_mm"] = {"mean": float(np.mean(residual)), "max": float(np.max(residual))}
            if moving_label is not None:
                lab, _ = load_checked_label(moving_label, self.dims)
                pts = grid_world_points(fixed_aff, fixed.shape) + torch.from_numpy(res["ddf_mm"])
                warped_lab = sample_labels_at_world(lab, moving_aff, pts)
                save_image(stage / "warped_moving_label.nii.gz", warped_lab, fixed_aff4, dtype=label_dtype(warped_lab))
                if fixed_label is not None:
                    flab, _ = load_checked_label(fixed_label, self.dims)
                    labels = sorted(int(v) for v in np.unique(flab) if v != 0)
                    dice = dice_per_label(torch.from_numpy(warped_lab)[None, None], torch.from_numpy(flab)[None, None], labels)[0]
                    metrics["dice"] = {str(k): float(v) for k, v in zip(labels, dice)}
                    metrics["dice_mean"] = float(np.nanmean(dice.numpy()))
            metrics["seconds"]["write"] = time.perf_counter() - t1
            metrics["seconds"]["total"] = time.perf_counter() - t0
            with open(stage / "metrics.json", "w") as fh:
                json.dump(metrics, fh, indent=2)
        return metrics

    def run(
        self,
        fixed=None,
        moving=None,
        output_dir=None,
        datalist=None,
        section: str = "test",
        fixed_label=None,
        moving_label=None,
        rank: int = 0,
        world_size: int = 1,
    ) -> list[dict]:
        """Register one pair (``fixed``/``moving``) or every pair of a datalist section.

        With a datalist, the results of pair ``i`` go to ``output_dir/<i:04d>``; label keys
        ``fixed_label``/``moving_label`` are used when present. With ``world_size`` > 1 (one
        process per rank, ``configs/multi_gpu_inference.json``) this process registers only
        pairs ``rank, rank + world_size, ...`` (MONAI ``DistributedSampler`` order, uneven
        allowed): every pair is done by exactly one rank and keeps its index and output
        folder; a single ``fixed``/``moving`` pair is done by rank 0 only.
        """
        if output_dir is None:
            raise ValueError("output_dir is required")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.load_weights()
        if datalist:
            items = read_datalist(datalist, section)
            out = []
            for i in range(rank, len(items), world_size):  # strided share; all pairs when world_size == 1
                item = items[i]
                if world_size > 1:
                    logger.info(f"rank {rank}/{world_size}: pair {i:04d} ({item['moving']} -> {item['fixed']})")
                out.append(
                    self.register_files(
                        item["fixed"], item["moving"], Path(output_dir) / f"{i:04d}", item.get("fixed_label"), item.get("moving_label")
                    )
                )
            return out
        if fixed is None or moving is None:
            raise ValueError("give --fixed and --moving, or --datalist")
        if rank > 0:
            return []
        return [self.register_files(fixed, moving, output_dir, fixed_label, moving_label)]
