"""Sanity checks of the maps: model randomisation, deletion faithfulness, localisation."""

import math
from types import SimpleNamespace

import pytest
import torch
from explain_helpers import BOX, BUMP_AMPLITUDE, fitted_network, fitted_pairs, sparse_anatomy
from torch import nn

from bundle.explain.gradcam import StageExplainer
from bundle.explain.sanity import (
    box_mask,
    deletion_check,
    local_deformation_case,
    localisation_check,
    localisation_fraction,
    randomisation_check,
    randomised_copy,
    sanity_report,
    spearman,
)


@pytest.fixture(scope="module")
def fitted():
    return fitted_network(), fitted_pairs()


def test_fitted_network_registers_its_pairs(fitted):
    net, (mov, fix, g_aff, g) = fitted
    with torch.no_grad():
        out = net.register(mov, fix, bidirectional=False, synthesis=False).forward
    aff_err = (out.ddf_affine - g_aff).norm(dim=1).flatten(1).mean(1)
    assert float(aff_err.max()) < 0.25 * float(g_aff.norm(dim=1).flatten(1).mean(1).max())
    bump = (out.ddf_deformable - (g - g_aff)).norm(dim=1).flatten(1).max(1).values
    assert float(bump[1]) < 0.5 * BUMP_AMPLITUDE  # the local deformation is largely recovered


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


class _RegionNet(nn.Module):
    """A toy registration network whose translation_x is a function of the pair inside one region."""

    spatial_dims = 2

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.register_buffer("region", region)

    def register(self, moving, fixed, bidirectional=False, synthesis=False):
        feats = torch.tanh(self.conv(torch.cat([moving, fixed], 1)))
        t = (feats * self.region).flatten(1).sum(1) / self.region.sum()
        theta = torch.eye(2, 3).repeat(moving.shape[0], 1, 1)
        theta[:, 0, 2] = t
        return SimpleNamespace(forward=SimpleNamespace(theta=theta))


def test_deletion_check_rewards_maps_that_point_at_the_evidence():
    torch.manual_seed(0)
    region = box_mask((32, 32), [(4, 14), (18, 28)])
    net = _RegionNet(region)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    ex = StageExplainer(net, "conv", "translation_x")
    right = deletion_check(ex, m, f, attribution=region, fraction=0.05)
    wrong = deletion_check(ex, m, f, attribution=1 - region, fraction=0.05)
    assert right["ratio"] > 2 and wrong["ratio"] < 0.1
    with pytest.raises(ValueError, match="fraction"):
        deletion_check(ex, m, f, attribution=region, fraction=1.5)


@pytest.mark.parametrize("stage,target", [("affine", "translation_x"), ("affine", "translation_y"), ("deformable", "displacement_rms")])
def test_deletion_check_runs_on_the_fitted_network(fitted, stage, target):
    """The deletion ratio of real maps is computed and finite; it is *not* asserted to exceed 1.

    On networks this small (instance-optimised on six pairs in ~150 steps) the geometric
    mean of the ratio over the pairs was above 1 for some initial weights and below 1 for
    others, per stage and target, so an assertion would test the seed, not the code. The
    discriminating power of the check itself is tested with a known-faithful and a
    known-wrong map above; the shipped model's numbers go in ``docs/explanations.md``.
    """
    net, (mov, fix, _, _) = fitted
    ex = StageExplainer.for_stage(net, stage, target)
    res = deletion_check(ex, mov[:1], fix[:1], n_random=2)
    assert math.isfinite(res["ratio"]) and res["ratio"] > 0 and res["top_change"] > 0


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_deformable_map_concentrates_where_only_the_moving_image_was_deformed(fitted, sign, method):
    net, _ = fitted
    mov_a, fix_a = sparse_anatomy()
    ex = StageExplainer.for_stage(net, "deformable", "displacement_rms", method=method)
    res = localisation_check(ex, mov_a, fix_a, box=BOX, amplitude=sign * BUMP_AMPLITUDE)
    assert res["volume_fraction"] == pytest.approx(24 * 24 / 64**2)
    assert res["ratio"] > 3.0, res  # over 3x the mass a uniform map would put in the box


def test_localisation_fraction_and_case():
    attr = torch.zeros(1, 1, 16, 16)
    attr[..., 2:6, 2:6] = 1.0
    mask = box_mask((16, 16), [(0, 8), (0, 8)])
    res = localisation_fraction(attr, mask)
    assert res["mass_fraction"] == 1.0 and res["volume_fraction"] == 0.25 and res["ratio"] == 4.0
    img = torch.rand(1, 1, 32, 32)
    moving, box, ddf = local_deformation_case(img, [(8, 20), (8, 20)])
    outside = box == 0
    assert torch.allclose(moving[outside], img[outside], atol=0.05)
    assert float(ddf.norm(dim=1).max()) == pytest.approx(0.8 * 2.0, rel=0.1)
    with pytest.raises(ValueError, match="box"):
        box_mask((16, 16), [(0, 20), (0, 8)])


def test_sanity_report_keys(fitted):
    net, (mov, fix, _, g) = fitted
    from explain_helpers import _WARP

    rep = sanity_report(
        net, mov[:1], fix[:1], stages=["affine", "deformable"], targets={"affine": ["translation_y"]},
        aligned_moving=_WARP(mov[:1], g[:1]), n_random=2,
    )
    assert set(rep) == {"settings", "affine", "deformable"}
    assert set(rep["deformable"]) == {"displacement_rms"}
    row = rep["affine"]["translation_y"]
    for key in ("randomisation_spearman", "deletion_ratio", "deletion_ratio_shifted", "localisation_ratio"):
        assert math.isfinite(row[key]), key
