"""Networks: identity at initialisation, affine algebra, composition, shapes, 2D and 3D."""

import pytest
import torch
from monai.networks.blocks import Warp

from bundle.networks import (
    AffineHead,
    MultiModalRegNet,
    RegistrationBundleNet,
    affine_to_ddf,
    compose_ddf,
)

torch.manual_seed(0)

CASES = [(2, (32, 48), 0), (3, (32, 32, 48), 1)]


@pytest.mark.parametrize("dims,size,down", CASES)
def test_untrained_network_is_identity(dims, size, down):
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), input_downsample=down)
    m, f = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = net(m, f)
    eye = torch.eye(dims).expand(2, dims, dims)
    assert torch.allclose(out.forward.theta[:, :, :dims], eye)
    assert out.forward.theta[:, :, dims].abs().max() == 0
    assert out.forward.ddf.abs().max() < 1e-2
    assert torch.allclose(out.forward.warped, m, atol=1e-2)


@pytest.mark.parametrize("dims,size,down", CASES)
def test_output_shapes_both_directions(dims, size, down):
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), input_downsample=down)
    m, f = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    out = net(m, f)
    for stage in (out.forward, out.backward):
        assert stage.theta.shape == (1, dims, dims + 1)
        for name in ("ddf_affine", "ddf_deformable", "ddf"):
            assert getattr(stage, name).shape == (1, dims, *size)
        for name in ("warped", "warped_affine", "synth", "synth_warped"):
            assert getattr(stage, name).shape == (1, 1, *size)
    assert out.cycle_moving.shape == m.shape and out.cycle_fixed.shape == f.shape
    assert 0 <= float(out.forward.synth.min()) and float(out.forward.synth.max()) <= 1
    flat = out.as_dict()
    assert "forward_theta" in flat and "backward_ddf" in flat


def test_affine_ddf_translation_moves_image_by_known_voxels():
    theta = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]])
    ddf = affine_to_ddf(theta, (20, 24))
    assert torch.allclose(ddf[0, 0], torch.full((20, 24), 3.0)) and torch.allclose(ddf[0, 1], torch.full((20, 24), -2.0))
    img = torch.zeros(1, 1, 20, 24)
    img[0, 0, 10, 12] = 1
    warped = Warp(mode="nearest")(img, ddf)
    assert warped[0, 0, 7, 14] == 1  # warped(x) = img(x + ddf)


def test_affine_ddf_rotation_about_centre():
    c, s = torch.cos(torch.tensor(0.3)), torch.sin(torch.tensor(0.3))
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]])
    ddf = affine_to_ddf(theta, (21, 21))
    assert ddf[0, :, 10, 10].abs().max() < 1e-6  # the centre is fixed
    with pytest.raises(ValueError, match="theta"):
        affine_to_ddf(theta, (21, 21, 21))


def test_compose_ddf_of_translations_adds():
    warp = Warp()
    a = torch.zeros(1, 2, 16, 16)
    a[:, 0] = 1.5
    b = torch.zeros(1, 2, 16, 16)
    b[:, 1] = -2.0
    assert torch.allclose(compose_ddf(a, b, warp), a + b, atol=1e-5)


def test_affine_head_starts_at_identity_and_scales_translation():
    head = AffineHead(2, 8)
    theta = head(torch.rand(1, 8, 4, 4), (32, 32))
    assert torch.allclose(theta, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    with torch.no_grad():
        head.fc.bias[2] = 0.5  # translation along axis 0, fraction of the half size
    assert torch.isclose(head(torch.rand(1, 8, 4, 4), (32, 32))[0, 0, 2], torch.tensor(8.0))


@pytest.mark.parametrize("dims,size,down", CASES)
def test_bundle_wrapper_single_tensor(dims, size, down):
    net = RegistrationBundleNet(dims, encoder_channels=(4, 8, 8), input_downsample=down).eval()
    x = torch.rand(1, 2, *size)
    y = net(x)
    assert y.shape == (1, 1 + dims, *size)
    ref = net.register(x[:, :1], x[:, 1:], bidirectional=False, synthesis=False).forward
    assert torch.allclose(y[:, 1:], ref.ddf)
    with pytest.raises(ValueError, match="expected"):
        net(torch.rand(1, 3, *size))


def test_bad_sizes_name_the_shape():
    net = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 30, 32), torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))


def test_gradients_reach_every_stage():
    from bundle.losses import RegistrationLoss

    net = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    loss = RegistrationLoss(2)(net(m, f), m, f)["loss"]
    loss.backward()
    for name in ("encoder", "decoder_ab", "decoder_ba", "affine_head", "deformable_head"):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
