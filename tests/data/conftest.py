"""Shared helpers for the bundle.data tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.blocks import Warp


def _warp(image: np.ndarray, ddf: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Warp a spatial-first (image) or channel-first (C, *spatial) array with MONAI ``Warp``."""
    spatial_dims = ddf.shape[0]
    batch = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if batch.ndim == spatial_dims:
        batch = batch[None]
    out = Warp(mode=mode, padding_mode="border")(batch[None], torch.as_tensor(ddf, dtype=torch.float32)[None])
    return out[0].numpy() if np.asarray(image).ndim > spatial_dims else out[0, 0].numpy()


def _mean_dice(a: np.ndarray, b: np.ndarray, labels=(1, 2, 3)) -> float:
    scores = [2.0 * np.sum((a == k) & (b == k)) / max(np.sum(a == k) + np.sum(b == k), 1) for k in labels]
    return float(np.mean(scores))


@pytest.fixture(scope="session")
def warp():
    """``warp(image, ddf, mode)``: MONAI ``Warp`` on numpy arrays (border padding)."""
    return _warp


@pytest.fixture(scope="session")
def mean_dice():
    """``mean_dice(a, b)``: mean Dice over labels 1..3."""
    return _mean_dice
