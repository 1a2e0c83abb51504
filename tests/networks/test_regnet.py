"""bundle/networks/regnet.py: MultiModalRegNet is the identity at initialisation, shapes, composition, 2D and 3D."""

import pytest
import torch
from monai.networks.blocks import Warp

from bundle.networks import MultiModalRegNet, compose_ddf

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


def test_compose_ddf_of_translations_adds():
    warp = Warp()
    a = torch.zeros(1, 2, 16, 16)
    a[:, 0] = 1.5
    b = torch.zeros(1, 2, 16, 16)
    b[:, 1] = -2.0
    assert torch.allclose(compose_ddf(a, b, warp), a + b, atol=1e-5)


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


@pytest.mark.parametrize("dims,down,divisor", [(2, 0, 8), (2, 1, 16), (3, 2, 32)])
def test_size_divisor_counts_every_downsampling(dims, down, divisor):
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), input_downsample=down)  # 2 encoder + 1 affine + down
    assert net.size_divisor == divisor
    size = (divisor, 2 * divisor) if dims == 2 else (2 * divisor,) * 3
    out = net(torch.rand(1, 1, *size), torch.rand(1, 1, *size), bidirectional=False, synthesis=False)
    assert out.forward.ddf.shape == (1, dims, *size)


def test_one_direction_without_synthesis_leaves_the_optional_outputs_empty():
    net = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(m, f, bidirectional=False, synthesis=False)
    assert out.backward is None and out.cycle_moving is None and out.cycle_fixed is None
    assert out.forward.synth is None and out.forward.synth_warped is None
    full = net(m, f)
    assert torch.allclose(out.forward.ddf, full.forward.ddf, atol=1e-6)  # the forward direction does not depend on the rest
    flat = out.as_dict()
    assert not any(k.startswith("backward_") for k in flat) and flat["cycle_moving"] is None


def test_composed_field_warps_as_the_two_stages_in_sequence():
    net = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    with torch.no_grad():
        net.affine_head.fc.bias[2] = 0.25  # 4 voxels along axis 0 on a 32-voxel grid
        net.deformable_head.output.conv.bias[1] = 0.5  # 1 voxel along axis 1 after integration and upsampling
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(m, f, bidirectional=False, synthesis=False).forward
    assert torch.allclose(out.ddf_affine[0, 0], torch.full((32, 32), 4.0)) and out.ddf_affine[0, 1].abs().max() < 1e-6
    assert torch.allclose(out.ddf_deformable[0], torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 32, 32), atol=1e-2)
    warp = Warp(mode="bilinear", padding_mode="border")
    assert torch.allclose(out.ddf, out.ddf_affine + out.ddf_deformable, atol=1e-5)  # translations add
    # one resampling by the composed field equals resampling by the affine then by the deformable field
    # (up to rounding here, because the affine part is an integer translation; a voxel off would differ by ~0.3)
    assert torch.allclose(out.warped, warp(warp(m, out.ddf_affine), out.ddf_deformable), atol=1e-3)
    assert torch.allclose(out.warped_affine, warp(m, out.ddf_affine), atol=1e-6)


@pytest.mark.parametrize("affine", ["regression", "keypoints"])
@pytest.mark.parametrize("dims,size,down", CASES)
def test_affine_and_velocity_are_the_forward_pass_ones(affine, dims, size, down):
    """What a refinement starts from, without the full-resolution composition: the forward pass's theta and velocity."""
    torch.manual_seed(1)
    net = MultiModalRegNet(dims, encoder_channels=(4, 8, 8), input_downsample=down, affine=affine, num_keypoints=8).eval()
    with torch.no_grad():  # away from the identity start, so the check means something
        torch.nn.init.normal_(net.deformable_head.output.conv.weight, std=0.2)
        for p in net.affine_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m, f = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
        out = net(m, f, bidirectional=False, synthesis=False).forward
        theta, velocity = net.affine_and_velocity(m, f)
    assert float(out.velocity.abs().max()) > 0.05 and float((out.theta[:, :, :dims] - torch.eye(dims)).abs().max()) > 1e-3
    torch.testing.assert_close(theta, out.theta, atol=1e-5, rtol=0)
    torch.testing.assert_close(velocity, out.velocity, atol=1e-5, rtol=0)
