"""bundle/losses/composite.py: RegistrationLoss terms and inverse_consistency_error behave as documented, 2D and 3D."""

import pytest
import torch

from bundle.losses import RegistrationLoss, inverse_consistency_error
from bundle.networks import MultiModalRegNet


def _blobs(shape, shift=0):
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    c = [s / 2 for s in shape]
    c[0] += shift
    r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
    return (torch.exp(-r2 / 40) + 0.5 * torch.exp(-r2 / 8))[None, None]


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_inverse_consistency_zero_for_exact_inverse(shape):
    dims = len(shape)
    a = torch.zeros(1, dims, *shape)
    a[:, 0] = 2.0
    assert float(inverse_consistency_error(a, -a)) < 1e-8
    assert float(inverse_consistency_error(a, a)) == pytest.approx(16.0, rel=1e-4)


@pytest.mark.parametrize("similarity", ["mi", "lncc"])
def test_loss_terms_and_weights(similarity):
    net = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(m, f)
    terms = RegistrationLoss(2, similarity=similarity)(out, m, f)
    assert set(terms) == {"similarity", "synthesis", "cycle", "inverse", "smoothness", "loss"}
    assert torch.isclose(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))
    zero = RegistrationLoss(2, similarity=similarity, weights={"cycle": 0.0})(out, m, f)
    assert float(zero["cycle"]) == 0.0


def test_mi_similarity_prefers_aligned_cross_contrast_images():
    loss = RegistrationLoss(2, similarity="mi")
    fixed = _blobs((48, 48))
    aligned = 1.0 - fixed  # inverted contrast, same anatomy
    shifted = 1.0 - _blobs((48, 48), shift=8)
    mi = lambda a: float(loss.mi(a.clamp(0, 1), fixed.clamp(0, 1)))  # noqa: E731
    assert mi(aligned) < mi(shifted) - 0.1


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="similarity"):
        RegistrationLoss(2, similarity="ssd")
    with pytest.raises(ValueError, match="unknown loss weight"):
        RegistrationLoss(2, weights={"bending": 1.0})
    with pytest.raises(ValueError, match="smoothness"):
        RegistrationLoss(2, smoothness="tv")


@pytest.mark.parametrize("shape", [(32, 32), (24, 24, 24)])
def test_overlap_term_is_lowest_at_the_true_shift_and_needs_labels(shape):
    from types import SimpleNamespace

    dims = len(shape)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - s / 2 for s in shape], indexing="ij")
    r = sum(g**2 for g in grids).sqrt()
    fixed_label = ((r < 5).float() + (r < 9).float() + (r < 3).float())[None, None]  # labels 1..3, nested
    moving_label = torch.roll(fixed_label, 3, dims=2)  # moving(x) = fixed(x - 3 e0)
    loss = RegistrationLoss(dims, weights={"overlap": 1.0})
    true = torch.zeros(1, dims, *shape)
    true[:, 0] = 3.0
    zero = torch.zeros_like(true, requires_grad=True)
    at_true = loss.overlap(SimpleNamespace(ddf=true), moving_label, fixed_label)
    at_zero = loss.overlap(SimpleNamespace(ddf=zero), moving_label, fixed_label)
    assert float(at_true) < 0.02 < 0.2 < float(at_zero)
    at_zero.backward()
    assert zero.grad.abs().sum() > 0  # soft (bilinear) warp of one-hot labels: differentiable in the field
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), affine="keypoints", num_keypoints=4)
    image = torch.rand(1, 1, *shape)
    out = net(image, image, synthesis=False, deformable=False)
    with pytest.raises(ValueError, match="overlap term needs"):
        loss(out, image, image)
    terms = loss(out, image, image, moving_label, fixed_label)
    assert "overlap" in terms and torch.isclose(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_displacement_term_is_the_end_point_error_over_the_fixed_brain(shape):
    from types import SimpleNamespace

    dims = len(shape)
    gt = torch.zeros(1, dims, *shape)
    gt[:, 0] = 2.0
    label = torch.zeros(1, 1, *shape)
    label[(..., *[slice(4, 12)] * dims)] = 1
    loss = RegistrationLoss(dims, weights={"displacement": 1.0})
    assert float(loss.displacement(SimpleNamespace(ddf=gt.clone()), gt, label)) == pytest.approx(0.0, abs=1e-6)
    off = gt.clone()
    off[:, -1] = 1.5  # 1.5 voxels wrong inside and outside the brain
    off[(slice(None), slice(None), *[slice(0, 2)] * dims)] += 10.0  # and far wrong outside it only
    assert float(loss.displacement(SimpleNamespace(ddf=off), gt, label)) == pytest.approx(1.5, rel=1e-5)
    assert float(loss.displacement(SimpleNamespace(ddf=off), gt)) > 1.5  # without labels: the whole image
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), affine="keypoints", num_keypoints=4)
    image = torch.rand(1, 1, *shape)
    out = net(image, image, synthesis=False, deformable=False)
    with pytest.raises(ValueError, match="displacement term needs"):
        loss(out, image, image)
    terms = loss(out, image, image, gt_ddf=gt)
    assert float(terms["displacement"]) == pytest.approx(2.0, abs=0.2)  # the network's near-identity field vs a 2-voxel motion
