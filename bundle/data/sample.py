"""The embedded sample data set: generated once from installed templates, then reused."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from .pairs import write_sample_data

__all__ = ["ensure_sample_datalist"]


def ensure_sample_datalist(output_dir: str | os.PathLike, **kwargs) -> str:
    """Return ``output_dir/datalist.json``, generating the sample pairs first if absent.

    A datalist written with other generator arguments (``spatial_dims``, ``spacing_mm``,
    split sizes, ``seed``) is regenerated, so an override never reuses stale pairs.

    Args:
        output_dir: folder of the sample data set.
        kwargs: arguments of :func:`bundle.data.pairs.write_sample_data`.
    """
    path = Path(output_dir) / "datalist.json"
    if path.is_file():
        with open(path) as f:
            existing = json.load(f)
        defaults = {k: p.default for k, p in inspect.signature(write_sample_data).parameters.items() if p.default is not p.empty}
        wanted = {**defaults, **kwargs}  # an omitted argument means its default, not "anything"
        sizes = {"n_train": "training", "n_val": "validation", "n_test": "test"}
        same = all(existing.get(k) == wanted[k] for k in ("spatial_dims", "spacing_mm", "seed"))
        same = same and all(len(existing.get(s, [])) == wanted[k] for k, s in sizes.items())
        if same:
            return str(path)
    return str(write_sample_data(output_dir, **kwargs))
