"""MR contrast simulation from tissue probability maps.

Each tissue class has a proton density ``PD`` and relaxation times ``T1``/``T2``; the signal of
a pure tissue follows the spin-echo equation

    S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

or, for an inversion-recovery (FLAIR-like) sequence with inversion time ``TI``,

    S = PD * |1 - 2 exp(-TI / T1) + exp(-TR / T1)| * exp(-TE / T2).

A voxel's signal is the probability-weighted mixture of the pure-tissue signals (partial
volume); what the maps leave unassigned (``1 - sum``) is background with zero signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "TissueParameters",
    "SequenceParameters",
    "TISSUE_PARAMETERS_1P5T",
    "SEQUENCES",
    "signal_equation",
    "simulate_contrast",
]


class TissueParameters(NamedTuple):
    """Relaxation times in ms and relative proton density of one tissue."""

    t1_ms: float
    t2_ms: float
    pd: float


class SequenceParameters(NamedTuple):
    """Repetition, echo and (for inversion recovery) inversion time, in ms."""

    tr_ms: float
    te_ms: float
    ti_ms: float | None = None


#: Tissue parameters at 1.5 T used by the BrainWeb simulator (Kwan, Evans & Pike,
#: IEEE TMI 18(11), 1999; Collins et al., IEEE TMI 17(3), 1998).
TISSUE_PARAMETERS_1P5T: dict[str, TissueParameters] = {
    "csf": TissueParameters(t1_ms=2569.0, t2_ms=329.0, pd=1.00),
    "grey": TissueParameters(t1_ms=833.0, t2_ms=83.0, pd=0.86),
    "white": TissueParameters(t1_ms=500.0, t2_ms=70.0, pd=0.77),
}

#: Typical 1.5 T protocols. FLAIR's TI nulls CSF: TI = T1 ln(2 / (1 + exp(-TR / T1))) ~ 1705 ms.
SEQUENCES: dict[str, SequenceParameters] = {
    "t1": SequenceParameters(tr_ms=500.0, te_ms=15.0),
    "t2": SequenceParameters(tr_ms=4000.0, te_ms=100.0),
    "pd": SequenceParameters(tr_ms=4000.0, te_ms=15.0),
    "flair": SequenceParameters(tr_ms=9000.0, te_ms=100.0, ti_ms=1705.0),
}

_ALIASES = {"csf": "csf", "grey": "grey", "gray": "grey", "gm": "grey", "white": "white", "wm": "white"}


def signal_equation(
    pd: float | np.ndarray,
    t1_ms: float | np.ndarray,
    t2_ms: float | np.ndarray,
    tr_ms: float,
    te_ms: float,
    ti_ms: float | None = None,
) -> float | np.ndarray:
    """Signal of a pure tissue for a spin-echo (``ti_ms=None``) or inversion-recovery sequence.

    Args:
        pd: relative proton density.
        t1_ms: longitudinal relaxation time.
        t2_ms: transverse relaxation time.
        tr_ms: repetition time.
        te_ms: echo time.
        ti_ms: inversion time; ``None`` for spin echo.

    Returns:
        The (magnitude) signal, broadcast over the inputs.
    """
    recovery = np.exp(-tr_ms / t1_ms)
    if ti_ms is None:
        longitudinal = 1.0 - recovery
    else:
        longitudinal = np.abs(1.0 - 2.0 * np.exp(-ti_ms / t1_ms) + recovery)
    return pd * longitudinal * np.exp(-te_ms / t2_ms)


def _tissue_probabilities(tissue_maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    maps: dict[str, np.ndarray] = {}
    for key, value in tissue_maps.items():
        name = _ALIASES.get(key.lower())
        if name is None:
            raise ValueError(f"unknown tissue {key!r}; expected some of {sorted(set(_ALIASES))}")
        maps[name] = np.clip(np.asarray(value, dtype=np.float32), 0.0, 1.0)
    if not maps:
        raise ValueError("tissue_maps is empty")
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise ValueError(f"tissue maps have different shapes: {sorted(shapes)}")
    total = sum(maps.values())
    scale = 1.0 / np.maximum(total, 1.0)  # probabilities summing to more than 1 are renormalised
    return {name: m * scale for name, m in maps.items()}


def simulate_contrast(
    tissue_maps: Mapping[str, np.ndarray],
    kind: str | None = "t2",
    *,
    tr_ms: float | None = None,
    te_ms: float | None = None,
    ti_ms: float | None = None,
    rng: np.random.Generator | int | None = None,
    jitter: float = 0.0,
    parameters: Mapping[str, TissueParameters] | None = None,
) -> np.ndarray:
    """Simulate an MR image from tissue probability maps.

    Args:
        tissue_maps: probability maps keyed by ``"csf"``, ``"grey"``, ``"white"`` (aliases
            ``"gray"``, ``"gm"``, ``"wm"``), all of one shape, 2D or 3D.
        kind: a protocol of :data:`SEQUENCES` (``"t1"``, ``"t2"``, ``"pd"``, ``"flair"``), or
            ``None`` to give ``tr_ms`` and ``te_ms`` (and ``ti_ms``) explicitly.
        tr_ms: repetition time; overrides the protocol's.
        te_ms: echo time; overrides the protocol's.
        ti_ms: inversion time; overrides the protocol's (inversion recovery when set).
        rng: random generator or seed for ``jitter``.
        jitter: each tissue's T1, T2 and PD are multiplied by an independent factor drawn
            uniformly from ``[1 - jitter, 1 + jitter]``; 0 disables it.
        parameters: tissue parameters; defaults to :data:`TISSUE_PARAMETERS_1P5T`.

    Returns:
        A float32 image of the maps' shape, min-max normalised to [0, 1].
    """
    if kind is not None:
        if kind not in SEQUENCES:
            raise ValueError(f"unknown contrast {kind!r}; expected one of {sorted(SEQUENCES)} or None")
        preset = SEQUENCES[kind]
        tr_ms = preset.tr_ms if tr_ms is None else tr_ms
        te_ms = preset.te_ms if te_ms is None else te_ms
        ti_ms = preset.ti_ms if ti_ms is None else ti_ms
    if tr_ms is None or te_ms is None:
        raise ValueError("give a contrast kind or both tr_ms and te_ms")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    parameters = TISSUE_PARAMETERS_1P5T if parameters is None else parameters
    rng = np.random.default_rng(rng)

    probabilities = _tissue_probabilities(tissue_maps)
    image = np.zeros(next(iter(probabilities.values())).shape, dtype=np.float32)
    for name in ("csf", "grey", "white"):  # fixed order keeps the random draws reproducible
        if name not in probabilities:
            continue
        t1, t2, pd = parameters[name]
        if jitter > 0:
            t1, t2, pd = np.array([t1, t2, pd]) * rng.uniform(1.0 - jitter, 1.0 + jitter, size=3)
        signal = float(signal_equation(pd, t1, t2, tr_ms, te_ms, ti_ms))
        image += np.float32(signal) * probabilities[name]
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image)
    return (image - low) / np.float32(high - low)
