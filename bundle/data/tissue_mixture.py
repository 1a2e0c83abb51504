"""Tissue maps of a real T1 scan: mixture posteriors of its brain and the head tissue around it.

A three-class Gaussian mixture of the T1 intensities inside a brain mask gives CSF, grey and
white matter posteriors (partial-volume probabilities, classes ordered by mean intensity); the
head tissue is what is bright outside the brain. Images rendered from these maps share the real
scan's tissue boundaries voxel for voxel, which maps from population priors do not.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["tissue_posteriors", "head_probability"]


def tissue_posteriors(t1: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Three-class Gaussian mixture of ``t1`` inside ``mask``: ``csf``, ``grey``, ``white`` posteriors (zero outside)."""
    from sklearn.mixture import GaussianMixture

    values = t1[mask].reshape(-1, 1).astype(np.float64)
    gmm = GaussianMixture(n_components=3, random_state=seed, init_params="kmeans").fit(values)
    order = np.argsort(gmm.means_.ravel())
    posteriors = gmm.predict_proba(values)[:, order]
    maps = {}
    for name, column in zip(("csf", "grey", "white"), posteriors.T):
        full = np.zeros(t1.shape, dtype=np.float32)
        full[mask] = column
        maps[name] = full
    return maps


def head_probability(t1: np.ndarray, brain: np.ndarray, threshold: float = 0.15) -> np.ndarray:
    """Probability of non-brain head tissue: T1 voxels above ``threshold`` outside ``brain``, smoothed (sigma 1 voxel)."""
    head = ndimage.gaussian_filter((t1 > threshold).astype(np.float32), 1.0)
    return np.clip(head - brain, 0.0, 1.0)
