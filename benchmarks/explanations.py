"""Sanity numbers of the shipped model's explanations, and their cost relative to inference.

    python -m benchmarks.explanations --pairs 2 --output outputs/benchmarks/explanations.json
    # the six pairs in two processes (one per core), then one summary of both
    python -m benchmarks.explanations --pairs 3 --output a.json & python -m benchmarks.explanations --pairs 3 --skip 3 --output b.json
    python -m benchmarks.explanations --merge a.json b.json --output six.json

For each held-out sample pair: ``bundle.explain.sanity.sanity_report`` (randomisation Spearman,
deletion ratio, localisation ratio per stage and scalar of the network),
``bundle.explain.refinement.refinement_sanity_report`` (deletion and localisation of the
refinement's similarity-gradient maps, the refiner of ``configs/inference.json``), and the wall
time of explaining all default network stages against the time of one inference, both measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bundle.cli import BUNDLE_ROOT
from bundle.data.datalist import read_datalist
from bundle.data.sample import ensure_sample_datalist
from bundle.explain.gradcam import explain_pair, stage_explainers
from bundle.explain.localisation import default_box
from bundle.explain.randomisation import randomisation_check
from bundle.explain.refinement import refinement_sanity_report
from bundle.explain.sanity import SanitySettings, sanity_report
from bundle.io import atomic_write

from .run import _registrar


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--checkpoint", default=str(BUNDLE_ROOT / "models" / "model.pt"))
    parser.add_argument("--skip", type=int, default=0, help="start after this many held-out pairs (to split a run over processes)")
    parser.add_argument("--merge", nargs="+", default=None, help="only summarise the per-pair results of these output files together")
    parser.add_argument("--output", default=str(BUNDLE_ROOT / "outputs" / "benchmarks" / "explanations.json"))
    parser.add_argument("--stages", default=None, help="comma-separated network stages to check, or a JSON object of stage specs (default: the default stages)")
    parser.add_argument("--method", default=None, help="gradcam, hirescam or gradient for every checked stage (default: each stage's own)")
    parser.add_argument("--perturb", default="both", help="images deletion blurs: moving, fixed or both (SanitySettings.perturb)")
    parser.add_argument("--deletion_scalar", default="network", help="network or perturbed (SanitySettings.deletion_scalar)")
    parser.add_argument("--refinement", type=int, default=1, help="also check the refinement's maps (1) or not (0)")
    parser.add_argument("--network_checks", type=int, default=1, help="check the network's maps (1) or only the refinement's (0)")
    parser.add_argument("--randomisation_figure", default=None, help="PNG: the trained and re-initialised maps of --figure_target on the first pair")
    parser.add_argument("--figure_target", default="affine/shear_xy", help="stage/target drawn by --randomisation_figure")
    args = parser.parse_args(argv)
    settings = {"perturb": args.perturb, "deletion_scalar": args.deletion_scalar}
    if args.stages:  # names, or a JSON object of stage specs: '{"affine": {"layer": "affine_head.heatmap", "method": "gradient"}}'
        settings["stages"] = json.loads(args.stages) if args.stages.lstrip().startswith("{") else args.stages.split(",")
    if args.method:
        settings["method"] = args.method
    if args.merge:
        out = _summary([r for path in args.merge for r in json.loads(Path(path).read_text())["per_pair"]])
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))
        return out
    datalist = ensure_sample_datalist(BUNDLE_ROOT / "sample_data" / "3d", spatial_dims=3, spacing_mm=2.0, n_train=32, n_val=4, n_test=20)
    registrar = _registrar(args.checkpoint)
    registrar.load_weights()
    net = registrar.network
    results, out = [], {"pairs": 0}
    for item in read_datalist(datalist, "test")[args.skip : args.skip + args.pairs]:
        fixed, fa, _, moving, ma = registrar.load_pair(item["fixed"], item["moving"])
        m, f, _, _ = registrar.to_network_grid(fixed, fa, moving, ma)
        t0 = time.perf_counter()
        with torch.no_grad():
            net.register(m, f, bidirectional=False, synthesis=False)
        t_infer = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps = explain_pair(net, m, f, spacing_mm=registrar.spacing_mm)
        t_explain = time.perf_counter() - t0
        if args.randomisation_figure and not results:
            randomisation_figure(args.randomisation_figure, net, m, f, args.figure_target, registrar.spacing_mm)
        sanity = SanitySettings(spacing_mm=registrar.spacing_mm, **settings)
        report = sanity_report(net, m, f, sanity) if args.network_checks else {"settings": sanity.as_json(default_box(f))}
        if args.refinement:
            t0 = time.perf_counter()
            report.update(refinement_sanity_report(registrar.refiner, net, m, f, box=report["settings"]["box"]))
            print(f"refinement checks: {time.perf_counter() - t0:.1f} s", flush=True)
        results.append({"pair": item["fixed"], "contrast": item.get("contrast"), "seconds_inference": t_infer,
                        "seconds_explain_all": t_explain, "maps": len(maps), "report": report})
        print(json.dumps({"pair": item["fixed"], "explain/infer": t_explain / t_infer}), flush=True)
        out = _summary(results)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))  # after every pair: a long run keeps what it measured
    return out


#: Issue 15's bar for each check: a pair passes when its number meets it. Randomisation is scored
#: both ways: ``rho < 0.3`` (the issue's bar: a map that survives re-initialisation correlates
#: positively with the trained one) and ``|rho| < 0.3`` (stricter: anti-correlation fails too; the
#: keypoint fit's parameters fail it because a re-initialised heat-map layer leaves a purely
#: geometric map, high far from the centre, where the trained map sits on keypoints in the brain).
BARS = {
    "randomisation_spearman": ("rho < 0.3", lambda v: v < 0.3),
    "randomisation_abs_spearman": ("|rho| < 0.3", lambda v: v < 0.3),
    "deletion_ratio": (">= 2", lambda v: v >= 2.0),
    "localisation_ratio": (">= 2", lambda v: v >= 2.0),
}


def randomisation_figure(path, network, moving, fixed, stage_target: str, spacing_mm) -> dict:
    """Draw the trained and the re-initialised (downstream) map of one ``stage/target`` over the fixed
    image, axial and coronal slices through the image centre; return the check's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stage, target = stage_target.split("/")
    ((_, _, _, explainer),) = stage_explainers(network, [stage], {stage: [target]}, spacing_mm=spacing_mm)
    check = randomisation_check(explainer, moving, fixed, return_maps=True)
    volumes = [fixed[0, 0], check["attribution"][0, 0], check["randomised_attribution"][0, 0]]
    volumes = [v.detach().cpu().numpy() for v in volumes]
    cuts = (("axial", lambda a: a[:, :, a.shape[2] // 2].T), ("coronal", lambda a: a[:, a.shape[1] // 2, :].T))
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.6))
    for row, (name, cut) in enumerate(cuts):
        for col, (title, vol) in enumerate(zip(("fixed image", "trained network", "re-initialised downstream"), volumes)):
            axes[row, col].imshow(cut(vol), origin="lower", cmap="gray" if col == 0 else "inferno")
            axes[row, col].set_title(f"{title} ({name})", fontsize=9)
            axes[row, col].axis("off")
    title = f"{explainer.method} map of {stage_target} at {explainer.layer_name}"
    fig.suptitle(f"{title}: Spearman rho {check['spearman']:+.2f} between the two maps", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return {k: check[k] for k in ("spearman", "scope")}


def _summary(results: list[dict]) -> dict:
    """Per stage and target over the pairs: the mean and the median of every sanity number, how many
    pairs meet each check's bar (:data:`BARS`), and the explain / inference time ratio.

    A deletion ratio divides two small changes, so one pair can swing the mean (0.05 to 104 for a
    decoder); the median and the pass count are the steadier summaries.
    """
    summary: dict = {}
    for r in results:
        for stage, targets in r["report"].items():
            if stage == "settings":
                continue
            for target, vals in targets.items():
                entry = summary.setdefault(f"{stage}/{target}", {})
                for k, v in vals.items():
                    if isinstance(v, (int, float)):
                        entry.setdefault(k, []).append(float(v))
                if isinstance(vals.get("randomisation_spearman"), (int, float)):
                    entry.setdefault("randomisation_abs_spearman", []).append(abs(float(vals["randomisation_spearman"])))
    table = {k: {m: float(np.nanmean(v)) for m, v in d.items()} for k, d in summary.items()}
    median = {k: {m: float(np.nanmedian(v)) for m, v in d.items()} for k, d in summary.items()}
    passing = {
        k: {m: f"{sum(bool(BARS[m][1](x)) for x in v if np.isfinite(x))}/{len(v)}" for m, v in d.items() if m in BARS}
        for k, d in summary.items()
    }
    ratio = float(np.mean([r["seconds_explain_all"] / r["seconds_inference"] for r in results]))
    return {"pairs": len(results), "explain_over_inference_time": ratio, "bars": {m: b[0] for m, b in BARS.items()},
            "mean_per_stage_target": table, "median_per_stage_target": median, "pairs_passing": passing, "per_pair": results}


if __name__ == "__main__":
    main()
