"""Point lists as CSV files of world coordinates, RAS or LPS.

The header names the coordinate columns: ``x,y,z`` (``x,y`` in 2D), with the space given by
a flag, or ``x_ras,y_ras,z_ras`` / ``x_lps,y_lps,z_lps`` naming it themselves. Plain ``x,y,z``
defaults to LPS, the convention of ITK and ``antsApplyTransformsToPoints``. Other columns
(``t``, ``label``, ``name``...) are carried through unchanged.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write

__all__ = ["PointTable", "read_points", "write_points", "SPACES"]

SPACES = ("ras", "lps")
AXES = ("x", "y", "z")


@dataclass
class PointTable:
    """Points read from a CSV file.

    Attributes:
        ras: ``(N, dims)`` world coordinates in RAS mm (whatever the file's space).
        space: the file's space, ``"ras"`` or ``"lps"``; written back in the same space.
        header: the file's column names, in order.
        columns: indices of the coordinate columns in ``header``.
        rows: every row as strings (other columns are written back unchanged).
    """

    ras: np.ndarray
    space: str
    header: list[str]
    columns: list[int]
    rows: list[list[str]] = field(default_factory=list)


def _flip(points: np.ndarray) -> np.ndarray:
    out = np.array(points, dtype=np.float64)
    out[:, :2] *= -1.0
    return out


def _coordinate_columns(path: str, header: list[str], dims: int, space: str | None) -> tuple[list[int], str]:
    names = [h.strip().lower() for h in header]
    for s in SPACES:
        wanted = [f"{a}_{s}" for a in AXES[:dims]]
        if all(w in names for w in wanted):
            if space is not None and space != s:
                raise ValueError(f"{path}: columns name the {s.upper()} space but points_space is {space!r}")
            return [names.index(w) for w in wanted], s
    wanted = list(AXES[:dims])
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"{path}: missing coordinate column(s) {missing}; the header needs {','.join(wanted)} (or {'_ras,'.join(wanted)}_ras / _lps)")
    return [names.index(w) for w in wanted], space or "lps"


def read_points(path: str | os.PathLike, dims: int, space: str | None = None) -> PointTable:
    """Read a points CSV; returns the points in RAS whatever the file's space.

    Args:
        path: CSV with a header row.
        dims: 2 or 3 (the transform's dimensionality).
        space: ``"ras"`` or ``"lps"`` for plain ``x,y,z`` columns (default LPS); ``None`` lets
            the header decide.

    Raises:
        FileNotFoundError / ValueError: one line naming the file: missing, empty, no header,
            missing coordinate columns, a short row or a non-numeric or non-finite coordinate.
    """
    path = str(path)
    if space is not None:
        space = str(space).strip().lower()
        if space not in SPACES:
            raise ValueError(f"points_space must be 'ras' or 'lps', got {space!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: points file not found")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable points file ({' '.join(str(e).split())[:120]})") from None
    reader = csv.reader(io.StringIO(text))
    numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]  # line numbers as in the file
    if not numbered:
        raise ValueError(f"{path}: empty points file (expected a header such as x,y,z)")
    header, numbered = numbered[0][1], numbered[1:]
    rows = [r for _, r in numbered]
    columns, space = _coordinate_columns(path, header, dims, space)
    if not rows:
        raise ValueError(f"{path}: no points below the header")
    values = np.empty((len(rows), dims))
    for i, (line, row) in enumerate(numbered):
        if len(row) < len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} values, the header has {len(header)} columns")
        for j, c in enumerate(columns):
            try:
                values[i, j] = float(row[c])
            except ValueError:
                raise ValueError(f"{path}: line {line}, column '{header[c]}': not a number ({row[c]!r})") from None
            if not np.isfinite(values[i, j]):
                raise ValueError(f"{path}: line {line}, column '{header[c]}': not a finite number ({row[c]!r})")
    ras = values if space == "ras" else _flip(values)
    return PointTable(ras, space, header, columns, rows)


def write_points(path: str | os.PathLike, table: PointTable, ras: np.ndarray) -> Path:
    """Write ``table`` with its coordinates replaced by ``ras`` (in the table's own space), atomically."""
    values = ras if table.space == "ras" else _flip(ras)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    for row, point in zip(table.rows, values):
        row = list(row)
        for c, v in zip(table.columns, point):
            row[c] = f"{v:.6f}"
        writer.writerow(row)

    def write(tmp):
        Path(tmp).write_text(out.getvalue(), encoding="utf-8")

    return atomic_write(path, write)
