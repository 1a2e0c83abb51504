"""``benchmarks.explanations``: the summary over pairs (mean, median, pairs meeting each bar)."""

from __future__ import annotations

import json

import pytest

from benchmarks.explanations import _summary, main


def _pair(deletion: float, spearman: float, localisation: float) -> dict:
    return {"seconds_inference": 1.0, "seconds_explain_all": 4.0, "report": {
        "settings": {"box": [[0, 4], [0, 4]]},
        "deformable": {"displacement_rms_mm": {"deletion_ratio": deletion, "randomisation_spearman": spearman,
                                               "localisation_ratio": localisation, "deletion_top_change": 0.1}},
    }}


def test_summary_reports_the_median_and_the_pairs_meeting_each_bar():
    out = _summary([_pair(0.05, 0.1, 2.5), _pair(3.0, -0.35, 1.0), _pair(104.0, 0.29, float("nan"))])
    key = "deformable/displacement_rms_mm"
    assert out["pairs"] == 3 and out["explain_over_inference_time"] == pytest.approx(4.0)
    assert out["mean_per_stage_target"][key]["deletion_ratio"] == pytest.approx(107.05 / 3)  # one pair swings the mean
    assert out["median_per_stage_target"][key]["deletion_ratio"] == pytest.approx(3.0)
    assert out["pairs_passing"][key] == {
        "deletion_ratio": "2/3", "randomisation_spearman": "3/3", "randomisation_abs_spearman": "2/3", "localisation_ratio": "1/3"
    }  # rho < 0.3 for all three pairs; |rho| < 0.3 fails the anti-correlated one
    assert out["median_per_stage_target"][key]["randomisation_abs_spearman"] == pytest.approx(0.29)
    assert "deletion_top_change" not in out["pairs_passing"][key]  # no bar for it
    assert out["bars"]["deletion_ratio"] == ">= 2"


def test_merge_summarises_the_pairs_of_several_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_summary([_pair(1.0, 0.0, 3.0)])))
    b.write_text(json.dumps(_summary([_pair(5.0, 0.0, 3.0), _pair(7.0, 0.5, 1.0)])))
    out = main(["--merge", str(a), str(b), "--output", str(tmp_path / "all.json")])
    assert out["pairs"] == 3 and json.loads((tmp_path / "all.json").read_text())["pairs"] == 3
    assert out["median_per_stage_target"]["deformable/displacement_rms_mm"]["deletion_ratio"] == pytest.approx(5.0)
    assert out["pairs_passing"]["deformable/displacement_rms_mm"]["deletion_ratio"] == "2/3"


def test_randomisation_figure_draws_both_maps_and_returns_the_check(tmp_path):
    """The figure of the trained and the re-initialised map of one target, on a small 3D pair."""
    import torch
    from test_bundle import network_from_config

    from benchmarks.explanations import randomisation_figure

    net = network_from_config(3).eval()
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 32)] * 3, indexing="ij"))
    fixed = (1.0 - grid.pow(2).sum(0) / 1.2).clamp(0, 1)[None, None]
    moving = torch.roll(fixed, shifts=2, dims=2)
    out = randomisation_figure(tmp_path / "r.png", net, moving, fixed, "affine/shear_xy", 2.0)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert -1.0 <= out["spearman"] < 0.99 and out["scope"] == "downstream"  # re-initialisation changed the map
