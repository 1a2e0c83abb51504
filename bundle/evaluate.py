"""Evaluate registration on a labelled datalist: per-pair CSV and a JSON summary.

Methods compared on the same pairs, in the same run: ``identity`` (no motion), ``affine``
(the network's affine stage only) and ``full`` (affine then deformable). Metrics come from
:mod:`bundle.metrics` (assembled per pair by :func:`registration_metrics`): Dice per label and mean, HD95, displacement error against the
ground-truth field (when the datalist has ``gt_ddf``) inside the fixed brain mask, folding,
SDlogJ and NMI, plus seconds per pair.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.datalist import read_datalist
from .data.validation import load_checked_label
from .fields import check_ddf, spacing_from_affine
from .inference import PairRegistrar
from .io import atomic_write, load_displacement
from .metrics import dice_per_label, displacement_error_mm, folding_percent, hd95_per_label, normalized_mutual_information, sd_log_jacobian
from .resample import grid_world_points, sample_labels_at_world, spatial_affine

__all__ = ["METHODS", "registration_metrics", "PairData", "evaluate_pair", "summarise", "evaluate_datalist"]

METHODS = ("identity", "affine", "full")


def registration_metrics(
    warped_label: torch.Tensor,
    fixed_label: torch.Tensor,
    ddf: torch.Tensor,
    gt_ddf: torch.Tensor | None = None,
    affine=None,
    warped: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    labels: Sequence[int] = (1, 2, 3),
    mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """All metrics for a single registered pair (batch size 1), as plain floats.

    Keys: ``dice_<label>`` for each label, ``dice_mean``, ``hd95_mean`` (mm, mean over labels
    present), ``folding_percent``, ``sdlogj``, and, when ``gt_ddf`` is given,
    ``disp_error_mean_mm`` and ``disp_error_p95_mm``, and, when ``warped`` and ``fixed`` are given,
    ``nmi``. Means over labels skip ``nan`` (labels absent from both maps).

    Args:
        warped_label: warped moving label map ``(1, 1, *S)``.
        fixed_label: fixed label map ``(1, 1, *S)``.
        ddf: ``(1, dims, *S)`` displacement field in voxels of the fixed grid.
        gt_ddf: optional ground-truth field in the same convention.
        affine: fixed-image affine (voxel -> mm); ``None`` means 1 mm isotropic, identity direction.
        warped: optional warped moving image ``(1, 1, *S)``.
        fixed: optional fixed image ``(1, 1, *S)``.
        labels: label values to score.
        mask: optional ``(1, 1, *S)`` fixed brain mask restricting folding, SDlogJ, displacement
            error and NMI; ``None`` means the whole grid.
    """
    if ddf.ndim < 3 or ddf.shape[0] != 1:
        raise ValueError(f"registration_metrics expects a single pair (batch size 1), got ddf {tuple(ddf.shape)}")
    dims = check_ddf(ddf)
    if warped_label.shape[0] != 1:
        raise ValueError(f"expected warped_label of batch size 1, got {tuple(warped_label.shape)}")
    if tuple(warped_label.shape[2:]) != tuple(ddf.shape[2:]):
        raise ValueError(
            f"label maps and ddf must share the spatial shape, got {tuple(warped_label.shape)} and {tuple(ddf.shape)}"
        )
    if affine is None:
        affine = np.eye(dims)
    spacing = spacing_from_affine(affine, dims)

    out: dict[str, float] = {}
    dice = dice_per_label(warped_label, fixed_label, labels)[0]
    for value, d in zip(labels, dice):
        out[f"dice_{value}"] = float(d)
    out["dice_mean"] = float(torch.nanmean(dice))
    out["hd95_mean"] = float(torch.nanmean(hd95_per_label(warped_label, fixed_label, labels, spacing)[0]))
    out["folding_percent"] = float(folding_percent(ddf, mask)[0])
    out["sdlogj"] = float(sd_log_jacobian(ddf, mask)[0])
    if gt_ddf is not None:
        err = displacement_error_mm(ddf, gt_ddf, affine, mask)
        out["disp_error_mean_mm"] = float(err["mean"][0])
        out["disp_error_p95_mm"] = float(err["p95"][0])
    if warped is not None and fixed is not None:
        out["nmi"] = float(normalized_mutual_information(warped, fixed, mask=mask)[0])
    return out


def moving_on_fixed_grid(fixed, fixed_affine, moving, moving_affine, ddf_mm: np.ndarray | None = None) -> np.ndarray:
    """The moving image sampled at the fixed grid's world points, moved by ``ddf_mm`` (RAS mm) when given."""
    from .resample import sample_at_world

    pts = grid_world_points(fixed_affine, fixed.shape, dtype=torch.float64)
    if ddf_mm is not None:
        pts = pts + torch.from_numpy(ddf_mm)
    return sample_at_world(torch.from_numpy(moving.astype(np.float64))[None], moving_affine, pts)[0].numpy().astype(np.float32)


