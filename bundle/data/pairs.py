"""Seeded generator of multi-modal registration pairs with known ground truth, and its writer.

A pair is built from the SPM templates resampled to ``spacing_mm``:

* ``fixed`` is the T1 template, ``fixed_label`` its tissue labels, stored RAS (the affine's
  diagonal is ``+spacing_mm``);
* a random map ``T(x) = A(x + e(x))`` of fixed-grid voxel coordinates (affine ``A`` after a
  B-spline elastic displacement ``e``) is sampled from the seed;
* ``moving(y) = source(T^{-1}(y))`` with ``T^{-1}(y) = E^{-1}(A^{-1} y)``, ``E(w) = w + e(w)``,
  where ``source`` is the T2 or PD template, or a FLAIR simulated from the tissue priors;
  ``moving_label`` is resampled the same way with nearest-neighbour interpolation;
* ``gt_ddf(x) = T(x) - x`` (channel-first, voxels), so that
  ``monai.networks.blocks.Warp()(moving, gt_ddf)`` gives back ``source`` on the fixed grid.

Run ``python -m bundle.data.pairs --help`` to write a data set with a MONAI datalist.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.data.contrast import simulate_contrast
from bundle.data.deform import (
    MotionRange,
    compose_affine_ddf,
    identity_grid,
    invert_affine,
    invert_map_at,
    resample,
    transform_points,
)
from bundle.data.grid import axial_slice
from bundle.data.labels import LABELS
from bundle.data.templates import default_slice_index, source_volumes
from bundle.io import atomic_write, save_displacement, save_image

__all__ = [
    "CONTRASTS",
    "SPLITS",
    "RegistrationPair",
    "generate_pair",
    "split_seeds",
    "write_pair",
    "write_sample_data",
    "main",
]

#: Moving contrasts: SPM templates (``t1``, ``t2``, ``pd``) or simulated from the priors (``flair``).
CONTRASTS = ("t1", "t2", "pd", "flair")
#: Datalist sections, in the order their seeds are numbered.
SPLITS = ("training", "validation", "test")
_SPLIT_STRIDE = 1_000_000  # seeds of one split: seed * 10**7 + split_index * 10**6 + i
_FILES = ("fixed", "moving", "fixed_label", "moving_label", "gt_ddf")


@dataclass(frozen=True)
class RegistrationPair:
    """One generated pair; arrays are spatial-first except ``gt_ddf``.

    Attributes:
        fixed: T1 image in [0, 1], float32.
        moving: deformed moving-contrast image in [0, 1], float32.
        fixed_label: uint8 labels of ``fixed`` (0 background, 1 CSF, 2 grey, 3 white matter).
        moving_label: uint8 labels of ``moving``.
        gt_ddf: ground-truth DDF ``(dims, *spatial)`` in voxels of the fixed grid.
        affine: 4x4 voxel-to-RAS affine shared by all arrays (for 2D, that of the slice).
        moving_undeformed: the moving contrast before deformation, on the fixed grid.
        voxel_affine: the affine part ``A`` of the ground-truth map, ``(dims + 1)^2``.
        seed: the seed the pair was generated from.
        contrast: the moving contrast.
        slice_index: axial slice of the 3D grid (2D pairs), else ``None``.
    """

    fixed: np.ndarray
    moving: np.ndarray
    fixed_label: np.ndarray
    moving_label: np.ndarray
    gt_ddf: np.ndarray
    affine: np.ndarray
    moving_undeformed: np.ndarray
    voxel_affine: np.ndarray
    seed: int
    contrast: str
    slice_index: int | None


def generate_pair(
    seed: int,
    contrast: str = "t2",
    spatial_dims: int = 3,
    spacing_mm: float = 2.0,
    slice_index: int | None = None,
    motion: MotionRange | None = None,
    contrast_jitter: float = 0.05,
    interpolation_order: int = 3,
    volumes: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
) -> RegistrationPair:
    """Generate the registration pair of ``seed`` (see the module docstring).

    Args:
        seed: seed of all random draws; the same arguments always give the same pair.
        contrast: moving contrast, one of :data:`CONTRASTS`.
        spatial_dims: 3 for volumes, 2 for an axial slice deformed in plane.
        spacing_mm: voxel size; values above 2 downsample the 2 mm templates.
        slice_index: for 2D, the slice of the ``spacing_mm`` grid; defaults to
            :func:`default_slice_index`. Ignored in 3D.
        motion: ranges of the moving image's motion (default :class:`MotionRange`'s defaults).
        contrast_jitter: relative jitter of the tissue parameters of a simulated contrast.
        interpolation_order: spline order resampling the moving image (1 or 3); cubic keeps
            coarse grids sharp, linear is faster. Labels always use nearest neighbour.
        volumes: another anatomy as ``source_volumes`` returns it (keys ``t1, t2, pd, csf,
            grey, white, labels`` and the RAS affine at ``spacing_mm``); defaults to the SPM
            templates (see ``bundle.data.subject`` for the unseen evaluation subject).

    Returns:
        A :class:`RegistrationPair`.

    Raises:
        ValueError: on invalid arguments.
        RuntimeError: if the sampled deformation could not be inverted (elastic too strong).
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    volumes, affine = source_volumes(float(spacing_mm)) if volumes is None else volumes
    if spatial_dims == 2:
        slice_index = default_slice_index(float(spacing_mm)) if slice_index is None else int(slice_index)
        sliced = {}
        for name, volume in volumes.items():
            sliced[name], slice_affine = axial_slice(volume, affine, slice_index)
        volumes, affine = sliced, slice_affine
    else:
        slice_index = None
    shape = volumes["t1"].shape

    rng = np.random.default_rng(seed)
    matrix, elastic = (motion or MotionRange()).sample(rng, shape, spacing_mm)
    if contrast == "flair":
        priors = {k: volumes[k] for k in ("csf", "grey", "white")}
        source = simulate_contrast(priors, "flair", rng=rng, jitter=contrast_jitter)
    else:
        source = volumes[contrast]

    gt_ddf = compose_affine_ddf(matrix, elastic)
    preimage = invert_map_at(elastic, transform_points(invert_affine(matrix), identity_grid(shape)), strict=True)
    return RegistrationPair(
        fixed=np.array(volumes["t1"]),
        moving=np.clip(resample(source, preimage, order=interpolation_order), 0.0, 1.0),
        fixed_label=np.array(volumes["labels"]),
        moving_label=resample(volumes["labels"], preimage, order=0),
        gt_ddf=gt_ddf,
        affine=np.array(affine),
        moving_undeformed=np.array(source),
        voxel_affine=matrix,
        seed=int(seed),
        contrast=contrast,
        slice_index=slice_index,
    )


