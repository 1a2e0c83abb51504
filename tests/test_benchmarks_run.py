"""The benchmark's ground-truth row (the pair's own motion, scored like every method) and its refiner overrides."""

from __future__ import annotations

import pytest
from test_bundle import network_from_config

from benchmarks.run import ground_truth_result, run_method
from bundle.data.datalist import read_datalist
from bundle.data.sample import ensure_sample_datalist
from bundle.evaluate import PairData, _identity_result
from bundle.inference import PairRegistrar


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    datalist = ensure_sample_datalist(tmp_path_factory.mktemp("s"), spatial_dims=2, spacing_mm=2.0, n_train=0, n_val=0, n_test=1, seed=5)
    return PairData(PairRegistrar(network_from_config(2)), read_datalist(datalist, "test")[0])


def test_ground_truth_has_no_error_and_beats_identity(pair):
    truth = pair.score(*run_method("ground_truth", pair, registrar=None))
    ident = _identity_result(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine)
    base = pair.score(ident["ddf_mm"], ident["warped"])
    assert truth["disp_error_mean_mm"] < 1e-6 < base["disp_error_mean_mm"]
    assert truth["dice_mean"] > base["dice_mean"] + 0.1 and truth["dice_mean"] < 1.0


def test_ground_truth_needs_a_field(pair):
    gt, pair.gt = pair.gt, None
    try:
        with pytest.raises(ValueError, match="no ground-truth field"):
            ground_truth_result(pair)
    finally:
        pair.gt = gt


def test_refiner_overrides_change_only_what_they_name():
    from benchmarks.run import refiner_with, shipped_refiner_kwargs

    shipped = shipped_refiner_kwargs()
    fast = refiner_with({"samples": 50000, "deformable_iterations": [15, 20, 10]})
    assert fast.samples == [50000] * 3 and fast.deformable_iterations == [15, 20, 10]
    assert fast.levels == shipped["levels"] and fast.velocity_upsample == shipped["velocity_upsample"] == 0.5
    with pytest.raises(TypeError, match="unknown refiner keyword"):
        refiner_with({"sample": 5})
