"""Decathlon-style datalists (``{"test": [{"fixed": ..., "moving": ...}, ...]}``), checked before any work starts."""

from __future__ import annotations

import json
import os

__all__ = ["DATALIST_FILE_KEYS", "read_datalist"]

DATALIST_FILE_KEYS = ("fixed", "moving", "fixed_label", "moving_label", "gt_ddf")


def _load_json(path: str) -> object:
    """The parsed JSON of a datalist file, or a one-line error naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: datalist not found")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: datalist is not a file")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: unreadable datalist, not JSON ({' '.join(str(e).split())[:200]})") from None


def _check_items(path: str, section: str, items: object) -> None:
    """Every item of ``section`` is an object with ``fixed`` and ``moving``."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: section '{section}' of the datalist is not a non-empty list of items")
    for i, item in enumerate(items):
        missing = [k for k in ("fixed", "moving") if not isinstance(item, dict) or k not in item]
        if missing:
            raise ValueError(f"{path}: item {i} of '{section}' lacks key(s) {missing}")


def _check_files_exist(path: str, section: str, items: list[dict]) -> None:
    """Fail before any output is written when a file named by an item is missing."""
    for i, item in enumerate(items):
        for key in DATALIST_FILE_KEYS:
            if isinstance(item.get(key), str) and not os.path.isfile(item[key]):
                raise FileNotFoundError(f"{item[key]}: file not found ('{key}' of item {i} of '{section}' in {path})")


def read_datalist(path, section) -> list[dict]:
    """The items of one section of a decathlon-style datalist, paths resolved against its folder.

    Raises:
        FileNotFoundError / ValueError: one line naming the file: missing, not JSON, no such
            section, an item without ``fixed``/``moving``, or a file named by an item missing.
    """
    from monai.data import load_decathlon_datalist

    path = str(path)
    data = _load_json(path)
    if not isinstance(data, dict) or section not in data:
        raise ValueError(f"{path}: datalist has no '{section}' section")
    _check_items(path, section, data[section])
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section)
    _check_files_exist(path, section, items)
    return items
