"""Refinement (test-time instance optimisation) and initialisation, on tensors: 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.blocks import DVF2DDF, Warp

from bundle.initialise import centre_of_mass_translation, check_network_grid, check_network_size, check_overlap
from bundle.losses.mind import MINDSSCLoss, mind_ssc
from bundle.networks.affine_head import affine_to_ddf
from bundle.refine import InstanceRefiner


def _blobs(dims: int, n: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image in [0, 1] with structure everywhere inside a disc/ball."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1) + (n // 4,) * dims, generator=g)
    x = torch.nn.functional.interpolate(x, size=(n,) * dims, mode="bilinear" if dims == 2 else "trilinear", align_corners=False)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n)] * dims, indexing="ij")
    inside = (sum(a * a for a in axes) < 0.6).float()
    return (x - x.min()) / (x.max() - x.min()) * inside


def _rotation(dims: int, degrees: float, shift) -> torch.Tensor:
    r = math.radians(degrees)
    m = torch.eye(dims)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = math.cos(r), -math.sin(r), math.sin(r), math.cos(r)
    return torch.cat([m, torch.as_tensor(shift, dtype=torch.float32).view(dims, 1)], 1)[None]


IDENTITY = {2: _rotation(2, 0, [0, 0]), 3: _rotation(3, 0, [0, 0, 0])}


@pytest.mark.parametrize("samples,optimiser", [(0, "adam"), (2000, "adam"), (0, "lbfgs"), ([0, 2000], "lbfgs")])
@pytest.mark.parametrize("dims,n", [(2, 64), (3, 32)])
def test_affine_refinement_recovers_a_known_rotation_and_shift(dims, n, samples, optimiser):
    """Moving = fixed warped by 10 degrees + 3 voxels; refined from the identity, error < 0.5 voxel,
    with the similarity on every voxel, on 2000 sampled voxels per level, and on every voxel of the
    coarse level but 2000 of the fine one, by Adam and by L-BFGS (with a fifth of Adam's budget)."""
    fixed = _blobs(dims, n)
    truth = _rotation(dims, 10.0, [3.0] + [0.0] * (dims - 1))
    # moving(warp(x)) = fixed(x)  <=>  moving = fixed warped by the inverse map
    inv = torch.linalg.inv(torch.cat([truth[0], torch.eye(dims + 1)[-1:]], 0))[:dims][None]
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, affine_to_ddf(inv, fixed.shape[2:]))
    iterations = [150, 80] if optimiser == "adam" else [30, 15]
    refiner = InstanceRefiner(
        levels=[2, 1], affine_iterations=iterations, deformable_iterations=0, affine_lr=0.01, multistart=False, samples=samples,
        affine_optimiser=optimiser,
    )
    velocity = torch.zeros((1, dims) + (n // 4,) * dims)
    res = refiner.refine(moving, fixed, IDENTITY[dims], velocity)
    err = (affine_to_ddf(res.theta, fixed.shape[2:]) - affine_to_ddf(truth, fixed.shape[2:])).norm(dim=1)
    inside = fixed[:, 0] > 0
    assert float(err[inside].mean()) < 0.5, res.stats
    assert res.stats["affine"]["similarity_after"] > res.stats["affine"]["similarity_before"]
    assert [lv["optimiser"] for lv in res.stats["affine"]["levels"]] == [optimiser] * 2
    assert all(lv["iterations"] <= n for lv, n in zip(res.stats["affine"]["levels"], iterations))


@pytest.mark.parametrize("similarity,samples,optimiser", [("mi", 0, "adam"), ("mind", 0, "adam"), ("mi", 500, "adam"), ("mi", 0, "lbfgs")])
@pytest.mark.parametrize("dims", [2, 3])
def test_refinement_never_lowers_its_objective(dims, similarity, samples, optimiser):
    """From a perfect start, every stage keeps (or improves) the objective it optimises (Adam or L-BFGS velocity)."""
    n = 32
    fixed = _blobs(dims, n, seed=1)
    moving = 1.0 - fixed * 0.8  # another "contrast" of the same anatomy, already aligned
    refiner = InstanceRefiner(
        levels=[2, 1], affine_iterations=20, deformable_iterations=20, affine_similarity=similarity,
        deformable_similarity=similarity, velocity_lr=0.5, regularisation=0.01, samples=samples, velocity_optimiser=optimiser,
        affine_optimiser=optimiser,
    )
    res = refiner.refine(moving, fixed, IDENTITY[dims], torch.zeros((1, dims) + (n // 4,) * dims), DVF2DDF(num_steps=7))
    a, d = res.stats["affine"], res.stats["deformable"]
    assert a["similarity_after"] >= a["similarity_before"]
    assert d["objective_after"] <= d["objective_before"]
    for level in a["levels"]:
        assert level["similarity_after"] >= level["similarity_before"]
    for level in d["levels"]:
        assert level["optimiser"] == optimiser and level["objective_after"] <= level["objective_before"]


def test_disabled_refiner_returns_the_network_result_exactly():
    n = 16
    theta = _rotation(3, 4.0, [1.0, 0.5, 0.0])
    velocity = torch.randn(1, 3, 4, 4, 4) * 0.1
    integrate = DVF2DDF(num_steps=7)
    res = InstanceRefiner(enabled=False).refine(torch.rand(1, 1, n, n, n), torch.rand(1, 1, n, n, n), theta, velocity, integrate)
    assert torch.equal(res.theta, theta) and torch.equal(res.velocity, velocity)
    assert res.stats == {}


def test_refiner_rejects_bad_settings():
    with pytest.raises(ValueError, match="similarity must be one of"):
        InstanceRefiner(affine_similarity="ncc")
    with pytest.raises(ValueError, match="one value per level"):
        InstanceRefiner(levels=[4, 2], affine_iterations=[10])
    with pytest.raises(ValueError, match="needs the network's synthesised"):
        InstanceRefiner(levels=[1], affine_similarity="lncc").refine(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), IDENTITY[2], torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="velocity_optimiser must be one of"):
        InstanceRefiner(velocity_optimiser="sgd")
    with pytest.raises(ValueError, match="velocity_optimiser must be one of"):
        InstanceRefiner(levels=[4, 2], velocity_optimiser=["lbfgs", "newton"])
    with pytest.raises(ValueError, match="affine_optimiser must be one of"):
        InstanceRefiner(affine_optimiser="sgd")
    for bad in (0, -0.5):
        with pytest.raises(ValueError, match="velocity_upsample must be > 0"):
            InstanceRefiner(velocity_upsample=bad)
    with pytest.raises(ValueError, match="regulariser must be one of"):
        InstanceRefiner(regulariser="tv")
    with pytest.raises(ValueError, match="regularisation needs one value per level"):
        InstanceRefiner(levels=[4, 2, 1], regularisation=[10, 1])
    with pytest.raises(ValueError, match="regularisation must be >= 0"):
        InstanceRefiner(levels=[4, 2], regularisation=[10, -1])
    with pytest.raises(ValueError, match="num_bins must be > 4"):
        InstanceRefiner(levels=[4, 2], num_bins=4)
    with pytest.raises(ValueError, match="num_bins needs one value per level"):
        InstanceRefiner(levels=[4, 2, 1], num_bins=[32, 64])
    assert InstanceRefiner(levels=[4, 2], num_bins=[32, 64]).similarity_loss("mi", 3, 0).num_bins == 32
    with pytest.raises(ValueError, match="samples needs one value per level"):
        InstanceRefiner(levels=[4, 2, 1], samples=[0, 50000])
    with pytest.raises(ValueError, match="samples must be >= 0"):
        InstanceRefiner(levels=[4, 2], samples=[0, -1])
    assert InstanceRefiner(levels=[4, 2], samples=[0, 50000]).samples == [0, 50000]
    with pytest.raises(ValueError, match="not divisible"):
        InstanceRefiner(levels=[4]).refine(torch.rand(1, 1, 10, 8), torch.rand(1, 1, 10, 8), IDENTITY[2], torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("dims", [2, 3])
def test_a_finer_velocity_grid_starts_from_the_same_map(dims):
    """The upsampled start integrates to (almost) the network's own displacement, in the finer grid's voxels."""
    from bundle.networks.deformable_head import field_to_ddf

    n, integrate = 32, DVF2DDF(num_steps=7)
    g = torch.Generator().manual_seed(2)
    coarse = torch.nn.functional.interpolate(torch.randn((1, dims) + (2,) * dims, generator=g), size=(4,) * dims,
                                             mode="bilinear" if dims == 2 else "trilinear", align_corners=False) * 0.1
    refiner = InstanceRefiner(velocity_upsample=2)
    fine = refiner.finer_velocity(coarse, (n,) * dims)
    assert fine.shape == (1, dims) + (8,) * dims
    a, b = field_to_ddf(coarse, (n,) * dims, integrate), field_to_ddf(fine, (n,) * dims, integrate)
    assert float((a - b).norm(dim=1).mean()) < 0.05 * float(a.norm(dim=1).mean())  # 2-3 %: border and integration
    assert InstanceRefiner(velocity_upsample=16).finer_velocity(coarse, (n,) * dims).shape == (1, dims) + (n,) * dims  # capped


@pytest.mark.parametrize("dims", [2, 3])
def test_a_coarser_velocity_grid_is_the_pooled_field_in_its_own_voxels(dims):
    """velocity_upsample 0.5: the start is the 2x average-pooled field, vectors halved (coarse voxels), and it
    integrates to (almost) the same displacement on the image grid."""
    from bundle.networks.deformable_head import field_to_ddf

    n, integrate = 32, DVF2DDF(num_steps=7)
    g = torch.Generator().manual_seed(4)
    fine = torch.nn.functional.interpolate(torch.randn((1, dims) + (2,) * dims, generator=g), size=(16,) * dims,
                                           mode="bilinear" if dims == 2 else "trilinear", align_corners=False) * 0.4
    coarse = InstanceRefiner(velocity_upsample=0.5).finer_velocity(fine, (n,) * dims)
    pool = torch.nn.functional.avg_pool3d if dims == 3 else torch.nn.functional.avg_pool2d
    torch.testing.assert_close(coarse, pool(fine, 2) * 0.5, rtol=1e-5, atol=1e-6)
    a, b = field_to_ddf(fine, (n,) * dims, integrate), field_to_ddf(coarse, (n,) * dims, integrate)
    assert float((a - b).norm(dim=1).mean()) < 0.1 * float(a.norm(dim=1).mean())  # 3-6 %: the pooled detail
    assert InstanceRefiner(velocity_upsample=0.01).finer_velocity(fine, (n,) * dims).shape == (1, dims) + (2,) * dims  # at least 2 a side


@pytest.mark.parametrize(
    "optimiser,iterations,regulariser,regularisation",
    [("adam", [100, 100], "diffusion", 0.01), ("lbfgs", [30, 30], "diffusion", 0.01), ("lbfgs", [30, 30], "bending", [0.1, 0.01])],
)
def test_refinement_on_a_finer_velocity_grid_recovers_a_deformation(optimiser, iterations, regulariser, regularisation):
    """With velocity_upsample 2 the velocity is refined on a 2x finer grid (shape) and still recovers a known field
    (diffusion or bending regulariser, one weight or one per level)."""
    from bundle.networks.deformable_head import field_to_ddf

    n, integrate = 64, DVF2DDF(num_steps=7)
    fixed = _blobs(2, n, seed=5)
    g = torch.Generator().manual_seed(7)
    truth_v = torch.nn.functional.interpolate(torch.randn(1, 2, 8, 8, generator=g), size=(16, 16), mode="bilinear", align_corners=False) * 0.3
    truth = field_to_ddf(truth_v, (n, n), integrate)
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, -truth)  # approximately: moving(x + truth(x)) = fixed(x)
    inside = fixed[:, 0] > 0
    refiner = InstanceRefiner(levels=[2, 1], affine_iterations=0, deformable_iterations=iterations, velocity_lr=0.1,
                              regularisation=regularisation, regulariser=regulariser, multistart=False, velocity_upsample=2,
                              velocity_optimiser=optimiser)
    res = refiner.refine(moving, fixed, IDENTITY[2], torch.zeros(1, 2, 8, 8), integrate)
    assert res.velocity.shape == (1, 2, 16, 16)
    assert res.stats["deformable"]["regulariser"] == regulariser
    error, size = float((res.ddf - truth).norm(dim=1)[inside].mean()), float(truth.norm(dim=1)[inside].mean())
    assert error < 0.5 * size, (error, size)  # measured: 0.34 of 0.80 pixels (Adam)
    assert sum(level["iterations"] for level in res.stats["deformable"]["levels"]) <= sum(iterations)


@pytest.mark.parametrize("dims", [2, 3])
def test_mind_descriptor_is_contrast_invariant_and_shift_sensitive(dims):
    """MIND of an image and of an inverted copy agree far better than MIND of a shifted copy."""
    img = _blobs(dims, 32, seed=2)
    inverted = (1.0 - img) * (img > 0)
    shifted = torch.roll(img, 2, dims=2)
    desc = mind_ssc(img)
    assert desc.shape[1] == (12 if dims == 3 else 4)
    loss = MINDSSCLoss()
    assert float(loss(img, img)) == 0.0
    assert float(loss(inverted, img)) < 0.5 * float(loss(shifted, img))


def test_centre_of_mass_translation_finds_a_header_shift():
    img = np.zeros((20, 20, 20), dtype=np.float32)
    img[5:10, 6:12, 8:15] = 1.0
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    b = a.copy()
    b[:3, 3] = [200.0, -30.0, 5.0]
    np.testing.assert_allclose(centre_of_mass_translation(img, a, img, b), [200.0, -30.0, 5.0], atol=1e-9)


def test_overlap_and_size_checks_name_the_files():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    b = a.copy()
    b[0, 3] = 500.0
    check_overlap(a, (40, 40, 40), a, (40, 40, 40))
    with pytest.raises(ValueError, match=r"^mov.nii and fix.nii: the images do not overlap in physical space \(x:"):
        check_overlap(a, (40, 40, 40), b, (40, 40, 40), ("fix.nii", "mov.nii"))
    check_network_size((16, 16, 16), a, 2.0, 16)
    check_network_grid((16, 16, 32), 16)
    with pytest.raises(ValueError, match=r"^cube.nii: image too small for the network: its network grid is 16x16x16 voxels, .* more than 16 along"):
        check_network_grid((16, 16, 16), 16, "cube.nii")  # one coarsest cell: instance normalisation fails there
    with pytest.raises(ValueError, match=r"^tiny.nii: image too small for the network: it spans 16x16x4 voxels"):
        check_network_size((16, 16, 4), a, 2.0, 16, "tiny.nii")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("foreground", [0.0, 0.1])
def test_refinement_maps_decompose_the_similarity_gradient(dims, foreground):
    """Each affine map's voxel shares sum to d similarity / d parameter (autograd), and point where the image differs."""
    from bundle.explain.refinement import affine_parameter_names, refinement_explanations

    n = 32
    fixed = _blobs(dims, n, seed=3)
    shift = [2.0] + [0.0] * (dims - 1)
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, affine_to_ddf(_rotation(dims, 0.0, shift), fixed.shape[2:]))
    refiner = InstanceRefiner(levels=[1], affine_iterations=1, deformable_iterations=0, multistart=False, affine_foreground=foreground)
    theta = IDENTITY[dims].clone()
    maps = refinement_explanations(refiner, moving, fixed, theta, torch.zeros((1, dims) + (n // 4,) * dims), theta)
    names = [m.target for m in maps]
    assert names == [name for _, _, name in affine_parameter_names(dims)] + ["force_magnitude"]
    p = theta.clone().requires_grad_(True)
    loss_fn = refiner.similarity_loss("mi", dims)
    inside = (fixed > foreground).flatten(2)[0, 0] if foreground else slice(None)  # the voxels the similarity is evaluated at
    warped = refiner.warp(moving, affine_to_ddf(p, fixed.shape[2:]))
    (grad,) = torch.autograd.grad(-loss_fn(warped.flatten(2)[:, :, inside], fixed.flatten(2)[:, :, inside]), p)
    for (i, j, _), m in zip(affine_parameter_names(dims), maps):
        assert float(m.value[0]) == pytest.approx(float(grad[0, i, j]), rel=1e-3, abs=1e-6)
        assert m.attribution.shape == fixed.shape and float(m.attribution.min()) >= 0
    tx = maps[[m.target for m in maps].index("translation_x")].attribution[0, 0]
    outside = fixed[0, 0] == 0
    assert float(tx[~outside].mean()) > 10 * float(tx[outside].mean() + 1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_refinement_maps_pass_the_deletion_check(dims):
    """Blurring the top 10 % of the map of the parameter that carries the motion (an x shift) changes
    its gradient more than twice as much as blurring random voxels. (Maps of parameters whose gradient
    is near zero are shares that cancel; their ratios are reported, not asserted.) The similarity is
    evaluated on every voxel (``foreground=0``): the disc's edge carries the motion. Inside the fixed
    foreground of this smooth image the translation's map does not pass (ratio 0.07 in 2D, 1.9 in 3D)."""
    from bundle.explain.refinement import refinement_deletion_check, refinement_explanations

    n = 32
    fixed = _blobs(dims, n, seed=4)
    moving = Warp(mode="bilinear", padding_mode="zeros")(1.0 - 0.7 * fixed, affine_to_ddf(_rotation(dims, 5.0, [2.0] + [0.0] * (dims - 1)), fixed.shape[2:]))
    moving = moving * (fixed.amax() > 0)
    refiner = InstanceRefiner(levels=[1], deformable_iterations=0, affine_foreground=0.0)
    theta = IDENTITY[dims].clone()
    maps = refinement_explanations(refiner, moving, fixed, theta, torch.zeros((1, dims) + (n // 4,) * dims), theta)
    ratios = refinement_deletion_check(refiner, moving, fixed, theta, maps, sigma=2.0, n_random=3)
    assert len(ratios) == dims * (dims + 1)
    assert ratios["translation_x"] > 2.0, ratios


@pytest.mark.parametrize("dims,n", [(2, 64), (3, 32)])
def test_velocity_refinement_map_passes_deletion_and_localisation(dims, n):
    """The ``refine_deformable`` force map: blurring its top 10 % changes the similarity more than twice
    as much as blurring random voxels (moving: a contrast-inverted copy moved by 5 degrees + 2 voxels),
    and on the aligned pair deformed only inside a box it puts more than twice the box's volume share
    of its mass there. Both ratios vary with the image: over blob seeds 0-3 deletion 1.7-10 (2D) and
    7-33 (3D), localisation 4.6-6.7 (2D) and 1.8-4.4 (3D); seed 0 gives 10.0 / 5.1 (2D), 30 / 4.4 (3D)."""
    from bundle.explain.refinement import refinement_deformable_checks

    fixed = _blobs(dims, n, seed=0)
    aligned = (1.0 - 0.7 * fixed) * (fixed > 0)
    moving = Warp(mode="bilinear", padding_mode="zeros")(aligned, affine_to_ddf(_rotation(dims, 5.0, [2.0] + [0.0] * (dims - 1)), fixed.shape[2:]))
    zero = torch.zeros((1, dims) + (n // 4,) * dims)  # a velocity on a 4x coarser grid, as the network's
    checks = refinement_deformable_checks(InstanceRefiner(levels=[1]), moving, fixed, IDENTITY[dims], zero, None, aligned, n_random=3, sigma=2.0)
    assert checks["deletion_ratio"] > 2.0, checks
    assert checks["localisation_ratio"] > 2.0, checks
    assert 0 < checks["localisation_volume_fraction"] < 0.1


def test_switches_from_the_command_line_are_parsed_as_booleans():
    """``monai.bundle run --refine false`` passes the string 'false', which must switch refinement off."""
    from bundle.cli import as_bool

    assert InstanceRefiner(enabled="false").enabled is False
    assert InstanceRefiner(enabled="True", multistart="0").enabled is True
    assert as_bool("off") is False and as_bool(1) is True
    with pytest.raises(ValueError, match="refine must be true or false, got 'maybe'"):
        InstanceRefiner(enabled="maybe")


@pytest.mark.parametrize("dims,n", [(2, 64), (3, 32)])
def test_foreground_ignores_what_lies_in_the_fixed_background(dims, n):
    """A bright block the moving image has where the fixed one is empty background changes nothing
    with the foreground mask (the refined affine is bitwise the one without the block, within half a
    voxel of the truth); evaluated on every voxel, the same block moves the result."""
    fixed = _blobs(dims, n, seed=2)
    truth = _rotation(dims, 0.0, [2.0] + [0.0] * (dims - 1))
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, affine_to_ddf(_rotation(dims, 0.0, [-2.0] + [0.0] * (dims - 1)), fixed.shape[2:]))
    cluttered = moving.clone()
    corner = (slice(None), slice(None)) + (slice(0, n // 6),) * dims
    cluttered[corner] = 1.0  # far outside the disc/ball of anatomy
    assert float(fixed[corner].max()) == 0.0

    def refined(image, foreground):
        refiner = InstanceRefiner(
            levels=[2, 1], affine_iterations=[80, 40], deformable_iterations=0, affine_lr=0.01, multistart=False, affine_foreground=foreground
        )
        return refiner.refine(image, fixed, IDENTITY[dims], torch.zeros((1, dims) + (n // 4,) * dims)).theta

    masked = refined(cluttered, 0.1)
    assert torch.equal(masked, refined(moving, 0.1))
    err = (affine_to_ddf(masked, fixed.shape[2:]) - affine_to_ddf(truth, fixed.shape[2:])).norm(dim=1)
    assert float(err[fixed[:, 0] > 0].mean()) < 0.5
    assert not torch.equal(refined(cluttered, 0.0), refined(moving, 0.0))


def test_foreground_must_be_an_intensity():
    with pytest.raises(ValueError, match="foreground"):
        InstanceRefiner(affine_foreground=1.5)


def test_affine_rate_per_level():
    """One affine step for every level, or one per level; a list of the wrong length is refused."""
    assert InstanceRefiner(levels=[4, 2, 1], affine_lr=0.01).affine_lr == [0.01] * 3
    assert InstanceRefiner(levels=[2, 1], affine_lr=[0.01, 0.002]).affine_lr == [0.01, 0.002]
    with pytest.raises(ValueError, match=r"affine_lr needs one value per level \(2\)"):
        InstanceRefiner(levels=[2, 1], affine_lr=[0.01, 0.002, 0.001])


@pytest.mark.parametrize("repredict", [True, False])
def test_velocity_start_is_repredicted_behind_the_refined_affine(repredict):
    """With ``repredict_velocity`` the network's field is asked for again, behind the affine the refinement found."""
    dims, n = 2, 64
    fixed = _blobs(dims, n)
    truth = _rotation(dims, 8.0, [2.0, 0.0])
    inv = torch.linalg.inv(torch.cat([truth[0], torch.eye(dims + 1)[-1:]], 0))[:dims][None]
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, affine_to_ddf(inv, fixed.shape[2:]))
    asked = []

    def predict(theta):
        asked.append(theta.detach().clone())
        return torch.zeros((1, dims) + (n // 4,) * dims)

    refiner = InstanceRefiner(
        levels=[2, 1], affine_iterations=[30, 15], deformable_iterations=[5, 5], affine_optimiser="lbfgs", multistart=False,
        repredict_velocity=repredict,
    )
    res = refiner.refine(moving, fixed, IDENTITY[dims], torch.full((1, dims) + (n // 4,) * dims, 0.3), DVF2DDF(num_steps=7), predict_velocity=predict)
    if not repredict:
        assert asked == [] and res.stats["deformable"]["network_field"] == "the forward pass's"
        return
    assert len(asked) == 1 and torch.allclose(asked[0], res.theta)
    assert float((res.theta - IDENTITY[dims]).abs().max()) > 0.05  # the affine did move before the field was asked for
    assert res.stats["deformable"]["network_field"] == "re-predicted behind the refined affine"
    assert res.stats["deformable"]["start"] == "network"


def test_affine_only_refinement_leaves_the_velocity_alone():
    """``deformable=False`` (the registrar's ``stage: affine``) refines theta and skips the velocity stage."""
    dims, n = 2, 64
    fixed = _blobs(dims, n)
    moving = Warp(mode="bilinear", padding_mode="zeros")(fixed, affine_to_ddf(_rotation(dims, 6.0, [2.0, 0.0]), fixed.shape[2:]))
    velocity = torch.full((1, dims) + (n // 4,) * dims, 0.2)
    refiner = InstanceRefiner(levels=[2, 1], affine_iterations=[20, 10], deformable_iterations=[20, 20], affine_optimiser="lbfgs")
    res = refiner.refine(moving, fixed, IDENTITY[dims], velocity, DVF2DDF(num_steps=7), deformable=False)
    assert "deformable" not in res.stats and torch.equal(res.velocity, velocity)
    assert res.stats["affine"]["similarity_after"] > res.stats["affine"]["similarity_before"]
