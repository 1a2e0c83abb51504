"""bundle/losses/regularisers.py: BendingEnergy and Diffusion equal MONAI's losses in value and gradient, 2D and 3D."""

import pytest
import torch
from monai.losses import BendingEnergyLoss, DiffusionLoss

from bundle.losses import BendingEnergy, Diffusion

from conftest import value_and_grad


@pytest.mark.parametrize("shape", [(2, 2, 20, 23), (2, 3, 12, 14, 11)])
@pytest.mark.parametrize("ours, theirs", [(BendingEnergy, BendingEnergyLoss), (Diffusion, DiffusionLoss)])
def test_regularisers_match_monai(shape, ours, theirs):
    field = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, ref_grad = value_and_grad(theirs(), field)
    val, grad = value_and_grad(ours(), field)
    assert float(val) == pytest.approx(float(ref), rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert float(ours(reduction="sum")(field)) == pytest.approx(float(theirs(reduction="sum")(field)), rel=1e-10)


def test_regulariser_gradient_passes_gradcheck():
    field = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BendingEnergy(), (field,))
    assert torch.autograd.gradcheck(Diffusion(), (field,))


def test_regularisers_on_known_fields():
    z = torch.arange(10, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(z, z, z, indexing="ij"))[None]
    assert float(BendingEnergy()(0.3 * grid + 1.0)) == pytest.approx(0.0, abs=1e-8)  # affine: no bending
    assert float(Diffusion()(0.3 * grid)) == pytest.approx(0.09, rel=1e-5)  # (0.3)^2 on the diagonal, one per component
    quadratic = torch.zeros(1, 3, 10, 10, 10)
    quadratic[:, 0] = grid[0, 0] ** 2  # d2u/dx2 = 2 everywhere: energy 4 in component 0, mean over 3 components
    assert float(BendingEnergy()(quadratic)) == pytest.approx(4.0 / 3.0, rel=1e-5)
    assert float(BendingEnergy()(quadratic.long())) == pytest.approx(4.0 / 3.0, rel=1e-5)


def test_regularisers_reject_wrong_fields():
    with pytest.raises(ValueError, match="channels"):
        BendingEnergy()(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="> 2"):
        Diffusion()(torch.zeros(1, 2, 2, 8))
    with pytest.raises(ValueError, match="2D or 3D"):
        Diffusion()(torch.zeros(1, 1, 8))


def test_regularisers_are_exact_across_cache_slabs(monkeypatch):
    from bundle.losses import regularisers

    monkeypatch.setattr(regularisers, "_SLAB_BYTES", 1)  # one plane per slab: every slab boundary exercised
    field = torch.randn(2, 3, 9, 7, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for ours, theirs in ((BendingEnergy, BendingEnergyLoss), (Diffusion, DiffusionLoss)):
        ref, ref_grad = value_and_grad(theirs(), field)
        val, grad = value_and_grad(ours(), field)
        assert float(val) == pytest.approx(float(ref), rel=1e-10)
        assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
