"""``bundle.explain.randomisation``: maps of re-initialised networks decorrelate; scopes re-initialise what they say."""

import math

import pytest
import torch

from bundle.explain.gradcam import StageExplainer
from bundle.explain.randomisation import randomisation_check, randomised_copy, spearman


@pytest.mark.parametrize("stage,target", [("affine", "translation_x"), ("deformable", "displacement_rms"), ("encoder", "similarity")])
def test_randomisation_decorrelates_the_maps(fitted, stage, target):
    net, (mov, fix, _, _) = fitted
    ex = StageExplainer.for_stage(net, stage, target)
    for k in (0, 1, 4):
        rho = randomisation_check(ex, mov[k : k + 1], fix[k : k + 1])["spearman"]
        assert math.isfinite(rho) and abs(rho) < 0.5, (stage, k, rho)


def test_randomised_copy_scopes(fitted):
    net, (mov, fix, _, _) = fitted
    ref = dict(net.named_parameters())

    def changed(copy):
        return {n for n, p in copy.named_parameters() if not torch.equal(p, ref[n])}

    everything = changed(randomised_copy(net, "all"))
    layer = changed(randomised_copy(net, "layer", "deformable_head.decoder.blocks[-1]"))
    down = changed(randomised_copy(net, "downstream", "affine_head.conv", example=(mov[:1], fix[:1])))
    assert layer and all(n.startswith("deformable_head.decoder.blocks.0.") for n in layer)
    assert any(n.startswith("affine_head.conv") for n in down) and any(n.startswith("deformable_head") for n in down)
    assert not any(n.startswith("encoder") for n in down)  # the encoder computes the affine head's input
    assert layer < everything and down < everything
    assert all(torch.equal(p, ref[n]) for n, p in net.named_parameters())  # the original is untouched


def test_spearman_is_undefined_for_constant_maps():
    assert math.isnan(spearman(torch.zeros(10), torch.rand(10)))
    assert spearman(torch.arange(10.0), torch.arange(10.0) ** 3) == pytest.approx(1.0)
