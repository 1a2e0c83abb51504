"""bundle/networks/decoder.py: PyramidDecoder output level and channels, SynthesisDecoder images in (0, 1), 2D and 3D."""

import pytest
import torch

from bundle.networks import ModalityEncoder, PyramidDecoder, SynthesisDecoder

torch.manual_seed(0)

CHANNELS = (4, 8, 16)


def _pyramid(dims, size, channels=CHANNELS, batch=2):
    return [torch.randn(batch, c, *[s // 2**i for s in size]) for i, c in enumerate(channels)]


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 24))])
@pytest.mark.parametrize("out_level", [0, 1, 2])
def test_pyramid_decoder_outputs_at_its_level(dims, size, out_level):
    dec = PyramidDecoder(dims, CHANNELS, out_level=out_level)
    assert len(dec.blocks) == len(CHANNELS) - 1 - out_level
    assert dec.out_channels == CHANNELS[out_level]  # by default each block has the channels of its skip
    y = dec(_pyramid(dims, size))
    assert y.shape == (2, CHANNELS[out_level], *[s // 2**out_level for s in size])


def test_pyramid_decoder_level_of_the_coarsest_input_is_that_input():
    feats = _pyramid(2, (32, 32))
    dec = PyramidDecoder(2, CHANNELS, out_level=len(CHANNELS) - 1)
    assert len(dec.blocks) == 0 and torch.equal(dec(feats), feats[-1])


def test_pyramid_decoder_custom_channels_and_skip_sizes():
    dec = PyramidDecoder(2, CHANNELS, decoder_channels=(6, 3))
    assert dec.out_channels == 3
    assert dec.blocks[0][0].conv.in_channels == 16 + 8 and dec.blocks[1][0].conv.in_channels == 6 + 4
    feats = ModalityEncoder(2, channels=CHANNELS)(torch.rand(1, 1, 33, 20))  # odd sizes: upsampling follows each skip
    assert dec(feats).shape == (1, 3, 33, 20)


def test_pyramid_decoder_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="deeper than the pyramid"):
        PyramidDecoder(2, CHANNELS, out_level=3)
    with pytest.raises(ValueError, match="expected 2 decoder_channels"):
        PyramidDecoder(2, CHANNELS, decoder_channels=(8,))


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 24))])
@pytest.mark.parametrize("out_level", [0, 1])
def test_synthesis_decoder_shape_and_sigmoid_range(dims, size, out_level):
    dec = SynthesisDecoder(dims, CHANNELS, out_channels=2, out_level=out_level)
    y = dec(_pyramid(dims, size))
    assert y.shape == (2, 2, *[s // 2**out_level for s in size])
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0


def test_synthesis_decoder_is_the_sigmoid_of_a_1x1_projection():
    dec = SynthesisDecoder(2, CHANNELS)
    feats = _pyramid(2, (32, 32))
    hidden = dec.decoder(feats)
    w, b = dec.output.conv.weight, dec.output.conv.bias
    assert w.shape[2:] == (1, 1)
    expected = torch.sigmoid(torch.einsum("oc,bchw->bohw", w[:, :, 0, 0], hidden) + b.view(1, -1, 1, 1))
    assert torch.allclose(dec(feats), expected, atol=1e-6)
    with torch.no_grad():  # a saturated projection stays inside [0, 1]
        dec.output.conv.bias.fill_(50.0)
    y = dec(feats)
    assert float(y.max()) <= 1.0 and float(y.min()) > 0.99
    with torch.no_grad():
        dec.output.conv.bias.fill_(-50.0)
    assert float(dec(feats).min()) >= 0.0 and float(dec(feats).max()) < 0.01
