"""``bundle.explain.deletion``: blurring the evidence changes the scalar more than blurring elsewhere."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bundle.explain.deletion import deletion_changes, deletion_check, random_mask, shifted_mask, top_mask
from bundle.explain.gradcam import StageExplainer
from bundle.explain.localisation import box_mask


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


def test_masks_and_changes_of_a_known_scalar():
    """The scalar is the mean of channel 0 inside a region: blurring the region changes it, elsewhere not."""
    g = torch.Generator().manual_seed(0)
    attr = torch.zeros(1, 1, 16, 16)
    attr[..., :4, :4] = torch.rand(1, 1, 4, 4, generator=g) + 1.0
    top = top_mask(attr, 16)
    assert torch.equal(top, (attr > 0).float())
    rnd = random_mask(attr.shape, 16, g)
    assert int(rnd.sum()) == 16
    shifted = shifted_mask(top, g)
    assert int(shifted.sum()) == 16 and not torch.equal(shifted, top)
    x = torch.zeros(1, 2, 16, 16)
    x[:, 0, :4, :4] = 1.0

    def value(y):
        return float(y[0, 0, :4, :4].mean())

    v0, top_change, rand_change = deletion_changes(value, x, attr, 16, 2.0, (0,), 4, "shifted", g)
    assert v0 == 1.0 and top_change > 0.3 and rand_change < 0.05


def test_network_scalar_counts_only_what_the_prediction_changes():
    """A network that predicts the identity whatever it sees: blurring the moving image changes the
    similarity by the blur itself (``scalar="perturbed"``) but not through the network (``"network"``)."""
    from explain_helpers import anatomy, tiny_network

    net = tiny_network(0).eval()  # heads start at the identity: the prediction does not depend on the input
    mov, fix = anatomy(3)
    ex = StageExplainer.for_stage(net, "encoder", "similarity")
    x = torch.cat([mov, fix], 1)
    assert torch.allclose(ex.scalar_on_reference(x, x), ex.scalar(mov, fix))
    attr = torch.rand(1, 1, *mov.shape[2:], generator=torch.Generator().manual_seed(0))
    perturbed = deletion_check(ex, mov, fix, attr, perturb="moving", n_random=2, scalar="perturbed")
    network = deletion_check(ex, mov, fix, attr, perturb="moving", n_random=2, scalar="network")
    assert perturbed["top_change"] > 1e-3 and network["top_change"] < 1e-4 and network["scalar"] == "network"
    with pytest.raises(ValueError, match="scalar"):
        deletion_check(ex, mov, fix, attr, scalar="clean")
    with pytest.raises(ValueError, match="same shape"):
        ex.scalar_on_reference(x, x[..., :-1])
