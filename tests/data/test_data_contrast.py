"""MR contrast simulation from tissue probability maps."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.data.contrast import SEQUENCES, TISSUE_PARAMETERS_1P5T, signal_equation, simulate_contrast


def _pure_tissues() -> dict[str, np.ndarray]:
    """Four voxels: pure CSF, pure GM, pure WM, background."""
    return {
        "csf": np.array([[1.0, 0.0], [0.0, 0.0]]),
        "grey": np.array([[0.0, 1.0], [0.0, 0.0]]),
        "white": np.array([[0.0, 0.0], [1.0, 0.0]]),
    }


@pytest.mark.parametrize(
    "kind, order",
    [("t1", ("white", "grey", "csf")), ("t2", ("csf", "grey", "white")), ("flair", ("grey", "white", "csf"))],
)
def test_tissue_ordering(kind, order):
    image = simulate_contrast(_pure_tissues(), kind)
    value = {"csf": image[0, 0], "grey": image[0, 1], "white": image[1, 0]}
    assert value[order[0]] > value[order[1]] > value[order[2]]
    assert image.dtype == np.float32 and image.min() == 0.0 and image.max() == 1.0


def test_flair_suppresses_csf():
    image = simulate_contrast(_pure_tissues(), "flair")
    assert image[0, 0] < 0.05 and image[1, 1] == 0.0


def test_partial_volume_mixes_linearly():
    maps = {"csf": np.array([1.0, 0.0, 0.5, 0.0]), "white": np.array([0.0, 1.0, 0.5, 0.0])}
    image = simulate_contrast(maps, "t2")
    assert image[2] == pytest.approx((image[0] + image[1]) / 2, abs=1e-6)


def test_explicit_sequence_matches_preset_and_equation():
    maps = _pure_tissues()
    preset = SEQUENCES["pd"]
    explicit = simulate_contrast(maps, None, tr_ms=preset.tr_ms, te_ms=preset.te_ms)
    np.testing.assert_array_equal(explicit, simulate_contrast(maps, "pd"))
    params = [TISSUE_PARAMETERS_1P5T[t] for t in ("csf", "grey", "white")]
    signals = np.array([signal_equation(p.pd, p.t1_ms, p.t2_ms, preset.tr_ms, preset.te_ms) for p in params])
    expected = signals / signals.max()
    np.testing.assert_allclose([explicit[0, 0], explicit[0, 1], explicit[1, 0]], expected, rtol=1e-5)


def test_jitter_is_seeded():
    maps = {k: np.clip(v + 0.1, 0, 1) for k, v in _pure_tissues().items()}
    a = simulate_contrast(maps, "t2", rng=1, jitter=0.1)
    np.testing.assert_array_equal(a, simulate_contrast(maps, "t2", rng=1, jitter=0.1))
    assert not np.array_equal(a, simulate_contrast(maps, "t2", rng=2, jitter=0.1))


def test_aliases_and_errors():
    maps = _pure_tissues()
    aliased = {"gm": maps["grey"], "wm": maps["white"], "csf": maps["csf"]}
    np.testing.assert_array_equal(simulate_contrast(aliased, "t1"), simulate_contrast(maps, "t1"))
    with pytest.raises(ValueError, match="unknown contrast"):
        simulate_contrast(maps, "dwi")
    with pytest.raises(ValueError, match="unknown tissue"):
        simulate_contrast({"bone": maps["csf"]}, "t1")
    with pytest.raises(ValueError, match="tr_ms and te_ms"):
        simulate_contrast(maps, None, tr_ms=100.0)
