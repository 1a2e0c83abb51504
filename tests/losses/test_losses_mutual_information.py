"""bundle/losses/mutual_information.py: SparseMutualInformationLoss equals MONAI's B-spline MI in value and gradient."""

import pytest
import torch
from monai.losses import GlobalMutualInformationLoss

from bundle.losses import SparseMutualInformationLoss

from conftest import value_and_grad


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
    ref, ref_grad = value_and_grad(GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=num_bins), pred, target)
    val, grad = value_and_grad(SparseMutualInformationLoss(num_bins=num_bins), pred, target)
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
    ref, ref_grad = value_and_grad(monai_mi, pred, target)
    val, grad = value_and_grad(ours, pred, target)
    assert float(val) == pytest.approx(float(ref), rel=1e-7)  # MONAI keeps the target histogram in float32
    assert torch.allclose(grad, ref_grad, rtol=1e-6, atol=1e-7 * float(ref_grad.abs().max()))


def test_mi_splits_exact_box_window_ties_as_monai():
    # 8 bins: bin coordinate = 4 * value + 2, so 0.125 and 0.375 fall exactly between two bins
    target = torch.tensor([0.0, 0.125, 0.375, 1.0, 0.625, 0.125] * 6, dtype=torch.float64).view(1, 1, 6, 6)
    pred = torch.linspace(0, 1, 36, dtype=torch.float64).view(1, 1, 6, 6) ** 1.5
    ref, ref_grad = value_and_grad(GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=8), pred, target)
    val, grad = value_and_grad(SparseMutualInformationLoss(num_bins=8), pred, target)
    assert float(val) == pytest.approx(float(ref), abs=1e-7)  # MONAI keeps the target histogram in float32
    assert torch.allclose(grad, ref_grad, atol=1e-7 * float(ref_grad.abs().max()))


def test_mi_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64), torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)
    loss = SparseMutualInformationLoss(num_bins=12)
    _, grad = value_and_grad(loss, pred, target)
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


def test_window_derivatives_are_the_weights_slopes():
    from bundle.losses.mutual_information import cubic_bspline_derivatives, cubic_bspline_weights

    frac = torch.linspace(0, 1, 11, dtype=torch.float64, requires_grad=True)
    for w, slope in zip(cubic_bspline_weights(frac), cubic_bspline_derivatives(frac.detach())):
        (grad,) = torch.autograd.grad(w.sum(), frac, retain_graph=True)
        assert torch.allclose(grad, slope, atol=1e-12)
    assert float(sum(cubic_bspline_derivatives(frac.detach())).abs().max()) < 1e-12  # the weights sum to 1 everywhere


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mi_against_a_fixed_target_equals_the_loss(reduction):
    """``against(target)`` bins the target once (ties included); value and gradient are the loss's."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 10, 12, generator=g, dtype=torch.float64)
    target[0, 0, 0, :4] = torch.tensor([0.0, 0.125, 0.375, 1.0], dtype=torch.float64)  # exact ties at 8 bins
    loss = SparseMutualInformationLoss(num_bins=8, reduction=reduction)
    bound = loss.against(target)
    for _ in range(2):  # reusable
        pred = torch.rand(2, 1, 10, 12, generator=g, dtype=torch.float64)
        ref, ref_grad = value_and_grad(lambda p, t: loss(p, t).sum(), pred, target)
        val, grad = value_and_grad(lambda p, t: bound(p).sum(), pred, target)
        assert float(val) == float(ref) and torch.equal(grad, ref_grad)
    with pytest.raises(ValueError, match="differing shape"):
        bound(torch.rand(1, 1, 10, 12))
