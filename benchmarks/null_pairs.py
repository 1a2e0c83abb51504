"""Aligned ("null") pairs: a moving contrast of the same anatomy with no motion at all.

Any displacement a method returns on these pairs is invented motion; the benchmark reports
its mean in the brain. One pair per contrast and data set (``templates``: the SPM avg152
T2/PD against avg152T1; ``subject``: the unseen subject's rendered T2/PD against its T1).

    python -m benchmarks.null_pairs --dataset subject
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundle.cli import BUNDLE_ROOT
from bundle.data.deform import MotionRange
from bundle.data.pairs import generate_pair, write_pair
from bundle.io import atomic_write

__all__ = ["write_null_pairs", "null_datalist"]



def write_null_pairs(output_dir, dataset: str = "templates", contrasts=("t2", "pd"), spacing_mm: float = 2.0) -> Path:
    """Write one aligned pair per contrast (``test`` section of ``output_dir/datalist.json``)."""
    output_dir = Path(output_dir)
    volumes = None
    if dataset == "subject":
        from bundle.data.subject import subject_volumes

        volumes = subject_volumes(spacing_mm)
    items = []
    for i, contrast in enumerate(contrasts):
        pair = generate_pair(i, contrast, 3, spacing_mm, contrast_jitter=0.0, volumes=volumes, motion=MotionRange.none())
        paths = write_pair(output_dir / "test" / f"{i:04d}", pair)
        items.append({**{k: p.relative_to(output_dir).as_posix() for k, p in paths.items()}, "contrast": f"{contrast} null"})
    text = json.dumps({"name": f"xmreg-null-{dataset}", "spacing_mm": spacing_mm, "test": items}, indent=2) + "\n"
    return atomic_write(output_dir / "datalist.json", lambda tmp: Path(tmp).write_text(text))


def null_datalist(dataset: str) -> str:
    """The null pairs' datalist of a data set, generated on first use."""
    path = BUNDLE_ROOT / "sample_data" / f"{dataset}_null" / "datalist.json"
    if not path.is_file():
        write_null_pairs(path.parent, dataset)
    return str(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="templates", choices=("templates", "subject"))
    print(null_datalist(parser.parse_args().dataset))
