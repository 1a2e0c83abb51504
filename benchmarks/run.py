"""Benchmark this project against identity, elastix and ANTs on the same pairs, in one run.

    python -m benchmarks.run --dataset templates --pairs_per_contrast 10
    python -m benchmarks.run --dataset subject --pairs_per_contrast 10

``templates``: held-out pairs of the deformed SPM templates; ``subject``: pairs of SPM's
single-subject T1, an anatomy no training path reads (``bundle.data.subject``). Writes a
per-pair CSV and the data set's section of ``docs/benchmarks.md``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bundle.cli import BUNDLE_ROOT, config_files
from bundle.data.datalist import read_datalist
from bundle.data.sample import ensure_sample_datalist
from bundle.data.subject import write_subject_data
from bundle.evaluate import PairData, _identity_result, moving_on_fixed_grid, summarise
from bundle.inference import PairRegistrar

from . import classical
from .null_pairs import null_datalist
from .report import machine_line, write_section

METRICS = [
    ("dice_mean", "Dice (mean CSF/GM/WM)", "{:.3f}"),
    ("hd95_mean", "HD95 mm", "{:.2f}"),
    ("disp_error_mean_mm", "disp. error mm", "{:.2f}"),
    ("disp_error_p95_mm", "disp. error p95 mm", "{:.2f}"),
    ("folding_percent", "% det J <= 0", "{:.3f}"),
    ("sdlogj", "SDlogJ", "{:.3f}"),
    ("nmi", "NMI", "{:.3f}"),
]
METHODS = (
    "identity", "elastix", "ants_affine", "ants_syn", "fireants_affine", "fireants_greedy",
    "network", "network_refined", "refine_from_identity", "affine_refined", "ground_truth",
)
#: what each of the project's methods runs (PairRegistrar.register_arrays keywords)
MODEL_METHODS = {
    "network": {"refine": False},  # centre-of-mass initialisation + network, no refinement
    "network_refined": {"refine": True},  # + refinement warm-started from the network (the default pipeline)
    "refine_from_identity": {"refine": True, "network": False},  # the same refinement from the initialisation alone
    "affine_refined": {"refine": True, "stage": "affine"},  # the fast affine-only mode (--stage affine): network + affine refinement
    "model_affine": {"refine": False, "stage": "affine"},  # network's affine stage only
    "model_full": {"refine": False},  # the network without refinement (the ITK-slice benchmark's name)
}


def _parser(dims: int = 3):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("inference.json"))
    parser["spatial_dims"] = dims
    return parser


def _network(dims: int = 3):
    return _parser(dims).get_parsed_content("network_def", instantiate=True)


def _registrar(checkpoint: str, dims: int = 3) -> PairRegistrar:
    """The registrar of ``configs/inference.json`` (initialisation and refinement as shipped)."""
    parser = _parser(dims)
    parser["checkpoint"] = checkpoint
    return parser.get_parsed_content("registrar", instantiate=True)


def shipped_refiner_kwargs(dims: int = 3) -> dict:
    """The refiner keywords of the shipped configuration."""
    parser = _parser(dims)
    return {k: parser.get_parsed_content(f"refiner#{k}") for k in parser["refiner"] if not k.startswith("_")}


def refiner_with(overrides: dict, shipped: dict | None = None, dims: int = 3):
    """An :class:`bundle.refine.InstanceRefiner` of the ``shipped`` keywords (default
    :func:`shipped_refiner_kwargs`, parsed again) with ``overrides``; an unknown keyword is a ``TypeError``."""
    from bundle.refine import InstanceRefiner

    shipped = shipped_refiner_kwargs(dims) if shipped is None else shipped
    unknown = set(overrides) - set(shipped)
    if unknown:
        raise TypeError(f"unknown refiner keyword(s) {sorted(unknown)}; expected some of {sorted(shipped)}")
    return InstanceRefiner(**{**shipped, **overrides})


def register_with(method: str, fixed, fixed_affine, moving, moving_affine, fixed_path, moving_path, registrar, threads: int | None = None):
    """Displacement (RAS mm, fixed grid) and warped moving image of one method, 2D or 3D.

    ``fixed``/``moving`` are arrays with spatial affines (for identity and the model); elastix
    and ANTs read ``fixed_path``/``moving_path``; ``threads`` defaults to every core.
    """
    if method == "identity":
        res = _identity_result(fixed, fixed_affine, moving, moving_affine)
        return res["ddf_mm"], res["warped"]
    if method == "elastix":
        return classical.elastix(Path(fixed_path), Path(moving_path), threads=threads or os.cpu_count() or 1)
    if method in ("ants_affine", "ants_syn"):
        return classical.ants(Path(fixed_path), Path(moving_path), "Affine" if method == "ants_affine" else "SyN")
    if method in ("fireants_affine", "fireants_greedy"):
        return classical.fireants(Path(fixed_path), Path(moving_path), method.split("_")[1])
    if method in MODEL_METHODS:
        res = registrar.register_arrays(fixed, fixed_affine, moving, moving_affine, **MODEL_METHODS[method])
        return res["ddf_mm"], res["warped"]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def ground_truth_result(pair: PairData) -> tuple[np.ndarray, np.ndarray]:
    """The pair's own synthetic motion (RAS mm) and the moving image warped by it: the ceiling of every metric.

    Its Dice is below 1 because labels are resampled at 2 mm and the moving labels were
    themselves resampled when the pair was made; its displacement error is 0 by definition.
    """
    if pair.gt is None:
        raise ValueError(f"{pair.item['moving']}: no ground-truth field (gt_ddf) for the ground_truth method")
    dims = pair.fixed.ndim
    ddf_mm = np.einsum("ij,j...->i...", pair.fixed_affine[:dims, :dims], pair.gt[0].numpy())
    return ddf_mm, moving_on_fixed_grid(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, ddf_mm)


def run_method(method: str, pair: PairData, registrar: PairRegistrar, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`register_with` on a datalist pair (and ``ground_truth``, the pair's own motion)."""
    if method == "ground_truth":
        return ground_truth_result(pair)
    return register_with(
        method, pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, pair.item["fixed"], pair.item["moving"], registrar, threads
    )


