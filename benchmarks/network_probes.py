"""Probes of the network alone: what its affine and deformable stages leave, on the unseen subject.

    python -m benchmarks.network_probes --output outputs/benchmarks/network_probes.json

* ``affine_floor``: the error left by the best affine fitted (least squares, over the brain) to
  each subject pair's own ground-truth field: what no affine stage can remove.
* ``null_scales``: on the subject's aligned pair, the affine stage's invented motion and the scales
  of the affine fitted to its field, for real or rendered fixed images against rendered moving ones
  (rendered = the subject's own mixture segmentation through the signal equation, as its pairs are).
* ``deformable_response``: how much of a known motion the deformable head returns behind the
  identity affine: a pure shift of the whole image along x, and a Gaussian bump inside a box in the
  brain (the localisation check's controlled case).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bundle.cli import BUNDLE_ROOT
from bundle.data.pairs import generate_pair
from bundle.data.subject import SUBJECT_SEED_BASE, render_tissues, subject_volumes
from bundle.explain.localisation import local_deformation_case
from bundle.networks.deformable_head import field_to_ddf

from .run import _registrar, use_threads


def _world(affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    idx = np.argwhere(brain)
    return (affine[:3, :3] @ idx.T).T + affine[:3, 3]


def _fit(points: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``(3, 4)`` least-squares affine map ``x -> x + displacement``."""
    x = np.c_[points, np.ones(len(points))]
    return np.linalg.lstsq(x, points + displacement, rcond=None)[0].T


def affine_floor(pairs: int = 8) -> dict:
    """Per subject pair: mean ground-truth motion and what the best affine leaves of it (mm)."""
    volumes = subject_volumes(2.0)
    rows = []
    for i in range(pairs):
        pair = generate_pair(SUBJECT_SEED_BASE + i, contrast=("t2", "pd")[i % 2], volumes=volumes)
        brain = pair.fixed_label > 0
        gt = np.einsum("ij,j...->i...", pair.affine[:3, :3], pair.gt_ddf)[:, brain].T
        points = _world(pair.affine, brain)
        m = _fit(points, gt)
        residual = points + gt - (points @ m[:, :3].T + m[:, 3])
        rows.append({"motion_mm": float(np.linalg.norm(gt, axis=1).mean()), "affine_floor_mm": float(np.linalg.norm(residual, axis=1).mean())})
    return {"pairs": rows, "mean_floor_mm": float(np.mean([r["affine_floor_mm"] for r in rows]))}


def null_scales(registrar) -> dict:
    """The affine stage on the subject's aligned images: invented motion (mm) and fitted scales."""
    v, affine = subject_volumes(2.0)
    maps = {k: v[k] for k in ("csf", "grey", "white")}
    rendered_t1 = render_tissues(maps, v["head"], "t1")
    brain = v["labels"] > 0
    cases = {
        "real T1 <- T2-like": (v["t1"], v["t2"]),
        "real T1 <- PD-like": (v["t1"], v["pd"]),
        "real T1 <- rendered T1": (v["t1"], rendered_t1),
        "rendered T1 <- T2-like": (rendered_t1, v["t2"]),
        "rendered T1 <- PD-like": (rendered_t1, v["pd"]),
    }
    out = {}
    for name, (fixed, moving) in cases.items():
        res = registrar.register_arrays(fixed, affine, moving, affine, stage="affine", refine=False)
        m = _fit(_world(affine, brain), res["ddf_mm"][:, brain].T)
        out[name] = {"invented_mm": float(np.linalg.norm(res["ddf_mm"], axis=0)[brain].mean()), "scales": [float(s) for s in np.diag(m[:, :3])]}
    return out


def deformable_response(registrar, shifts=(1, 2, 4)) -> dict:
    """Mean x displacement the deformable head returns (identity affine) for whole-image shifts, and
    its field's change inside a bump of known size (voxels of the network grid)."""
    net = registrar.network.eval()
    v, affine = subject_volumes(2.0)
    _, fixed, _, _ = registrar.to_network_grid(v["t1"], affine, v["t1"], affine)
    theta = torch.eye(net.spatial_dims, net.spatial_dims + 1)[None]
    head = fixed[0, 0] > 0.2
    out: dict = {"shift": {}, "bump": {}}
    with torch.no_grad():
        def field(moving):
            return field_to_ddf(net.deformable_field(moving, fixed, theta), fixed.shape[2:], net.deformable_head.integrate)[0]

        base = field(fixed)
        for s in shifts:
            moved = torch.roll(fixed, shifts=s, dims=2)  # warped(x) = moved(x + u) needs u = +s along x
            out["shift"][str(s)] = float((field(moved) - base)[0][head].mean())
        sides = [n // 4 for n in fixed.shape[2:]]
        box = [(n // 2 - d // 2, n // 2 - d // 2 + d) for n, d in zip(fixed.shape[2:], sides)]
        moving, _, bump = local_deformation_case(fixed, box)
        peak = bump[0].norm(dim=0) > 0.5 * bump[0].norm(dim=0).max()
        change = (field(moving) - base).norm(dim=0)
        out["bump"] = {"box": [list(b) for b in box], "bump_peak_voxels": float(bump[0].norm(dim=0).max()),
                       "field_change_at_peak_voxels": float(change[peak].mean())}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(BUNDLE_ROOT / "models" / "model.pt"))
    parser.add_argument("--pairs", type=int, default=8, help="subject pairs for the affine floor")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(BUNDLE_ROOT / "outputs" / "benchmarks" / "network_probes.json"))
    args = parser.parse_args(argv)
    use_threads(args.threads)
    registrar = _registrar(args.checkpoint)
    registrar.load_weights()
    out = {"checkpoint": args.checkpoint, "affine_floor": affine_floor(args.pairs), "null_scales": null_scales(registrar),
           "deformable_response": deformable_response(registrar)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
