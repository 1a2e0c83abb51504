"""Hard tissue labels from tissue probability maps."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["LABELS", "tissue_labels"]

#: Label values written by the sample generator.
LABELS: dict[int, str] = {0: "background", 1: "csf", 2: "grey", 3: "white"}


def tissue_labels(tissue_maps: Mapping[str, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Label each voxel with its most probable tissue where the brain probability is high.

    Args:
        tissue_maps: probability maps ``"csf"``, ``"grey"`` and ``"white"`` of one shape.
        threshold: voxels whose summed tissue probability is below it are background.

    Returns:
        uint8 array of the maps' shape: 0 background, 1 CSF, 2 grey matter, 3 white matter.
    """
    stacked = np.stack([np.asarray(tissue_maps[k], dtype=np.float32) for k in ("csf", "grey", "white")])
    labels = (np.argmax(stacked, axis=0) + 1).astype(np.uint8)
    labels[stacked.sum(axis=0) < threshold] = 0
    return labels