def use_threads(threads: int) -> None:
    """Give every method the same number of CPU threads: torch (the project, FireANTs), ITK (ANTs); elastix gets ``-threads``."""
    import torch

    torch.set_num_threads(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


def _dataset_datalist(dataset: str, per_contrast: int) -> str:
    """The datalist of a named data set, generated on first use."""
    if dataset == "subject":
        path = BUNDLE_ROOT / "sample_data" / "subject" / "datalist.json"
        if not path.is_file() or len(read_datalist(str(path), "test")) < 2 * per_contrast:
            write_subject_data(path.parent, pairs_per_contrast=per_contrast)
        return str(path)
    return ensure_sample_datalist(BUNDLE_ROOT / "sample_data" / "3d", spatial_dims=3, spacing_mm=2.0, n_train=32, n_val=4, n_test=20)


def select_items(datalist: str, section: str, per_contrast: int) -> list[dict]:
    """The first ``per_contrast`` items of each contrast in a datalist section."""
    items, counts = [], {}
    for item in read_datalist(datalist, section):
        c = item.get("contrast", "")
        if counts.get(c, 0) < per_contrast:
            items.append(item)
            counts[c] = counts.get(c, 0) + 1
    return items


DATASETS = {
    "templates": "held-out generated 3D pairs of the deformed SPM templates (2 mm, T2->T1 and PD->T1)",
    "subject": "3D pairs of SPM's single-subject T1, anatomy never used in training (2 mm, T2-like->T1 and PD-like->T1)",
}


def markdown(summary: dict, methods, n_pairs: int, command: str, dataset: str = "templates", null: dict | None = None) -> str:
    lines = [
        f"## Accuracy and time: {dataset}",
        "",
        f"Produced by `{command}` on {n_pairs} {DATASETS[dataset]},",
        f"all methods in the same run on the same machine: {machine_line()}.",
        "Seconds per pair: the model's time covers resampling onto its grid, initialisation, the network,",
        "refinement and mapping the field back; elastix, ANTs and FireANTs times cover their own file",
        "reading and registration. Invented motion: mean displacement (mm, in the brain) a method returns",
        "on the aligned null pairs (one per contrast, no motion at all).",
        "",
        "| method | " + " | ".join(name for _, name, _ in METRICS) + " | invented motion mm | median s/pair |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for m in methods:
        s = summary.get(m)
        if not s:
            continue
        cells = [fmt.format(s[k]["mean"]) if k in s else "n/a" for k, _, fmt in METRICS]
        invented = (null or {}).get(m, {}).get("disp_error_mean_mm", {}).get("mean")
        cells.append("n/a" if invented is None else f"{invented:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {s['seconds']['median']:.2f} |")
    lines += ["", "Per contrast:", "", "| method / contrast | Dice | disp. error mm | % det J <= 0 | median s/pair |", "|---|---|---|---|---|"]
    for key in sorted(k for k in summary if "/" in k):
        s = summary[key]
        lines.append(
            f"| {key} | {s['dice_mean']['mean']:.3f} | {s.get('disp_error_mean_mm', {}).get('mean', float('nan')):.2f} | "
            f"{s['folding_percent']['mean']:.3f} | {s['seconds']['median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="templates", choices=sorted(DATASETS), help="which generated pairs (ignored with --datalist)")
    parser.add_argument("--datalist", default=None, help="labelled datalist; default: the --dataset pairs")
    parser.add_argument("--section", default="test")
    parser.add_argument("--pairs_per_contrast", type=int, default=10)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--checkpoint", default=str(BUNDLE_ROOT / "models" / "model.pt"))
    parser.add_argument("--output", default=str(BUNDLE_ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--csv", default=str(BUNDLE_ROOT / "outputs" / "benchmarks" / "metrics.csv"), help="the data set's name is appended")
    parser.add_argument("--tag", default="", help="suffix of the docs section and CSV (a supplementary run keeps the main one)")
    parser.add_argument("--null", type=int, default=1, help="also run the data set's aligned null pairs (1) or not (0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every method (default: torch's and the tools' own defaults)")
    parser.add_argument("--refiner", default=None, help='JSON: InstanceRefiner keywords over the shipped ones, e.g. \'{"samples": 50000}\' (with --tag)')
    args = parser.parse_args(argv)
    if args.threads:
        use_threads(args.threads)
    datalist = args.datalist or _dataset_datalist(args.dataset, args.pairs_per_contrast)
    methods = [m for m in args.methods.split(",") if m]
    registrar = _registrar(args.checkpoint)
    registrar.load_weights()
    if args.refiner:
        registrar.refiner = refiner_with(json.loads(args.refiner))
    items = select_items(datalist, args.section, args.pairs_per_contrast)
    nulls = [] if args.datalist or not args.null else read_datalist(null_datalist(args.dataset), "test")
    command = ("python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    rows, null_rows, summary = [], [], {}
    jobs = [(item, True) for item in nulls] + [(item, False) for item in items]  # the few null pairs first
    for i, (item, is_null) in enumerate(jobs):
        pair = PairData(registrar, item)
        for method in methods:
            t0 = time.perf_counter()
            ddf_mm, warped = run_method(method, pair, registrar, args.threads)
            seconds = time.perf_counter() - t0
            (null_rows if is_null else rows).append(pair.row(method, pair.score(ddf_mm, warped), seconds))
            r = (null_rows if is_null else rows)[-1]
            print(f"[{i + 1}/{len(jobs)}] {item.get('contrast')} {method}: Dice {r['dice_mean']:.3f} "
                  f"err {r.get('disp_error_mean_mm', float('nan')):.2f} mm, {seconds:.1f} s", flush=True)
        if rows:
            summary = write_results(rows, null_rows, methods, len(rows) // len(methods), len(items), args, command, len(nulls))
    return summary


def write_results(rows: list[dict], null_rows: list[dict], methods, done: int, total: int, args, command: str, n_null: int = 0) -> dict:
    """Write the CSV, the JSON summary and the docs section for the pairs done so far (after every pair)."""
    summary = summarise(rows)
    null = summarise(null_rows) if null_rows else {}
    csv_path = Path(args.csv).with_name(f"{Path(args.csv).stem}_{args.dataset}{args.tag}.csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        every = rows + null_rows
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in every for k in r)))
        w.writeheader()
        w.writerows(every)
    text = markdown(summary, methods, done, command, args.dataset, null)
    done_null = len(null_rows) // max(len(methods), 1)
    if done < total or done_null < n_null:
        text += f"\nPartial: {done} of {total} pairs and {done_null} of {n_null} null pairs done when this was written.\n"
    write_section(args.output, f"accuracy-{args.dataset}{args.tag}", text)
    csv_path.with_suffix(".json").write_text(json.dumps({"moved": summary, "null": null}, indent=2))
    return summary

if __name__ == "__main__":
    main()
