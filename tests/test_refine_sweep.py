"""The refinement sweep's variants: refiner keywords over the shipped ones, and the network-free start."""

from __future__ import annotations

import pytest

from benchmarks.refine_sweep import shipped_refiner_kwargs, variant_refiner


def test_variant_overrides_the_shipped_refiner_and_can_start_without_the_network():
    base = shipped_refiner_kwargs()
    shipped, from_network = variant_refiner(base, {})
    assert from_network and shipped.affine_iterations == [20, 15, 0] and shipped.multistart
    half, from_network = variant_refiner(base, {"network": False, "multistart": False, "affine_iterations": [10, 8, 0]})
    assert not from_network and half.affine_iterations == [10, 8, 0] and not half.multistart
    assert half.deformable_iterations == shipped.deformable_iterations  # what a variant does not name stays shipped
    with pytest.raises(TypeError):
        variant_refiner(base, {"no_such_setting": 1})
