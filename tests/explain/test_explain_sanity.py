"""``bundle.explain.sanity``: all three checks through one settings object, on the fitted network."""

import math

import torch
from explain_helpers import BUMP_AMPLITUDE

from bundle.explain.sanity import SanitySettings, sanity_report


def test_fitted_network_registers_its_pairs(fitted):
    net, (mov, fix, g_aff, g) = fitted
    with torch.no_grad():
        out = net.register(mov, fix, bidirectional=False, synthesis=False).forward
    aff_err = (out.ddf_affine - g_aff).norm(dim=1).flatten(1).mean(1)
    assert float(aff_err.max()) < 0.25 * float(g_aff.norm(dim=1).flatten(1).mean(1).max())
    bump = (out.ddf_deformable - (g - g_aff)).norm(dim=1).flatten(1).max(1).values
    assert float(bump[1]) < 0.5 * BUMP_AMPLITUDE  # the local deformation is largely recovered


def test_sanity_report_keys(fitted):
    net, (mov, fix, _, g) = fitted
    from explain_helpers import _WARP

    settings = SanitySettings(stages=["affine", "deformable"], targets={"affine": ["translation_y"]}, n_random=2)
    rep = sanity_report(net, mov[:1], fix[:1], settings, aligned_moving=_WARP(mov[:1], g[:1]))
    assert set(rep) == {"settings", "affine", "deformable"}
    assert set(rep["deformable"]) == {"displacement_rms"}
    row = rep["affine"]["translation_y"]
    for key in ("randomisation_spearman", "deletion_ratio", "deletion_ratio_shifted", "localisation_ratio"):
        assert math.isfinite(row[key]), key
    assert rep["settings"]["n_random"] == 2 and rep["settings"]["scope"] == "downstream"
    assert rep["settings"]["perturb"] == "both" and row["deletion_perturb"] == "both"
    assert rep["settings"]["deletion_scalar"] == "network" and row["deletion_scalar"] == "network"
    assert len(rep["settings"]["box"]) == 2


def test_refinement_sanity_report_checks_the_pipeline_refinement(fitted):
    """The refinement's maps, on a pair the network registers and the refiner then refines: every affine
    parameter gets a finite deletion ratio and the velocity's force map localises the pair's bump box
    (pair 1 is ``local_deformation_case(anatomy, BOX)``: the only deformation lies in the box)."""
    from explain_helpers import BOX

    from bundle.explain.refinement import refinement_sanity_report
    from bundle.refine import InstanceRefiner

    net, (mov, fix, _, _) = fitted
    refiner = InstanceRefiner(levels=[2, 1], affine_iterations=10, deformable_iterations=10)
    rep = refinement_sanity_report(refiner, net, mov[1:2], fix[1:2], box=BOX)
    assert set(rep) == {"refine_affine", "refine_deformable"}
    assert len(rep["refine_affine"]) == 6 and all(math.isfinite(r["deletion_ratio"]) for r in rep["refine_affine"].values())
    row = rep["refine_deformable"]["force_magnitude"]
    assert math.isfinite(row["deletion_ratio"]) and row["box"] == [list(b) for b in BOX]
    assert row["localisation_ratio"] > 2.0, row


def test_deletion_blurs_both_images_for_the_network_alone_by_default():
    """The maps explain the network: by default its inputs are blurred and the scalar compares the clean images."""
    s = SanitySettings()
    assert s.perturb_for("encoder") == "both" and s.deletion_scalar == "network"
    assert SanitySettings(perturb="fixed").perturb_for("encoder") == "fixed"
    assert SanitySettings(perturb={"decoder_ab": "moving"}).perturb_for("encoder") == "both"
    assert SanitySettings(perturb={"encoder": "moving"}).perturb_for("encoder") == "moving"
