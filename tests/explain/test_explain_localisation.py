"""``bundle.explain.localisation``: the deformable map concentrates where only the moving image was deformed."""

import pytest
import torch
from explain_helpers import BOX, BUMP_AMPLITUDE, sparse_anatomy

from bundle.explain.gradcam import StageExplainer
from bundle.explain.localisation import box_mask, default_box, local_deformation_case, localisation_check, localisation_fraction


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


def test_default_box_sits_on_the_structure():
    img = torch.zeros(1, 1, 32, 32)
    img[..., 20:28, 4:12] = torch.rand(8, 8)
    (a0, b0), (a1, b1) = default_box(img)
    assert b0 - a0 == 8 and b1 - a1 == 8
    assert 14 <= a0 <= 22 and 0 <= a1 <= 6
