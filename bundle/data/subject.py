"""Evaluation pairs on anatomy never used in training: SPM's single-subject T1 (Colin 27).

The fixed image is the subject's real T1 scan (``spm/canonical/single_subj_T1.nii``, 2 mm),
stored RAS like the sample pairs. Its tissues come from a three-class Gaussian mixture of the
T1 intensities inside a brain mask (posteriors = partial-volume probabilities, classes ordered
CSF < grey < white by mean); T2-like and PD-like images of the same anatomy follow from the
signal equation (BrainWeb 1.5 T tissue values, non-brain head tissue between fat and muscle).
``generate_pair(..., volumes=subject_volumes())`` then moves them by the random affine +
elastic transform with a known ground-truth field, exactly as for the template pairs.

No training path reads this subject: training uses the SPM avg152 templates and priors and
nilearn's MNI152 maps only.

    python -m bundle.data.subject --output_dir sample_data/subject --pairs_per_contrast 10
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io import atomic_write
from .contrast import SEQUENCES, TISSUE_PARAMETERS_1P5T, TissueParameters, signal_equation
from .grid import reorient_to_ras, resample_to_spacing
from .labels import LABELS, tissue_labels
from .pairs import generate_pair, write_pair
from .synth import HEAD_TISSUE_RANGE
from .templates import load_spm_single_subject, source_volumes
from .tissue_mixture import head_probability, tissue_posteriors

__all__ = ["SUBJECT_SEED_BASE", "render_tissues", "subject_volumes", "write_subject_data", "save_segmentation_figure", "main"]

#: Pair seeds of the subject set: far from every seed of the template splits.
SUBJECT_SEED_BASE = 900_000_000


def render_tissues(maps: dict[str, np.ndarray], head: np.ndarray, kind: str) -> np.ndarray:
    """Signal-equation image of the brain tissues plus head tissue, normalised to [0, 1]."""
    seq = SEQUENCES[kind]
    fat, muscle = HEAD_TISSUE_RANGE
    params = {**TISSUE_PARAMETERS_1P5T, "head": TissueParameters(*((a + b) / 2 for a, b in zip(fat, muscle)))}
    image = np.zeros(head.shape, dtype=np.float32)
    for name, prob in {**maps, "head": head}.items():
        t1, t2, pd = params[name]
        image += np.float32(signal_equation(pd, t1, t2, seq.tr_ms, seq.te_ms, seq.ti_ms)) * prob
    return image / max(float(image.max()), 1e-6)


@functools.lru_cache(maxsize=4)
def subject_volumes(spacing_mm: float = 2.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The subject as ``source_volumes`` gives the templates: ``t1`` (real), ``t2``/``pd`` (rendered),
    ``csf``/``grey``/``white`` (mixture posteriors), ``head`` (the head tissue the renderings use)
    and ``labels``, RAS at ``spacing_mm``.

    The brain mask is where SPM's avg152 brain priors sum to at least 0.5 (the subject is in
    the same MNI space), eroded by one voxel to keep scalp out of the mixture.
    """
    raw, raw_affine = load_spm_single_subject()
    array, affine = resample_to_spacing(np.clip(raw, 0.0, 1.0), raw_affine, spacing_mm)
    t1, affine = reorient_to_ras(np.clip(array, 0.0, 1.0), affine)
    priors, prior_affine = source_volumes(float(spacing_mm))
    if priors["t1"].shape != t1.shape or not np.allclose(prior_affine, affine, atol=1e-3):
        raise ValueError("single_subj_T1 and the SPM templates are not on one grid")
    brain = (priors["csf"] + priors["grey"] + priors["white"]) >= 0.5
    mask = ndimage.binary_erosion(brain) & (t1 > 0.05)
    maps = tissue_posteriors(t1, mask)
    head = head_probability(t1, mask, 0.15)
    volumes = {"t1": t1.astype(np.float32), **maps, "head": head, "t2": render_tissues(maps, head, "t2"), "pd": render_tissues(maps, head, "pd")}
    volumes["labels"] = tissue_labels(maps)
    for v in volumes.values():
        v.flags.writeable = False
    return volumes, affine


def write_subject_data(
    output_dir: str | os.PathLike,
    pairs_per_contrast: int = 10,
    contrasts: Sequence[str] = ("t2", "pd"),
    spacing_mm: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write subject pairs (``test`` section of ``output_dir/datalist.json``) and return its path."""
    output_dir = Path(output_dir)
    volumes = subject_volumes(float(spacing_mm))
    items = []
    for i in range(pairs_per_contrast * len(contrasts)):
        contrast = contrasts[i % len(contrasts)]
        pair_seed = SUBJECT_SEED_BASE + seed * 10_000 + i
        pair = generate_pair(pair_seed, contrast, 3, spacing_mm, volumes=volumes)
        paths = write_pair(output_dir / "test" / f"{i:04d}", pair)
        item = {key: path.relative_to(output_dir).as_posix() for key, path in paths.items()}
        items.append({**item, "contrast": contrast, "seed": pair_seed})
    datalist = {
        "name": "xmreg-unseen-subject",
        "description": "SPM single_subj_T1 (never used in training) fixed; T2/PD-like moving rendered from its segmentation",
        "spatial_dims": 3,
        "spacing_mm": spacing_mm,
        "seed": seed,
        "labels": {str(k): v for k, v in LABELS.items()},
        "test": items,
    }
    text = json.dumps(datalist, indent=2) + "\n"
    return atomic_write(output_dir / "datalist.json", lambda tmp: Path(tmp).write_text(text))


def save_segmentation_figure(path: str | os.PathLike, spacing_mm: float = 2.0) -> Path:
    """Axial and coronal slices of the subject's T1, its labels and a rendered T2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v, _ = subject_volumes(float(spacing_mm))
    z, y = v["t1"].shape[2] // 2 + 4, v["t1"].shape[1] // 2
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.5))
    for row, cut in enumerate((lambda a: a[:, :, z].T, lambda a: a[:, y, :].T)):
        for col, (key, cmap, title) in enumerate((("t1", "gray", "T1 (real)"), ("labels", "viridis", "GMM labels"), ("t2", "gray", "T2-like"))):
            axes[row, col].imshow(cut(v[key]), origin="lower", cmap=cmap)
            axes[row, col].set_title(title)
            axes[row, col].axis("off")
    fig.suptitle("single_subj_T1: tissue segmentation (CSF 1, grey 2, white 3) and rendered contrast")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line entry point; prints and returns the datalist path."""
    parser = argparse.ArgumentParser(prog="python -m bundle.data.subject", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pairs_per_contrast", type=int, default=10)
    parser.add_argument("--contrasts", nargs="+", default=["t2", "pd"], choices=("t2", "pd", "flair"))
    parser.add_argument("--figure", default=None, help="also save the segmentation figure here")
    args = parser.parse_args(argv)
    path = write_subject_data(args.output_dir, args.pairs_per_contrast, args.contrasts)
    if args.figure:
        save_segmentation_figure(args.figure)
    print(path)
    return path


if __name__ == "__main__":
    main()
