"""Explain the registration of image files: maps as NIfTI on the fixed grid, PNG overlays, a summary.

For each pair, in ``output_dir`` (written to a hidden staging folder first and moved into place
only when everything exists, like :meth:`bundle.inference.PairRegistrar.register_files`):

* ``gradcam_<stage>_<target>.nii.gz``: the raw map (float32, not normalised), resampled from
  the network grid onto the fixed image's grid (same shape and affine as the fixed image);
* ``gradcam_<stage>_<target>.png``: the map normalised to [0, 1] over the fixed image, three
  orthogonal slices through its peak voxel (the whole image in 2D);
* ``summary.png``: fixed, moving, warped moving, deformation grid and every map;
* ``explanations.json``: per map the stage, layer, method, target, its description and value,
  the peak voxel and the file names.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cli import as_bool
from ..data.datalist import read_datalist
from ..data.validation import _check_dims, _read
from ..inference import PairRegistrar
from ..io import save_image, staged_output_dir
from ..networks.bundle_net import structured_forward
from ..resample import grid_world_points, sample_at_world, spatial_affine
from .gradcam import explain_pair, stage_specs
from .plots import overlay_figure, peak_voxel, summary_figure

__all__ = ["SUMMARY_FILES", "ExplanationWriter", "explain_files"]

SUMMARY_FILES = ("explanations.json", "summary.png")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class ExplanationWriter:
    """Compute and write stage explanations for image files.

    Args:
        network: a :class:`bundle.networks.RegistrationBundleNet`.
        checkpoint: weights file; ``None`` keeps the current weights.
        device: torch device.
        spacing_mm: voxel size of the network grid (the training voxel size).
        size_divisor: network grid sizes are padded to multiples of this (default: the network's).
        stages: stage selection (see :func:`bundle.explain.gradcam.stage_specs`).
        targets: ``{stage: target name(s)}``; others use the defaults (mm units).
        roi_mask: default ROI mask file for the ``displacement_roi`` targets (any grid; it is
            resampled in world coordinates).
        method: ``"gradcam"`` / ``"hirescam"`` for every stage; ``None`` keeps each stage's.
        overwrite: replace explanations already in an output folder instead of refusing.
        initialise: centre-of-mass initialisation before the network (as in inference).
        refiner: the :class:`bundle.refine.InstanceRefiner` of inference; when enabled, its stages
            are explained too (``refine_affine``, ``refine_deformable``: similarity-gradient maps,
            :mod:`bundle.explain.refinement`) and the summary shows the refined result.
        intensity: the registrar's intensity transform (see :class:`bundle.inference.PairRegistrar`).
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoint: str | os.PathLike | None = None,
        device="cpu",
        spacing_mm: float = 2.0,
        size_divisor: int | None = None,
        stages: Sequence[str] | Mapping | None = None,
        targets: Mapping[str, str | Sequence[str]] | None = None,
        roi_mask: str | os.PathLike | None = None,
        method: str | None = None,
        overwrite: bool = False,
        initialise: bool = True,
        refiner=None,
        intensity=None,
    ):
        divisor = int(size_divisor) if size_divisor else int(network.size_divisor)
        self.registrar = PairRegistrar(network, checkpoint, device, spacing_mm, divisor, overwrite, initialise, refiner, intensity)
        self.refiner = refiner
        self.network = self.registrar.network
        self.dims = self.registrar.dims
        self.device = self.registrar.device
        self.spacing_mm = float(spacing_mm)
        self.stages = stage_specs(stages)
        self.targets = dict(targets or {})
        unknown = set(self.targets) - set(self.stages)
        if unknown:
            raise ValueError(f"targets given for stage(s) {sorted(unknown)} that are not selected ({list(self.stages)}).")
        self.roi_mask = roi_mask
        self.method = method
        self.overwrite = as_bool(overwrite, "overwrite")

    def _check_output_dir(self, output_dir: Path) -> None:
        if not output_dir.is_dir() or self.overwrite:
            return
        existing = sorted(p.name for p in output_dir.iterdir() if p.name in SUMMARY_FILES or p.name.startswith("gradcam_"))
        if existing:
            raise FileExistsError(
                f"{output_dir}: already holds explanations ({existing[0]}); pass overwrite=True (--overwrite true) to replace them"
            )

    def _roi_on_grid(self, path, net_affine: np.ndarray, net_shape) -> torch.Tensor:
        array, affine = _read(path)
        array = _check_dims(array, str(path), self.dims)
        mask = torch.from_numpy((np.asarray(array) > 0).astype(np.float32))[None]
        pts = grid_world_points(net_affine, net_shape)
        on_grid = (sample_at_world(mask, spatial_affine(affine, self.dims), pts, padding_mode="zeros") >= 0.5).float()
        if float(on_grid.sum()) == 0:
            raise ValueError(f"{path}: ROI mask is empty (or outside the fixed image) on the network grid")
        return on_grid[None].to(self.device)

    def _refinement_maps(self, m: torch.Tensor, f: torch.Tensor, res: dict) -> list:
        """Similarity-gradient maps of the refinement, started from the network's own prediction."""
        from .refinement import refinement_explanations

        with torch.no_grad():
            out = structured_forward(self.network, m, f, bidirectional=False, synthesis=self.refiner.needs_synthesis).forward
        theta_refined = torch.as_tensor(res["theta"], dtype=out.theta.dtype, device=out.theta.device)[None]
        return refinement_explanations(
            self.refiner, m, f, out.theta, out.velocity, theta_refined, self.network.deformable_head.integrate, out.synth
        )

    def explain_files(self, fixed_path, moving_path, output_dir, roi_mask=None) -> dict:
        """Explain the registration of ``moving_path`` onto ``fixed_path`` and write the outputs.

        Args:
            fixed_path: fixed image file.
            moving_path: moving image file.
            output_dir: output folder (created).
            roi_mask: ROI mask file for this pair (default: the writer's ``roi_mask``).

        Returns:
            the content of ``explanations.json``.

        Raises:
            FileExistsError: ``output_dir`` already holds explanations and ``overwrite`` is false.
        """
        output_dir = Path(output_dir)
        self._check_output_dir(output_dir)
        t0 = time.perf_counter()
        reg = self.registrar
        reg.load_weights()
        fixed, fixed_aff, fixed_aff4, moving, moving_aff = reg.load_pair(fixed_path, moving_path)
        names = (str(fixed_path), str(moving_path))
        t_init = reg.initial_translation(fixed, fixed_aff, moving, moving_aff, names)
        m, f, net_affine, net_shape = reg.to_network_grid(fixed, fixed_aff, moving, moving_aff, t_init)
        m, f = m.to(self.device), f.to(self.device)
        roi_path = roi_mask if roi_mask is not None else self.roi_mask
        roi = None if roi_path is None else self._roi_on_grid(roi_path, net_affine, net_shape)
        t1 = time.perf_counter()
        explanations = explain_pair(self.network, m, f, self.stages, self.targets, self.spacing_mm, roi, self.method)
        t2 = time.perf_counter()
        res = reg.register_arrays(fixed, fixed_aff, moving, moving_aff, names=names)
        if self.refiner is not None and self.refiner.enabled:
            explanations += self._refinement_maps(m, f, res)
        t_refine = time.perf_counter()
        fixed_pts = grid_world_points(fixed_aff, fixed.shape, dtype=torch.float64)
        maps = []
        for ex in explanations:
            on_fixed = sample_at_world(ex.attribution[0].detach().double().cpu(), net_affine, fixed_pts, padding_mode="zeros")[0]
            maps.append((ex, on_fixed.clamp_min(0).numpy().astype(np.float32)))
        moving_on_fixed = sample_at_world(torch.from_numpy(moving).double()[None], moving_aff, fixed_pts)[0].numpy()
        summary = {
            "fixed": str(fixed_path),
            "moving": str(moving_path),
            "roi_mask": None if roi_path is None else str(roi_path),
            "network_grid": {"shape": list(net_shape), "spacing_mm": self.spacing_mm},
            "maps": [],
            "initial_translation_mm": [float(v) for v in res["initial_translation_mm"]],
            "refinement": res["refinement"],
            "seconds": {"load": t1 - t0, "explain": t2 - t1, "register_and_explain_refinement": t_refine - t2},
        }
        with staged_output_dir(output_dir) as stage_dir:
            t3 = time.perf_counter()
            panels = []
            for ex, arr in maps:
                stem = f"gradcam_{_safe(ex.stage)}_{_safe(ex.target)}"
                save_image(stage_dir / f"{stem}.nii.gz", arr, fixed_aff4)
                value = float(ex.value[0])
                label = f"{ex.stage} ({ex.method}, {ex.layer})\n{ex.target} = {value:.4g}"
                overlay_figure(stage_dir / f"{stem}.png", fixed, arr, title=label)
                panels.append((f"{ex.stage}: {ex.target}\n= {value:.4g}", arr))
                summary["maps"].append(
                    {
                        "stage": ex.stage,
                        "layer": ex.layer,
                        "method": ex.method,
                        "target": ex.target,
                        "description": ex.description,
                        "value": value,
                        "max": float(arr.max()),
                        "peak_voxel": list(peak_voxel(arr)),
                        "nifti": f"{stem}.nii.gz",
                        "png": f"{stem}.png",
                    }
                )
            summary_figure(
                stage_dir / "summary.png", fixed, moving_on_fixed, res["warped"], res["ddf_voxel"], panels,
                title=f"{Path(str(moving_path)).name} -> {Path(str(fixed_path)).name}",
            )
            summary["seconds"]["write"] = time.perf_counter() - t3
            summary["seconds"]["total"] = time.perf_counter() - t0
            with open(stage_dir / "explanations.json", "w") as fh:
                json.dump(summary, fh, indent=2)
        return summary

    def run(self, fixed=None, moving=None, output_dir=None, datalist=None, section: str = "test", roi_mask=None) -> list[dict]:
        """Explain one pair (``fixed``/``moving``) or every pair of a datalist section.

        With a datalist, pair ``i`` goes to ``output_dir/<i:04d>``; an item's ``roi_mask`` key,
        when present, overrides ``roi_mask``.
        """
        if output_dir is None:
            raise ValueError("output_dir is required")
        self.registrar.load_weights()
        if datalist:
            items = read_datalist(datalist, section)
            return [
                self.explain_files(item["fixed"], item["moving"], Path(output_dir) / f"{i:04d}", item.get("roi_mask", roi_mask))
                for i, item in enumerate(items)
            ]
        if fixed is None or moving is None:
            raise ValueError("give --fixed and --moving, or --datalist")
        return [self.explain_files(fixed, moving, output_dir, roi_mask)]


def explain_files(fixed: str | os.PathLike, moving: str | os.PathLike, output_dir: str | os.PathLike, network: nn.Module, **options) -> dict:
    """One-call explanation of a pair of files; ``options`` are :class:`ExplanationWriter`'s
    keywords (``checkpoint``, ``stages``, ``targets``, ``roi_mask``, ...). Returns ``explanations.json``'s content."""
    return ExplanationWriter(network, **options).explain_files(fixed, moving, output_dir)
