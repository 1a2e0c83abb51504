"""The shipped 3D network alone on the SPM T2 template moved by known rigid motions, per keypoint-cascade depth.

    python -m benchmarks.affine_cascade --passes 1 2 3

For each number of keypoint passes (``affine_passes``) prints the mean error over the brain
(2 mm voxels) of the affine stage and of the full network for two rotations with shifts and
the aligned (null) pair, and the error of three pure translations (affine stage, median field).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from bundle.data.templates import load_spm_templates

from .run import _parser, _registrar

MOTIONS = ((10.0, (4.0, -4.0, 2.0)), (-12.0, (-6.0, 3.0, 4.0)), (0.0, (0.0, 0.0, 0.0)))
SHIFTS = ((3, -2, 2), (0, 0, 3), (-4, 0, -3))


def rotated_shifted(templates, degrees: float = 10.0, shift_mm=(4.0, -4.0, 2.0)):
    """T2 moved by a rotation about z through the grid centre and a shift; the known answer ``u`` (voxels).

    ``moving(o) = t2(R (o - c) + c + s)``, so ``warped(x) = moving(x + u) = t2(x)`` needs
    ``u(x) = R^-1 (x - c - s) + c - x``.
    """
    t2 = np.asarray(templates.t2)
    spacing = np.abs(np.diag(templates.affine)[:3])
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    c = (np.array(t2.shape) - 1) / 2.0
    s = np.asarray(shift_mm) / spacing
    moving = ndimage.affine_transform(t2, rot, offset=c + s - rot @ c, order=1, mode="constant")
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in t2.shape], indexing="ij"))
    u = np.einsum("ij,j...->i...", np.linalg.inv(rot), x - (c + s)[:, None, None, None]) + c[:, None, None, None] - x
    return moving, u


def cascade_errors(registrar, templates, passes: int) -> dict[str, float]:
    """Errors (voxels) of the network alone with ``passes`` keypoint passes."""
    registrar.network.affine_passes = passes
    brain = templates.brain_mask
    t1, aff = np.asarray(templates.t1), templates.affine
    out = {}
    for degrees, shift in MOTIONS:
        moving, u = rotated_shifted(templates, degrees, shift)
        for stage in ("affine", "full"):
            res = registrar.register_arrays(t1, aff, moving, aff, stage=stage, refine=False)
            out[f"rot{degrees:g}_{stage}"] = float(np.linalg.norm(res["ddf_voxel"] - u, axis=0)[brain].mean())
    for shift in SHIFTS:
        moving = ndimage.shift(np.asarray(templates.t2), shift, order=1, mode="constant")
        res = registrar.register_arrays(t1, aff, moving, aff, stage="affine", refine=False)
        found = np.array([np.median(c[brain]) for c in res["ddf_voxel"]])
        out[f"shift{shift}"] = float(np.linalg.norm(found - np.array(shift)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--checkpoint", default=None, help="weights to measure (default: the shipped configs' checkpoint)")
    args = ap.parse_args(argv)
    registrar = _registrar(args.checkpoint or _parser().get_parsed_content("checkpoint"))
    registrar.load_weights()
    templates = load_spm_templates()
    results = {p: cascade_errors(registrar, templates, p) for p in args.passes}
    for p, errs in results.items():
        print(f"passes {p}: " + " | ".join(f"{k} {v:.2f}" for k, v in errs.items()), flush=True)
    return results


if __name__ == "__main__":
    main()
