"""Checkpoints that survive a kill at any moment.

MONAI's ``CheckpointSaver`` (through Ignite's ``Checkpoint``) removes the previous file
*before* writing its successor, and writes it in place. A training killed during that write
is left with a truncated checkpoint, or none, and cannot resume. :func:`make_atomic` swaps
the savers' disk handlers for :class:`AtomicDiskSaver`, which writes to a temporary file,
renames it over the final name, and only then removes the file it supersedes.
:func:`load_network_weights` reads them back, weights only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver

from .io import atomic_write

__all__ = ["AtomicDiskSaver", "make_atomic", "load_network_weights"]

_CHECKPOINTS = ("_interval_checkpoint", "_final_checkpoint", "_key_metric_checkpoint")


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that never leaves a torn or missing checkpoint behind.

    Args:
        dirname: folder of the checkpoints.
        filename: fixed file name (MONAI's ``key_metric_filename``), or ``None`` for Ignite's names.
    """

    def __init__(self, dirname, filename: str | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        name = self.filename or filename
        if idist.get_rank() == self.save_on_rank:
            atomic_write(self.dirname / name, lambda tmp: torch.save(checkpoint, tmp))
            for old in self._superseded:
                if old != name:
                    (self.dirname / old).unlink(missing_ok=True)
        self._superseded = []

    def remove(self, filename: str) -> None:
        """Defer the removal until the next checkpoint is in place."""
        self._superseded.append(self.filename or filename)


def make_atomic(*handlers) -> None:
    """Give every MONAI ``CheckpointSaver`` among ``handlers`` (or lists of them) atomic disk writes."""
    from monai.handlers import CheckpointSaver

    for handler in _flatten(handlers):
        if not isinstance(handler, CheckpointSaver):
            continue
        for attr in _CHECKPOINTS:
            ckpt = getattr(handler, attr, None)
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(handler.save_dir, getattr(ckpt.save_handler, "filename", None))


def _flatten(items: Iterable) -> list:
    out = []
    for item in items:
        out.extend(_flatten(item) if isinstance(item, (list, tuple)) else [item])
    return out


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, map_location="cpu", exclude: Sequence[str] = ()) -> torch.nn.Module:
    """Load weights saved by the training config, refusing pickled code and foreign architectures.

    ``exclude``: key prefixes (e.g. ``["affine_head."]``) skipped on both sides: those modules keep
    their current weights, which lets a new head start from a checkpoint trained with another one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: one line naming the file: not a weights-only checkpoint, or keys/shapes
            that do not match ``network``; ``network`` keeps its weights then.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a weights-only checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a weights-only checkpoint (refusing to run arbitrary code): {first}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if exclude:
        prefixes = tuple(exclude)
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
        state.update({k: v for k, v in network.state_dict().items() if k.startswith(prefixes)})
    before = {k: v.detach().clone() for k, v in network.state_dict().items()}
    try:
        network.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001
        network.load_state_dict(before)  # load_state_dict copies what fits before it raises: undo that
        msg = " ".join(str(e).split())[:300]
        raise ValueError(f"{path}: checkpoint does not fit this network architecture ({msg})") from None
    return network
