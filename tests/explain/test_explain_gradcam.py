"""Stage maps: shapes in 2D and 3D, the one-call tap of layers called several times, options."""

import pytest
import torch
from captum.attr import LayerGradCam
from explain_helpers import random_network
from torch.nn import functional as F

from bundle.explain.gradcam import (
    STAGES,
    StageExplainer,
    default_targets,
    explain_pair,
    normalise_map,
    resolve_layer,
    stage_specs,
)
from bundle.explain.targets import make_target

from conftest import config_files


def _check_maps(explanations, shape):
    assert explanations
    for ex in explanations:
        a = ex.attribution
        name = f"{ex.stage}/{ex.target}"
        assert a.shape == shape, name
        assert torch.isfinite(a).all(), name
        assert float(a.min()) >= 0, name
        assert float(a.max()) > 0, name
        assert ex.value.shape == (shape[0],) and torch.isfinite(ex.value).all(), name


def test_every_default_stage_2d_maps_have_image_shape_and_are_valid():
    net = random_network(2, encoder_channels=(8, 16, 16), affine_channels=16)
    torch.manual_seed(1)
    m, f = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    exs = explain_pair(net, m, f, spacing_mm=2.0)
    _check_maps(exs, (2, 1, 64, 64))
    assert {e.stage for e in exs} == {"encoder", "decoder_ab", "decoder_ba", "affine", "deformable"}
    assert {e.target for e in exs if e.stage == "affine"} == {
        "translation_x_mm", "translation_y_mm", "rotation", "scale_x", "scale_y", "shear_xy"
    }
    norm = normalise_map(exs[0].attribution)
    assert float(norm.max()) == pytest.approx(1.0) and float(norm.min()) >= 0


def _network_3d():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("explain.json"))
    parser["spatial_dims"] = 3
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    for p in net.parameters():
        p.data += 0.01 * torch.randn_like(p)
    return net.eval()


def test_3d_maps_with_the_bundle_network_definition():
    net = _network_3d()
    assert net.input_downsample == 1
    torch.manual_seed(2)
    m, f = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    targets = {"affine": ["translation_z_mm", "rotation_x", "scale_y", "shear_xz"]}
    _check_maps(explain_pair(net, m, f, targets=targets, spacing_mm=2.0), (1, 1, 32, 32, 32))
    _check_maps(explain_pair(net, m, f, stages=["deformable"], spacing_mm=2.0, method="hirescam"), (1, 1, 32, 32, 32))


def test_encoder_map_is_the_grad_cam_of_its_first_call_on_the_input_pair():
    """Captum alone hooks the encoder's last call; the tap explains the call on (moving, fixed)."""
    net = random_network(2, encoder_channels=(8, 16, 16), affine_channels=16)
    torch.manual_seed(3)
    m, f = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    target = make_target("translation_x", 2)
    layer = net.encoder.levels[-1]
    # reference: Grad-CAM by hand on the activation of call 0 (batch cat([moving, fixed]))
    saved, calls = {}, []

    def hook(module, args, out):
        if not calls:
            saved["a"] = out
        calls.append(out.shape[0])

    handle = layer.register_forward_hook(hook)
    try:
        value = target(net.register(m, f, bidirectional=False, synthesis=False), m, f)
    finally:
        handle.remove()
    assert calls == [4, 2]  # the pair, then the affinely warped moving image
    (grad,) = torch.autograd.grad(value.sum(), saved["a"])
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True)).detach()
    ref = F.interpolate(cam[:2] + cam[2:], size=(32, 32), mode="bilinear", align_corners=False)
    ex = StageExplainer.for_stage(net, "encoder", target)
    ours = ex.attribute(m, f)
    assert float(ours.max()) > 0
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))
    moving_only = StageExplainer.for_stage(net, "encoder_moving", target).attribute(m, f)
    fixed_only = StageExplainer.for_stage(net, "encoder_fixed", target).attribute(m, f)
    assert torch.allclose(moving_only + fixed_only, ours, rtol=1e-4, atol=1e-6 * float(ref.max()))
    # plain Captum differentiates with respect to the last call, which theta does not depend on
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        LayerGradCam(ex.forward_func, layer).attribute(torch.cat([m, f], 1))


