"""bundle/networks/encoder.py: ModalityEncoder's feature pyramid (each level halves the grid) and conv_block, 2D and 3D."""

import pytest
import torch

from bundle.networks.encoder import ModalityEncoder, conv_block

torch.manual_seed(0)


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 24, 32))])
@pytest.mark.parametrize("channels", [(4, 8, 8), (8, 16, 32, 32)])
def test_pyramid_halves_the_grid_at_each_level(dims, size, channels):
    enc = ModalityEncoder(dims, 1, channels)
    feats = enc(torch.rand(2, 1, *size))
    assert enc.depth == len(channels) - 1 and len(feats) == len(channels)
    for level, (feat, ch) in enumerate(zip(feats, channels)):
        assert feat.shape == (2, ch, *[s // 2**level for s in size]), level


def test_odd_sizes_round_up_and_input_channels_are_honoured():
    enc = ModalityEncoder(2, in_channels=3, channels=(4, 8, 8))
    feats = enc(torch.rand(1, 3, 33, 20))
    assert [tuple(f.shape[2:]) for f in feats] == [(33, 20), (17, 10), (9, 5)]  # stride-2 "same" convolutions: ceil(n / 2)
    with pytest.raises(RuntimeError):
        enc(torch.rand(1, 1, 32, 32))


def test_features_do_not_depend_on_the_intensity_scale():
    # instance normalisation after every convolution: a positive rescaling of the image leaves every level unchanged
    enc = ModalityEncoder(3, channels=(4, 8, 8))
    x = torch.rand(1, 1, 16, 16, 16)
    for a, b in zip(enc(x), enc(4.0 * x)):
        assert torch.allclose(a, b, atol=1e-3)
    # ...because each convolution is instance-normalised (zero mean, unit variance per channel) before its LeakyReLU
    last = enc.levels[0][1]
    pre = last.adn.N(last.conv(enc.levels[0][0](x)))
    assert torch.allclose(pre.mean(dim=(2, 3, 4)), torch.zeros(1, 4), atol=1e-5)
    assert torch.allclose(pre.var(dim=(2, 3, 4), unbiased=False), torch.ones(1, 4), atol=1e-3)
    assert torch.allclose(last.adn.A(pre), enc(x)[0])


def test_same_weights_encode_both_images_of_a_batch_independently():
    enc = ModalityEncoder(2, channels=(4, 8, 8))
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    joint = enc(torch.cat([a, b]))
    for fa, fj in zip(enc(a), joint):
        assert torch.allclose(fa, fj[:1], atol=1e-5)  # batched convolutions round differently


def test_conv_block_strides_only_its_first_convolution():
    block = conv_block(2, 3, 5, strides=2)
    assert len(block) == 2
    assert block[0].conv.stride == (2, 2) and block[1].conv.stride == (1, 1)
    assert block[0].conv.in_channels == 3 and block[1].conv.out_channels == 5
    x = torch.rand(2, 3, 16, 12)
    y = block(x)
    assert y.shape == (2, 5, 8, 6)
    pre = block[1].adn.N(block[1].conv(block[0](x)))  # instance norm, then LeakyReLU with slope 0.2
    assert torch.allclose(y, torch.where(pre > 0, pre, 0.2 * pre), atol=1e-6)
    assert float(y.min()) < 0.0


def test_invalid_dims_raise():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        ModalityEncoder(1)
