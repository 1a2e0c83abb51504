"""bundle/networks/deformable_head.py: DeformableHead field shapes and initial zero field, field_to_ddf integration and upsampling."""

import math

import pytest
import torch
from monai.networks.blocks import DVF2DDF, Warp

from bundle.networks import DeformableHead, ModalityEncoder
from bundle.networks.deformable_head import field_to_ddf

torch.manual_seed(0)

CHANNELS = (4, 8, 8)
CASES = [(2, (32, 48)), (3, (16, 16, 24))]


def _features(dims, size, batch=1):
    enc = ModalityEncoder(dims, channels=CHANNELS)
    return enc(torch.rand(batch, 1, *size)), enc(torch.rand(batch, 1, *size))


def _constant(dims, size, values):
    return torch.tensor(values, dtype=torch.float32).view(1, dims, *([1] * dims)).expand(1, dims, *size).contiguous()


@pytest.mark.parametrize("dims,size", CASES)
@pytest.mark.parametrize("level", [0, 1, 2])
def test_field_at_its_level_and_ddf_on_the_image_grid(dims, size, level):
    head = DeformableHead(dims, CHANNELS, out_level=level)
    assert head.out_level == level
    ddf, field = head(*_features(dims, size, batch=2), size)
    assert field.shape == (2, dims, *[s // 2**level for s in size])
    assert ddf.shape == (2, dims, *size)


@pytest.mark.parametrize("dims,size", CASES)
def test_initial_head_predicts_a_zero_field(dims, size):
    head = DeformableHead(dims, CHANNELS)
    feats = _features(dims, size)
    ddf, field = head(*feats, size)
    assert float(head.output.conv.bias.abs().max()) == 0.0 and float(head.output.conv.weight.std()) < 1e-4
    assert float(field.abs().max()) < 1e-3 and float(ddf.abs().max()) < 1e-2  # near-zero initial weights: near identity
    with torch.no_grad():
        head.output.conv.weight.zero_()
    ddf, field = head(*feats, size)
    assert float(field.abs().max()) == 0.0 and float(ddf.abs().max()) == 0.0


@pytest.mark.parametrize("dims,size", CASES)
def test_constant_velocity_integrates_to_the_same_translation(dims, size):
    values = [1.5, -2.25, 0.75][:dims]
    velocity = _constant(dims, size, values)
    head = DeformableHead(dims, CHANNELS, out_level=0, integration_steps=7)
    assert isinstance(head.integrate, DVF2DDF)
    ddf = head.integrate(velocity)
    assert torch.allclose(ddf, velocity, atol=1e-4)  # exp of a constant velocity is the translation by it
    assert torch.allclose(field_to_ddf(velocity, size, head.integrate), velocity, atol=1e-4)


def test_integrated_velocity_is_inverted_by_its_negative():
    # a smooth velocity of up to 2 voxels: exp(v) and exp(-v) compose to the identity (diffeomorphic head)
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    velocity = torch.stack([2.0 * torch.sin(2 * math.pi * j / 32), 2.0 * torch.cos(2 * math.pi * i / 32)])[None]
    integrate = DeformableHead(2, CHANNELS).integrate
    forward, backward = integrate(velocity), integrate(-velocity)
    assert float((forward - velocity).abs().max()) > 0.1  # a non-constant velocity is not its own displacement
    warp = Warp(mode="bilinear", padding_mode="border")
    residual = (forward + warp(backward, forward))[:, :, 4:-4, 4:-4]  # away from the border clamping
    assert float(residual.abs().max()) < 0.05


@pytest.mark.parametrize("dims,size", CASES)
def test_coarse_field_is_upsampled_with_vectors_scaled_to_fine_voxels(dims, size):
    values = [0.5, -0.25, 1.0][:dims]
    coarse = _constant(dims, [s // 2 for s in size], values)
    ddf = field_to_ddf(coarse, size)  # no integration: upsample and scale only
    assert ddf.shape == (1, dims, *size)
    assert torch.allclose(ddf, _constant(dims, size, [2 * v for v in values]), atol=1e-6)
    anisotropic = field_to_ddf(_constant(2, (8, 8), [1.0, 1.0]), (16, 32))
    assert torch.allclose(anisotropic, _constant(2, (16, 32), [2.0, 4.0]), atol=1e-6)  # per-axis factors
    same = _constant(dims, size, values)
    assert field_to_ddf(same, size) is same


@pytest.mark.parametrize("integrate", [True, False])
def test_head_bias_gives_a_translation_on_the_image_grid(integrate):
    head = DeformableHead(2, CHANNELS, out_level=1, integrate=integrate)
    assert (head.integrate is None) == (not integrate)
    with torch.no_grad():
        head.output.conv.weight.zero_()
        head.output.conv.bias.copy_(torch.tensor([0.5, -1.0]))  # half-resolution voxels
    ddf, field = head(*_features(2, (32, 48)), (32, 48))
    assert torch.allclose(field, _constant(2, (16, 24), [0.5, -1.0]))
    assert torch.allclose(ddf, _constant(2, (32, 48), [1.0, -2.0]), atol=1e-4)  # full-resolution voxels


@pytest.mark.parametrize("shape", [(2, 2, 9, 7), (2, 3, 6, 7, 5), (1, 3, 12, 10, 8)])
def test_scaling_and_squaring_equals_monai_dvf2ddf(shape):
    """Value and gradient of MONAI's DVF2DDF (bilinear, border), bitwise, shapes changing between calls."""
    from bundle.networks.deformable_head import ScalingAndSquaring

    fast, reference = ScalingAndSquaring(7), DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")
    g = torch.Generator().manual_seed(len(shape))
    for scale in (0.5, 3.0):  # small and several-voxel velocities
        v = (scale * torch.randn(shape, generator=g)).requires_grad_(True)
        weights = torch.randn(shape, generator=g)
        ours = fast(v)
        (ours * weights).sum().backward()
        grad, v.grad = v.grad.clone(), None
        theirs = reference(v)
        (theirs * weights).sum().backward()
        assert torch.equal(ours, theirs) and torch.equal(grad, v.grad)


def test_decoder_channels_set_the_head_widths():
    """``deformable_channels`` (network) / ``decoder_channels`` (head): one width per decoding block, coarsest first."""
    from bundle.networks import MultiModalRegNet

    net = MultiModalRegNet(3, encoder_channels=CHANNELS, deformable_level=0, deformable_channels=(12, 6), integration_steps=3)
    head = net.deformable_head
    assert [b[0].conv.out_channels for b in head.decoder.blocks] == [12, 6] and head.output.conv.in_channels == 6
    out = net(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16), bidirectional=False, synthesis=False)
    assert out.forward.velocity.shape == (1, 3, 16, 16, 16) and out.forward.ddf.shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="expected 2 decoder_channels"):
        MultiModalRegNet(3, encoder_channels=CHANNELS, deformable_level=0, deformable_channels=(12,))