def test_unreached_call_index_and_unknown_layers_are_reported():
    net = random_network(2, encoder_channels=(4, 8, 8), affine_channels=8)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="call_index 5 was never reached"):
        StageExplainer(net, "affine_head.conv", "translation_x", call_index=5).attribute(m, f)
    with pytest.raises(ValueError, match="does not depend on call 1"):
        StageExplainer(net, "encoder.levels[-1]", "translation_x", call_index=1).attribute(m, f)
    with pytest.raises(ValueError, match="not found"):
        resolve_layer(net, "encoder.levels[7]")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_specs(["decoder"])
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        StageExplainer(net, "affine_head.conv", "translation_x").attribute(m, f[:, :, :16])
    assert resolve_layer(net, "encoder.levels.2") is resolve_layer(net, STAGES["encoder"].layer)


def test_stage_and_target_selection():
    specs = stage_specs({"deformable": {"method": "hirescam"}, "enc1": "encoder.levels[1]"})
    assert specs["deformable"].layer == STAGES["deformable"].layer and specs["deformable"].method == "hirescam"
    assert default_targets("enc1", specs["enc1"].layer) == ["similarity"]
    assert default_targets("deformable", spacing_mm=2.0, roi=True) == ["displacement_rms_mm", "displacement_rms_roi_mm"]
    net = random_network(2, encoder_channels=(4, 8, 8), affine_channels=8)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    roi = torch.zeros(1, 1, 32, 32)
    roi[..., 8:16, 8:16] = 1
    exs = explain_pair(net, m, f, stages=specs, targets={"deformable": ["displacement_roi"]}, roi_mask=roi)
    assert [(e.stage, e.target, e.method) for e in exs] == [
        ("deformable", "displacement_roi", "hirescam"), ("enc1", "similarity", "gradcam")
    ]
    _check_maps(exs, (1, 1, 32, 32))


def test_gradient_method_is_the_layer_gradient_magnitude_over_both_images():
    """``method="gradient"`` on the keypoint head's heat-map logits: ``sum_k |dy/dlogit_k(x)|`` of the
    moving and the fixed image's maps, summed, upsampled; it reads no activation."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("explain.json"))
    parser["spatial_dims"] = 2
    torch.manual_seed(4)
    net = parser.get_parsed_content("network_def", instantiate=True).eval()
    assert net.affine == "keypoints"
    m, f = torch.rand(1, 1, 48, 48), torch.rand(1, 1, 48, 48)
    target = make_target("translation_x_mm", 2, spacing_mm=2.0)
    saved = {}
    handle = net.affine_head.heatmap.register_forward_hook(lambda mod, args, out: saved.setdefault("logits", out))
    try:
        value = target(net.register(m, f, bidirectional=False, synthesis=False), m, f)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(value.sum(), saved["logits"])
    per_image = grad.abs().sum(1, keepdim=True)  # (2, 1, h, w): moving, fixed
    ref = F.interpolate(per_image[:1] + per_image[1:], size=(48, 48), mode="bilinear", align_corners=False)
    ex = StageExplainer(net, "affine_head.heatmap", target, method="gradient")
    ours = ex.attribute(m, f)
    assert float(ours.max()) > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))
    spec = stage_specs({"affine": {"layer": "affine_head.heatmap", "method": "gradient"}})["affine"]
    assert spec.method == "gradient" and StageExplainer.for_stage(net, spec, target).method == "gradient"


def test_affine_stage_explains_the_heat_maps_of_a_keypoint_head_and_grad_cam_of_a_regression_head():
    from bundle.explain.gradcam import spec_for_network

    keypoints = _network_3d()
    regression = random_network(2, encoder_channels=(4, 8, 8), affine_channels=8)
    assert keypoints.affine == "keypoints" and regression.affine == "regression"
    assert STAGES["affine"].layer == "affine_head.heatmap" and STAGES["affine"].method == "gradient"
    assert spec_for_network(keypoints, STAGES["affine"]) == STAGES["affine"]
    assert spec_for_network(regression, STAGES["affine"]).layer == "affine_head.conv"
    ex = StageExplainer.for_stage(regression, "affine", "translation_x")
    assert ex.layer_name == "affine_head.conv" and ex.method == "gradcam"
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    (explanation,) = explain_pair(regression, m, f, stages=["affine"], targets={"affine": "translation_x"})
    assert explanation.layer == "affine_head.conv" and explanation.method == "gradcam"