def split_seeds(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, list[int]]:
    """Pair seeds of each split: disjoint, and each split's seeds independent of the others' sizes."""
    counts = dict(zip(SPLITS, (n_train, n_val, n_test)))
    if any(n < 0 or n >= _SPLIT_STRIDE for n in counts.values()):
        raise ValueError(f"split sizes must be in [0, {_SPLIT_STRIDE}), got {counts}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    base = seed * 10 * _SPLIT_STRIDE
    return {s: [base + k * _SPLIT_STRIDE + i for i in range(counts[s])] for k, s in enumerate(SPLITS)}


def write_pair(folder: str | os.PathLike, pair: RegistrationPair) -> dict[str, Path]:
    """Write a pair's five NIfTI files into ``folder``; returns their paths keyed by role."""
    folder = Path(folder)
    paths = {key: folder / f"{key}.nii.gz" for key in _FILES}
    save_image(paths["fixed"], pair.fixed, pair.affine)
    save_image(paths["moving"], pair.moving, pair.affine)
    save_image(paths["fixed_label"], pair.fixed_label, pair.affine, dtype=np.uint8)
    save_image(paths["moving_label"], pair.moving_label, pair.affine, dtype=np.uint8)
    save_displacement(paths["gt_ddf"], pair.gt_ddf, pair.affine)
    return paths


def write_sample_data(
    output_dir: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 20,
    spatial_dims: int = 3,
    spacing_mm: float = 2.0,
    contrasts: Sequence[str] = ("t2", "pd"),
    seed: int = 0,
    **pair_kwargs,
) -> Path:
    """Generate pairs for the training, validation and test splits and write them with a datalist.

    Pair ``i`` of a split goes to ``output_dir/<split>/<i:04d>/`` and uses contrast
    ``contrasts[i % len(contrasts)]``. ``output_dir/datalist.json`` lists each pair with paths
    relative to ``output_dir``, its contrast and seed (``generate_pair(seed, contrast, ...)``
    reproduces it), in the sections ``training``, ``validation`` and ``test``.

    Args:
        output_dir: destination folder, created if needed.
        n_train: number of training pairs.
        n_val: number of validation pairs.
        n_test: number of test pairs.
        spatial_dims: 2 or 3.
        spacing_mm: voxel size in mm.
        contrasts: moving contrasts to cycle through.
        seed: master seed; the pair seeds come from :func:`split_seeds`.
        pair_kwargs: further arguments of :func:`generate_pair` (ranges, ``slice_index``).

    Returns:
        The path of ``datalist.json``.
    """
    contrasts = tuple(contrasts)
    if not contrasts or any(c not in CONTRASTS for c in contrasts):
        raise ValueError(f"contrasts must be a non-empty subset of {CONTRASTS}, got {contrasts}")
    output_dir = Path(output_dir)
    datalist: dict = {
        "name": "xmreg-sample-pairs",
        "description": "Deformed SPM avg152 templates: T1 fixed, T2/PD/FLAIR moving, with ground-truth DDFs",
        "spatial_dims": spatial_dims,
        "spacing_mm": spacing_mm,
        "seed": seed,
        "contrasts": list(contrasts),
        "generator": dict(pair_kwargs),
        "labels": {str(k): v for k, v in LABELS.items()},
    }
    for split, seeds in split_seeds(seed, n_train, n_val, n_test).items():
        items = []
        for i, pair_seed in enumerate(seeds):
            contrast = contrasts[i % len(contrasts)]
            pair = generate_pair(pair_seed, contrast, spatial_dims, spacing_mm, **pair_kwargs)
            paths = write_pair(output_dir / split / f"{i:04d}", pair)
            item = {key: path.relative_to(output_dir).as_posix() for key, path in paths.items()}
            item.update(contrast=contrast, seed=pair_seed)
            if pair.slice_index is not None:
                item["slice_index"] = pair.slice_index
            items.append(item)
        datalist[split] = items

    text = json.dumps(datalist, indent=2)

    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text + "\n")

    return atomic_write(output_dir / "datalist.json", _write)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line entry point; prints and returns the datalist path."""
    parser = argparse.ArgumentParser(prog="python -m bundle.data.pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="destination folder")
    parser.add_argument("--spatial_dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--spacing_mm", type=float, default=2.0, help="voxel size; >2 downsamples")
    parser.add_argument("--n_train", type=int, default=16)
    parser.add_argument("--n_val", type=int, default=4)
    parser.add_argument("--n_test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contrasts", nargs="+", default=["t2", "pd"], choices=CONTRASTS)
    parser.add_argument("--slice_index", type=int, default=None, help="axial slice for 2D")
    args = parser.parse_args(argv)
    extra = {} if args.slice_index is None else {"slice_index": args.slice_index}
    path = write_sample_data(
        args.output_dir,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        spatial_dims=args.spatial_dims,
        spacing_mm=args.spacing_mm,
        contrasts=args.contrasts,
        seed=args.seed,
        **extra,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
