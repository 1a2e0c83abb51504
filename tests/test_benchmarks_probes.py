"""``benchmarks.network_probes``: the affine floor of the subject pairs and the least-squares fit under it."""

from __future__ import annotations

import numpy as np

from benchmarks.network_probes import _fit, affine_floor


def test_fit_recovers_a_known_affine_map():
    rng = np.random.default_rng(0)
    points = rng.uniform(-80, 80, size=(500, 3))
    m = np.array([[1.05, 0.02, 0.0, 3.0], [-0.01, 0.97, 0.03, -2.0], [0.0, 0.04, 1.02, 5.0]])
    displacement = points @ m[:, :3].T + m[:, 3] - points
    assert np.allclose(_fit(points, displacement), m, atol=1e-8)


def test_affine_floor_is_the_elastic_part_of_a_subject_pairs_motion():
    out = affine_floor(pairs=1)
    row = out["pairs"][0]
    assert row["motion_mm"] > 5.0  # the pairs move by several millimetres
    assert 0.3 < row["affine_floor_mm"] < 0.25 * row["motion_mm"]  # an affine removes most, not the elastic part
