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

from bundle.cli import BUNDLE_ROOT
from bundle.data.sample import ensure_sample_datalist
from bundle.evaluate import PairData, _identity_result, summarise
from bundle.inference import PairRegistrar, _read_datalist

from bundle.data.subject import write_subject_data

from . import classical
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
METHODS = ("identity", "elastix", "ants_affine", "ants_syn", "model_affine", "model_full")


def _network(dims: int = 3):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    parser["spatial_dims"] = dims
    return parser.get_parsed_content("network_def", instantiate=True)


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
    if method in ("model_affine", "model_full"):
        res = registrar.register_arrays(fixed, fixed_affine, moving, moving_affine, stage=method.split("_")[1])
        return res["ddf_mm"], res["warped"]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def run_method(method: str, pair: PairData, registrar: PairRegistrar) -> tuple[np.ndarray, np.ndarray]:
    """:func:`register_with` on a datalist pair."""
    return register_with(
        method, pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, pair.item["fixed"], pair.item["moving"], registrar
    )


def _dataset_datalist(dataset: str, per_contrast: int) -> str:
    """The datalist of a named data set, generated on first use."""
    if dataset == "subject":
        path = BUNDLE_ROOT / "sample_data" / "subject" / "datalist.json"
        if not path.is_file() or len(_read_datalist(str(path), "test")) < 2 * per_contrast:
            write_subject_data(path.parent, pairs_per_contrast=per_contrast)
        return str(path)
    return ensure_sample_datalist(BUNDLE_ROOT / "sample_data" / "3d", spatial_dims=3, spacing_mm=2.0, n_train=32, n_val=4, n_test=20)


def select_items(datalist: str, section: str, per_contrast: int) -> list[dict]:
    """The first ``per_contrast`` items of each contrast in a datalist section."""
    items, counts = [], {}
    for item in _read_datalist(datalist, section):
        c = item.get("contrast", "")
        if counts.get(c, 0) < per_contrast:
            items.append(item)
            counts[c] = counts.get(c, 0) + 1
    return items


DATASETS = {
    "templates": "held-out generated 3D pairs of the deformed SPM templates (2 mm, T2->T1 and PD->T1)",
    "subject": "3D pairs of SPM's single-subject T1, anatomy never used in training (2 mm, T2-like->T1 and PD-like->T1)",
}


def markdown(summary: dict, methods, n_pairs: int, command: str, dataset: str = "templates") -> str:
    lines = [
        f"## Accuracy and time: {dataset}",
        "",
        f"Produced by `{command}` on {n_pairs} {DATASETS[dataset]},",
        f"all methods in the same run on the same machine: {machine_line()}.",
        "Seconds per pair: the model's time covers resampling onto its grid, the network and mapping the field",
        "back; elastix and ANTs times cover their own file reading and registration.",
        "",
        "| method | " + " | ".join(name for _, name, _ in METRICS) + " | median s/pair |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for m in methods:
        s = summary.get(m)
        if not s:
            continue
        cells = [fmt.format(s[k]["mean"]) if k in s else "n/a" for k, _, fmt in METRICS]
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
    parser.add_argument("--csv", default=str(BUNDLE_ROOT / "outputs" / "benchmarks" / "metrics.csv"))
    args = parser.parse_args(argv)
    datalist = args.datalist or _dataset_datalist(args.dataset, args.pairs_per_contrast)
    methods = [m for m in args.methods.split(",") if m]
    registrar = PairRegistrar(_network(3), args.checkpoint)
    if any(m.startswith("model") for m in methods):
        registrar.load_weights()
    items = select_items(datalist, args.section, args.pairs_per_contrast)
    command = ("python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    rows, summary = [], {}
    for i, item in enumerate(items):
        pair = PairData(registrar, item)
        for method in methods:
            t0 = time.perf_counter()
            ddf_mm, warped = run_method(method, pair, registrar)
            seconds = time.perf_counter() - t0
            rows.append(pair.row(method, pair.score(ddf_mm, warped), seconds))
            print(f"[{i + 1}/{len(items)}] {item.get('contrast')} {method}: Dice {rows[-1]['dice_mean']:.3f} "
                  f"err {rows[-1].get('disp_error_mean_mm', float('nan')):.2f} mm, {seconds:.1f} s", flush=True)
        summary = write_results(rows, methods, i + 1, len(items), args, command)
    return summary


def write_results(rows: list[dict], methods, done: int, total: int, args, command: str) -> dict:
    """Write the CSV, the JSON summary and the docs section for the pairs done so far (after every pair)."""
    summary = summarise(rows)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    text = markdown(summary, methods, done, command, args.dataset)
    if done < total:
        text += f"\nPartial: {done} of {total} pairs done when this was written.\n"
    write_section(args.output, f"accuracy-{args.dataset}", text)
    Path(args.csv).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary

if __name__ == "__main__":
    main()
