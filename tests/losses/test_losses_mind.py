"""bundle/losses/mind.py: MIND-SSC describes structure, not contrast; MINDSSCLoss prefers aligned pairs, 2D and 3D."""

import pytest
import torch
from torch.nn import functional as F

from bundle.losses.mind import MINDSSCLoss, mind_ssc


def _texture(shape, seed: int = 0) -> torch.Tensor:
    """Smoothed uniform noise rescaled to [0, 1], ``(1, 1, *shape)``: structure at every voxel, no flat regions."""
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    for _ in range(2):
        x = pool(F.pad(x, [2] * (2 * len(shape)), mode="replicate"), 5, stride=1)
    return (x - x.min()) / (x.max() - x.min())


def _ssd(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((mind_ssc(a) - mind_ssc(b)) ** 2).sum())


@pytest.mark.parametrize("shape, channels", [((2, 1, 40, 36), 4), ((2, 1, 16, 18, 20), 12)])
@pytest.mark.parametrize("radius, dilation", [(1, 1), (2, 2)])
def test_descriptor_shape_and_range(shape, channels, radius, dilation):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    desc = mind_ssc(image, radius=radius, dilation=dilation)
    assert desc.shape == (shape[0], channels, *shape[2:])
    assert float(desc.min()) > 0.0 and float(desc.max()) <= 1.0 + 1e-6
    # normalised per voxel: the closest neighbour pair has descriptor exactly 1
    assert torch.allclose(desc.amax(dim=1), torch.ones(shape[0], *shape[2:]), atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_affine_intensity_remapping_leaves_the_descriptor_unchanged(shape):
    x = _texture(shape)
    ref = mind_ssc(x)
    for y in (1.0 - x, 3.0 * x + 2.0):  # inverted contrast, rescaled contrast
        assert torch.allclose(mind_ssc(y), ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_monotone_remapping_is_much_closer_than_a_shift(shape):
    x = _texture(shape)
    shifted = _ssd(x, torch.roll(x, 2, dims=2))
    assert shifted > 0
    for y in (1.0 - x.sqrt(), x**2):  # a non-linear inverted and a non-linear monotone contrast
        assert _ssd(x, y) < 0.15 * shifted
    assert _ssd(x, 1.0 - x.sqrt()) < 0.05 * shifted
    assert _ssd(x, torch.roll(x, 4, dims=2)) > shifted  # a larger shift is further still


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_loss_is_lower_for_aligned_than_for_shifted_pairs(shape):
    fixed = _texture(shape)
    moving = 1.0 - fixed.sqrt()  # same anatomy, another contrast
    loss = MINDSSCLoss()
    assert float(loss(fixed, fixed)) == 0.0
    aligned = float(loss(moving, fixed))
    losses = [float(loss(torch.roll(moving, s, dims=2), fixed)) for s in (1, 2, 4)]
    assert aligned < 0.1 * losses[0]
    assert losses[0] < losses[1] < losses[2]  # grows with the misalignment


def test_loss_is_the_mean_squared_descriptor_difference():
    a, b = _texture((32, 32), seed=2), _texture((32, 32), seed=3)
    expected = float(((mind_ssc(a, 2, 2) - mind_ssc(b, 2, 2)) ** 2).mean())
    assert float(MINDSSCLoss(radius=2, dilation=2)(a, b)) == pytest.approx(expected, rel=1e-6)
    precomputed = MINDSSCLoss(descriptors=True)(mind_ssc(a), mind_ssc(b))
    assert float(precomputed) == pytest.approx(float(MINDSSCLoss()(a, b)), rel=1e-6)


def test_loss_gradient_is_finite_and_nonzero():
    moving = _texture((32, 32)).requires_grad_(True)
    MINDSSCLoss()(torch.roll(moving, 2, dims=2), _texture((32, 32))).backward()
    assert torch.isfinite(moving.grad).all() and float(moving.grad.abs().sum()) > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="single-channel"):
        mind_ssc(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="single-channel"):
        mind_ssc(torch.rand(1, 1, 16))
    with pytest.raises(ValueError, match="differ in shape"):
        MINDSSCLoss()(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 18))


@pytest.mark.parametrize("shape", [(24, 20), (12, 14, 10)])
def test_a_descriptor_does_not_depend_on_the_rest_of_its_batch(shape):
    """The variance clamp uses each sample's own mean: a flat image next to a textured one changes nothing."""
    textured = _texture(shape, seed=4) ** 3  # skewed, so that the clamp bounds matter
    flat = torch.full_like(textured, 0.5)
    flat[..., 0] = 0.0  # almost no structure: a tiny mean variance, which a batch mean would drag down
    alone = mind_ssc(textured)
    together = mind_ssc(torch.cat([textured, flat * 50.0]))[:1]
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


def test_mind_is_exported_from_the_losses_package():
    from bundle import losses

    assert losses.MINDSSCLoss is MINDSSCLoss and losses.mind_ssc is mind_ssc
