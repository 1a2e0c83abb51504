"""The ITK-slice benchmark's ground truth (skipped when Debian's insighttoolkit5-examples is not installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.itk_slices import CENTRE, MOTIONS, Slices, data_available, run_method, score

pytestmark = pytest.mark.skipif(not data_available(), reason="apt-get install insighttoolkit5-examples for the ITK slices")

SHIFTED, ROTATED = "BrainProtonDensitySliceShifted13x17y.png", "BrainProtonDensitySliceRotated10.png"


@pytest.fixture(scope="module")
def slices() -> Slices:
    return Slices()


@pytest.mark.parametrize("name", sorted(MOTIONS))
def test_ground_truth_maps_unmoved_slice_onto_moved_one(slices, name):
    assert slices.check(name) > 0.99


def test_wrong_sign_does_not_match(slices, monkeypatch):
    monkeypatch.setitem(MOTIONS, SHIFTED, (0.0, (-13.0, -17.0)))
    assert slices.check(SHIFTED) < 0.9


def _identity_error(slices, name) -> float:
    ddf, warped = run_method("identity", slices, name, {}, None, 1)
    return score(slices, slices.ground_truth(name), ddf, warped)["disp_error_mean_mm"]


def test_identity_error_is_the_documented_shift(slices):
    assert _identity_error(slices, SHIFTED) == pytest.approx(math.hypot(13.0, 17.0), abs=1e-6)


def test_identity_error_is_the_documented_rotation(slices):
    # a rotation by 10 degrees moves a point at distance r from the centre by 2 r sin(5 deg)
    x, y = np.meshgrid(np.arange(181) + 20.0, np.arange(217) + 20.0, indexing="ij")  # fixed pixels in the moved frame
    r = np.hypot(x - CENTRE[0], y - CENTRE[1])[slices.mask]
    expected = float(np.mean(2 * r * math.sin(math.radians(5.0))))
    assert _identity_error(slices, ROTATED) == pytest.approx(expected, rel=1e-6)
