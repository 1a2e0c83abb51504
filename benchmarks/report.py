"""Write one benchmark's section of ``docs/benchmarks.md`` without touching the others.

Each benchmark command owns the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``;
a section not there yet is appended.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["write_section", "machine_line"]


def machine_line() -> str:
    """The machine a benchmark ran on, in words: CPU cores, torch threads, GPU if used."""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"


def write_section(path: str | os.PathLike, name: str, text: str) -> Path:
    """Replace (or append) section ``name`` of the markdown file ``path`` with ``text``.

    Holds an exclusive lock on ``path``'s lock file while it reads and writes, so benchmarks of
    different data sets can run at the same time and write their sections into one file.
    """
    import fcntl

    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_text() if path.exists() else "# Benchmarks\n\n"
        if begin in old and end in old:
            head, rest = old.split(begin, 1)
            new = head + block + rest.split(end, 1)[1].lstrip("\n")
        else:
            new = old.rstrip("\n") + "\n\n" + block
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        os.replace(tmp, path)
    return path
