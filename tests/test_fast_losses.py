"""Fast MI and regularisers equal MONAI's in value and gradient, 2D and 3D, random and real inputs."""

import pytest
import torch
from monai.losses import BendingEnergyLoss, DiffusionLoss, GlobalMutualInformationLoss

from bundle.losses import BendingEnergy, Diffusion, SparseMutualInformationLoss


def _value_and_grad(loss, *inputs):
    leaf = inputs[0].detach().clone().requires_grad_(True)
    value = loss(leaf, *inputs[1:])
    value.backward()
    return value.detach(), leaf.grad


def _templates(spatial_dims: int, dtype=torch.float32):
    """Real MRI: the SPM T1 and T2 templates at 4 mm (3D) or their central axial slice (2D)."""
    from bundle.data.templates import source_volumes

    volumes, _ = source_volumes(4.0)
    t1, t2 = (torch.as_tensor(volumes[k].copy(), dtype=dtype)[None, None] for k in ("t1", "t2"))
    if spatial_dims == 2:
        t1, t2 = t1[..., t1.shape[-1] // 2], t2[..., t2.shape[-1] // 2]
    return t2, t1


@pytest.mark.parametrize("shape", [(1, 1, 40, 36), (1, 1, 20, 18, 16)])
@pytest.mark.parametrize("num_bins", [16, 32])
def test_mi_matches_monai_on_random_inputs(shape, num_bins):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64) ** 2
    ref, ref_grad = _value_and_grad(GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=num_bins), pred, target)
    val, grad = _value_and_grad(SparseMutualInformationLoss(num_bins=num_bins), pred, target)
    assert float(val) == pytest.approx(float(ref), rel=1e-6)
    assert torch.allclose(grad, ref_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mi_matches_monai_on_real_mri(spatial_dims):
    pred, target = _templates(spatial_dims)
    monai_mi, ours = GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=32), SparseMutualInformationLoss(num_bins=32)
    ref = float(monai_mi(pred, target))
    assert ref < -0.3  # T2 and T1 of one anatomy share information
    assert abs(float(ours(pred, target)) - ref) <= 1e-4 * abs(ref)  # float32, as in training
    pred, target = _templates(spatial_dims, torch.float64)
    ref, ref_grad = _value_and_grad(monai_mi, pred, target)
    val, grad = _value_and_grad(ours, pred, target)
    assert float(val) == pytest.approx(float(ref), rel=1e-7)  # MONAI keeps the target histogram in float32
    assert torch.allclose(grad, ref_grad, rtol=1e-6, atol=1e-7 * float(ref_grad.abs().max()))


def test_mi_splits_exact_box_window_ties_as_monai():
    # 8 bins: bin coordinate = 4 * value + 2, so 0.125 and 0.375 fall exactly between two bins
    target = torch.tensor([0.0, 0.125, 0.375, 1.0, 0.625, 0.125] * 6, dtype=torch.float64).view(1, 1, 6, 6)
    pred = torch.linspace(0, 1, 36, dtype=torch.float64).view(1, 1, 6, 6) ** 1.5
    ref, ref_grad = _value_and_grad(GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=8), pred, target)
    val, grad = _value_and_grad(SparseMutualInformationLoss(num_bins=8), pred, target)
    assert float(val) == pytest.approx(float(ref), abs=1e-7)  # MONAI keeps the target histogram in float32
    assert torch.allclose(grad, ref_grad, atol=1e-7 * float(ref_grad.abs().max()))


def test_mi_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64), torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)
    loss = SparseMutualInformationLoss(num_bins=12)
    _, grad = _value_and_grad(loss, pred, target)
    direction = torch.randn(pred.shape, generator=g, dtype=torch.float64)
    extreme = (pred == pred.max()) | (pred == pred.min())  # the histogram range moves with these: keep them
    direction[extreme] = 0.0
    eps = 1e-6
    numeric = (loss(pred + eps * direction, target) - loss(pred - eps * direction, target)) / (2 * eps)
    assert float(numeric) == pytest.approx(float((grad * direction).sum()), rel=1e-5)


def test_mi_of_a_batch_is_the_mean_of_its_samples():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(3, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    pred[1] *= 0.3  # different intensity ranges per sample
    loss = SparseMutualInformationLoss(num_bins=16)
    each = torch.stack([loss(pred[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert torch.allclose(SparseMutualInformationLoss(16, reduction="none")(pred, target), each, atol=1e-6)
    assert float(loss(pred, target)) == pytest.approx(float(each.mean()), abs=1e-6)


def test_mi_prefers_aligned_images():
    moving, fixed = _templates(2)
    loss = SparseMutualInformationLoss(num_bins=32)
    assert float(loss(moving, fixed)) < float(loss(torch.roll(moving, 6, dims=-1), fixed)) - 0.1


@pytest.mark.parametrize("shape", [(2, 2, 20, 23), (2, 3, 12, 14, 11)])
@pytest.mark.parametrize("ours, theirs", [(BendingEnergy, BendingEnergyLoss), (Diffusion, DiffusionLoss)])
def test_regularisers_match_monai(shape, ours, theirs):
    field = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, ref_grad = _value_and_grad(theirs(), field)
    val, grad = _value_and_grad(ours(), field)
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
        ref, ref_grad = _value_and_grad(theirs(), field)
        val, grad = _value_and_grad(ours(), field)
        assert float(val) == pytest.approx(float(ref), rel=1e-10)
        assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