def _identity_result(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray) -> dict:
    zero = np.zeros((fixed.ndim, *fixed.shape))
    return {"ddf_mm": zero, "ddf_voxel": zero, "warped": moving_on_fixed_grid(fixed, fixed_affine, moving, moving_affine), "seconds": {}}


class PairData:
    """One labelled datalist item loaded once: images, labels, spatial affines, ground truth."""

    def __init__(self, registrar: PairRegistrar, item: dict):
        self.item = item
        self.fixed, self.fixed_affine, self.fixed_affine4, self.moving, self.moving_affine = registrar.load_pair(item["fixed"], item["moving"])
        dims = self.fixed.ndim
        self.fixed_label, _ = load_checked_label(item["fixed_label"], dims)
        self.moving_label, moving_label_affine = load_checked_label(item["moving_label"], dims)
        self.moving_label_affine = spatial_affine(moving_label_affine, dims)
        self.gt = torch.from_numpy(load_displacement(item["gt_ddf"])[0])[None] if item.get("gt_ddf") else None

    def score(self, ddf_mm: np.ndarray, warped: np.ndarray, labels: Sequence[int] = (1, 2, 3)) -> dict:
        """Metrics of a displacement field in RAS mm on the fixed grid (``warped`` = moving through it)."""
        dims = self.fixed.ndim
        inv = np.linalg.inv(self.fixed_affine[:dims, :dims])
        ddf_voxel = np.einsum("ij,j...->i...", inv, ddf_mm)
        pts = grid_world_points(self.fixed_affine, self.fixed.shape, dtype=torch.float64) + torch.from_numpy(ddf_mm)
        warped_lab = sample_labels_at_world(self.moving_label, self.moving_label_affine, pts)
        return registration_metrics(
            torch.from_numpy(warped_lab.astype(np.int64))[None, None],
            torch.from_numpy(self.fixed_label)[None, None],
            torch.from_numpy(ddf_voxel)[None],
            gt_ddf=self.gt,
            affine=self.fixed_affine4[:dims, :dims],
            warped=torch.from_numpy(np.asarray(warped, dtype=np.float64))[None, None],
            fixed=torch.from_numpy(self.fixed.astype(np.float64))[None, None],
            labels=labels,
            mask=torch.from_numpy(self.fixed_label > 0)[None, None],
        )

    def row(self, method: str, metrics: dict, seconds: float) -> dict:
        return {"pair": Path(self.item["fixed"]).parent.name, "contrast": self.item.get("contrast", ""), "method": method, **metrics, "seconds": seconds}


def evaluate_pair(registrar: PairRegistrar, item: dict, methods: Sequence[str] = METHODS, labels: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """Register one datalist item with every method; one row of metrics per method."""
    pair = PairData(registrar, item)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        if method == "identity":
            res = _identity_result(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine)
        else:
            res = registrar.register_arrays(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, stage=method)
        seconds = time.perf_counter() - t0
        rows.append(pair.row(method, pair.score(res["ddf_mm"], res["warped"], labels), seconds))
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean and median of every numeric metric per method (and per contrast).

    A metric some rows of a group lack (``disp_error_*`` where only some pairs have a ground-truth
    field) is summarised over the rows that have it, with its own count ``n``.
    """
    out: dict = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
        groups.setdefault(f"{r['method']}/{r['contrast']}", []).append(r)
    for key, rs in groups.items():
        numeric = dict.fromkeys(k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        out[key] = {"n": len(rs)}
        for k in numeric:
            vals = np.array([r[k] for r in rs if k in r], dtype=np.float64)
            entry = {"mean": float(np.nanmean(vals)), "median": float(np.nanmedian(vals))}
            out[key][k] = entry if len(vals) == len(rs) else {**entry, "n": len(vals)}
    return out


def evaluate_datalist(
    registrar: PairRegistrar, datalist: str | os.PathLike, output_dir: str | os.PathLike, section: str = "test",
    methods: Sequence[str] = METHODS, labels: Sequence[int] = (1, 2, 3), limit: int | None = None,
) -> dict:
    """Evaluate every pair of a datalist section; writes ``metrics.csv`` and ``summary.json``."""
    items = read_datalist(datalist, section)[:limit]
    for i, item in enumerate(items):
        missing = [k for k in ("fixed_label", "moving_label") if k not in item]
        if missing:
            raise ValueError(f"{datalist}: item {i} of '{section}' lacks key(s) {missing} needed for evaluation")
    rows = []
    for item in tqdm(items, desc="evaluate", unit="pair"):
        rows.extend(evaluate_pair(registrar, item, methods, labels))
    summary = summarise(rows)
    output_dir = Path(output_dir)
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def _csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    def _json(tmp):
        with open(tmp, "w") as f:
            json.dump({"datalist": str(datalist), "section": section, "pairs": len(items), "summary": summary}, f, indent=2)

    atomic_write(output_dir / "metrics.csv", _csv)
    atomic_write(output_dir / "summary.json", _json)
    return summary
