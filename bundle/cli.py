"""``python -m bundle``: thin convenience commands over the bundle configs.

* ``demo``: generate the embedded sample pair, register it with the shipped model through
  ``configs/inference.json``, write a figure (``overview.png``) beside the results, and
  explain every stage through ``configs/explain.json`` (``explanations/``).
* ``register``: the same for user files (``--fixed``, ``--moving``, optional labels).
* ``apply``: apply a saved registration to another image or to points, through
  ``configs/apply.json`` (no network is loaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = [
    "BUNDLE_ROOT", "USER_ERRORS", "STANDALONE_CONFIGS", "as_bool", "config_files", "exit_on_user_error", "run_config", "register", "apply", "demo",
    "main",
]

#: Exceptions that mean "bad input", reported as one line instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)

BUNDLE_ROOT = Path(__file__).resolve().parent.parent


def as_bool(value, name: str = "value") -> bool:
    """A config switch as a bool: ``monai.bundle run --refine false`` passes the *string* ``"false"``.

    Raises:
        ValueError: anything but a bool, 0/1 or true/false/yes/no/on/off (any case).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ValueError(f"{name} must be true or false, got {value!r}")


def exit_on_user_error(fn, *args, **kwargs):
    """Call ``fn``; a bad-input error ends the process with one line on stderr and exit code 1.

    The configs' ``run`` sections use it so that ``python -m monai.bundle run`` reports a
    missing or corrupt file as ``error: <file>: <problem>`` rather than a traceback.
    """
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


#: Configs that stand alone; every other one is an override of ``configs/common.json``.
STANDALONE_CONFIGS = ("apply.json",)


def config_files(config: str) -> list[str]:
    """The files that make up a config of ``configs/``: ``common.json`` first, then ``config``."""
    folder = BUNDLE_ROOT / "configs"
    return [str(folder / config)] if config in STANDALONE_CONFIGS else [str(folder / "common.json"), str(folder / config)]


def run_config(config: str, **overrides):
    """Run a config of ``configs/`` (composed over ``common.json``) with id overrides, as ``python -m monai.bundle run`` does."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=config_files(config),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT),
        **overrides,
    )
    wf.initialize()
    result = wf.run()
    wf.finalize()
    return result


def register(fixed, moving, output_dir, fixed_label=None, moving_label=None, overwrite=False, figure=True, stage="full") -> dict:
    """Register one pair through ``configs/inference.json`` and draw ``overview.png`` (``stage``: ``full`` or ``affine``)."""
    import nibabel as nib
    import numpy as np

    from .figures import pair_figure
    from .io import load_displacement
    from .keypoints import read_keypoints, world_to_voxel

    metrics = run_config(
        "inference.json", fixed=str(fixed), moving=str(moving), output_dir=str(output_dir),
        fixed_label=None if fixed_label is None else str(fixed_label),
        moving_label=None if moving_label is None else str(moving_label), overwrite=overwrite, stage=stage,
    )[0][0]
    if figure:
        out = Path(output_dir)
        load = lambda p: np.asarray(nib.load(str(p)).dataobj).squeeze()  # noqa: E731
        labels = []
        if fixed_label is not None:
            labels.append(("fixed labels", load(fixed_label)))
        if moving_label is not None:
            labels += [("moving labels", load(moving_label)), ("warped moving labels", load(out / "warped_moving_label.nii.gz"))]
        ddf, _ = load_displacement(out / "ddf_mm.nii.gz")
        dice = f", Dice {metrics['dice_mean']:.3f}" if "dice_mean" in metrics else ""
        fixed_img, moving_img = nib.load(str(fixed)), nib.load(str(moving))
        fixed_arr, moving_arr = np.asarray(fixed_img.dataobj).squeeze(), np.asarray(moving_img.dataobj).squeeze()
        points = []
        if (out / "keypoints.csv").exists():  # the keypoint head's points, in each image's own voxels
            world = read_keypoints(out / "keypoints.csv", fixed_arr.ndim)
            points = [world_to_voxel(world["fixed"], fixed_img.affine), world_to_voxel(world["moving"], moving_img.affine)]
        pair_figure(
            out / "overview.png",
            [("fixed", fixed_arr), ("moving", moving_arr), ("warped moving", load(out / "warped_moving.nii.gz"))],
            labels,
            ddf=ddf,
            title=f"{Path(moving).name} -> {Path(fixed).name}{dice}, folding {metrics['folding_percent']:.3f}%",
            points=points,
        )
    return metrics


def apply(transform_dir, output, image=None, points=None, inverse=False, interp="linear", points_space=None, overwrite=False) -> dict:
    """Apply the registration saved in ``transform_dir`` through ``configs/apply.json``."""
    return run_config(
        "apply.json", transform_dir=str(transform_dir), output=str(output), image=None if image is None else str(image),
        points=None if points is None else str(points), inverse=inverse, interp=interp, points_space=points_space, overwrite=overwrite,
    )[0]


def demo(output_dir="outputs/demo", sample_dir="sample_data/demo", overwrite=True) -> dict:
    """Generate the sample test pair (T2 -> T1, 3D, 2 mm) and register it with the shipped model."""
    import json

    from .data.sample import ensure_sample_datalist

    datalist = Path(ensure_sample_datalist(sample_dir, n_train=0, n_val=0, n_test=1, spatial_dims=3, spacing_mm=2.0))
    item = json.loads(datalist.read_text())["test"][0]
    base = datalist.parent
    metrics = register(
        base / item["fixed"], base / item["moving"], output_dir,
        fixed_label=base / item["fixed_label"], moving_label=base / item["moving_label"], overwrite=overwrite,
    )
    run_config(
        "explain.json", fixed=str(base / item["fixed"]), moving=str(base / item["moving"]),
        output_dir=str(Path(output_dir) / "explanations"), overwrite=overwrite,
    )
    print(json.dumps({k: metrics[k] for k in ("dice_mean", "folding_percent", "seconds") if k in metrics}, indent=2))
    print(f"outputs in {Path(output_dir).resolve()}")
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bundle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="register the embedded sample pair and write figures")
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--sample_dir", default="sample_data/demo")
    p = sub.add_parser("register", help="register --moving onto --fixed")
    p.add_argument("--fixed", required=True)
    p.add_argument("--moving", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--fixed_label")
    p.add_argument("--moving_label")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--stage", default="full", choices=["full", "affine"], help="affine: the fast affine-only mode")
    p = sub.add_parser("apply", help="apply a saved registration to --image or --points")
    p.add_argument("--transform_dir", required=True, help="output folder of a registration")
    p.add_argument("--image", help="image in the moving space (fixed space with --inverse)")
    p.add_argument("--points", help="CSV of world points (header x,y,z; LPS unless --points_space ras or x_ras,... columns)")
    p.add_argument("--output", required=True)
    p.add_argument("--inverse", action="store_true", help="map from the fixed space into the moving space")
    p.add_argument("--interp", default="linear", choices=["linear", "nearest", "label"])
    p.add_argument("--points_space", choices=["ras", "lps"])
    p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo(args.output_dir, args.sample_dir)
        elif args.command == "apply":
            print(apply(args.transform_dir, args.output, args.image, args.points, args.inverse, args.interp, args.points_space, args.overwrite))
        else:
            register(args.fixed, args.moving, args.output_dir, args.fixed_label, args.moving_label, args.overwrite, stage=args.stage)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
