"""bundle/networks/bundle_net.py: the single-tensor RegistrationBundleNet, StructuredRegistration, structured_forward."""

import pytest
import torch

from bundle.networks import RegistrationBundleNet

torch.manual_seed(0)

CASES = [(2, (32, 48), 0), (3, (32, 32, 48), 1)]


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


def test_single_tensor_output_is_the_moving_image_warped_by_the_field():
    from monai.networks.blocks import Warp

    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8))
    with torch.no_grad():
        net.affine_head.fc.bias[5] = -0.25  # a translation of -4 voxels along axis 1
    x = torch.rand(1, 2, 32, 32)
    y = net(x)
    assert float(y[0, 2].mean()) == pytest.approx(-4.0, abs=0.05)
    assert torch.allclose(y[:, :1], Warp(mode="bilinear", padding_mode="border")(x[:, :1], y[:, 1:]), atol=1e-6)


def test_structured_registration_forwards_to_register():
    from bundle.networks import StructuredRegistration

    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8))
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    ref = net.register(m, f)
    out = StructuredRegistration(net)(m, f)
    for name in ("theta", "ddf", "warped", "synth"):
        assert torch.equal(getattr(out.forward, name), getattr(ref.forward, name)), name
        assert torch.equal(getattr(out.backward, name), getattr(ref.backward, name)), name
    assert torch.equal(out.cycle_moving, ref.cycle_moving)
    # the adaptor adds one prefix and nothing else: checkpoints of the bare network stay un-prefixed
    assert set(StructuredRegistration(net).state_dict()) == {f"network.{k}" for k in net.state_dict()}


def test_structured_forward_calls_register_or_forward():
    from bundle.networks import MultiModalRegNet, structured_forward

    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    bundle_net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8))
    out = structured_forward(bundle_net, m, f, bidirectional=False)
    assert out.backward is None and out.forward.synth is not None
    assert torch.equal(out.forward.ddf, bundle_net.register(m, f, bidirectional=False).forward.ddf)
    plain = MultiModalRegNet(2, encoder_channels=(4, 8, 8))
    plain.load_state_dict(bundle_net.state_dict())  # same parameters, plain forward
    assert torch.equal(structured_forward(plain, m, f, bidirectional=False).forward.ddf, out.forward.ddf)
