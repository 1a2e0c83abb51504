"""Compare refinement settings side by side on the same pairs, in one run.

    python -m benchmarks.refine_sweep --dataset subject --pairs_per_contrast 2 \
        --variants '{"shipped": {}, "fine_affine": {"levels": [4, 2, 1], "affine_iterations": [100, 100, 30], "deformable_iterations": [60, 100, 0]}}'

Each variant is a set of :class:`bundle.refine.InstanceRefiner` keywords over the shipped ones
(``configs/common.json``); every variant registers every pair (and the data set's aligned null
pairs) with the shipped network and initialisation. The extra key ``"network": false`` starts a
variant's refinement from the initialisation alone, so the network's share of a budget is measured. Prints one line per pair and a table of
means: displacement error, Dice, invented motion on the null pairs, seconds, iterations. This
is how the refinement defaults are chosen (issue: accurate registration).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bundle.data.datalist import read_datalist
from bundle.evaluate import PairData
from bundle.refine import InstanceRefiner

from .null_pairs import null_datalist
from .run import _dataset_datalist, _parser, _registrar, refiner_with, select_items, shipped_refiner_kwargs

__all__ = ["main", "shipped_refiner_kwargs", "variant_refiner"]


def variant_refiner(base: dict, over: dict) -> tuple[InstanceRefiner, bool]:
    """A variant's refiner (``over`` on the ``base`` keywords) and whether it starts from the network."""
    over = dict(over)
    from_network = bool(over.pop("network", True))
    return refiner_with(over, base), from_network


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="subject", choices=["subject", "templates"])
    ap.add_argument("--pairs_per_contrast", type=int, default=2)
    ap.add_argument("--variants", default='{"shipped": {}}', help="JSON object: name -> refiner keywords over the shipped ones")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--null", type=int, default=1)
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)
    base = shipped_refiner_kwargs()
    registrar = _registrar(args.checkpoint) if args.checkpoint else _registrar(_parser().get_parsed_content("checkpoint"))
    registrar.load_weights()
    items = select_items(_dataset_datalist(args.dataset, args.pairs_per_contrast), "test", args.pairs_per_contrast)
    nulls = read_datalist(null_datalist(args.dataset), "test") if args.null else []
    results: dict = {name: {"err": [], "err_affine": [], "dice": [], "null": [], "s": [], "it": []} for name in variants}
    for item, is_null in [(i, True) for i in nulls] + [(i, False) for i in items]:
        pair = PairData(registrar, item)
        for name, over in variants.items():
            registrar.refiner, from_network = variant_refiner(base, over)
            t0 = time.perf_counter()
            res = registrar.register_arrays(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, network=from_network)
            seconds = time.perf_counter() - t0
            m = pair.score(res["ddf_mm"], res["warped"])
            its = sum(v.get("iterations", 0) for v in res["refinement"].values())
            r = results[name]
            r["s"].append(seconds)
            r["it"].append(its)
            if is_null:
                r["null"].append(m["disp_error_mean_mm"])
            else:
                aff = registrar.register_arrays(pair.fixed, pair.fixed_affine, pair.moving, pair.moving_affine, stage="affine", network=from_network)
                r["err"].append(m["disp_error_mean_mm"])
                r["dice"].append(m["dice_mean"])
                r["err_affine"].append(pair.score(aff["ddf_mm"], aff["warped"])["disp_error_mean_mm"])
            print(f"{item.get('contrast')} {'null' if is_null else 'moved'} {name}: err {m['disp_error_mean_mm']:.3f} mm "
                  f"Dice {m['dice_mean']:.3f} {seconds:.1f} s {its} it", flush=True)
    print("\n| variant | disp. error mm | affine-stage error mm | Dice | null invented mm | s/pair | iterations |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name, r in results.items():
        s = {k: float(np.mean(v)) if v else float("nan") for k, v in r.items()}
        s["s"] = float(np.median(r["s"]))
        summary[name] = s
        print(f"| {name} | {s['err']:.3f} | {s['err_affine']:.3f} | {s['dice']:.3f} | {s['null']:.3f} | {s['s']:.1f} | {s['it']:.0f} |")
    return summary


if __name__ == "__main__":
    main()
