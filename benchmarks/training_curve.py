"""Plot the training curve (loss per step, validation Dice) from ``monai.bundle run`` training logs.

    python -m benchmarks.training_curve runs/train3d_4mm.log runs/train3d_2mm.log --output docs/training_curve.png
"""

from __future__ import annotations

import argparse
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STEP = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- .*?loss: (-?[\d.]+)")
VAL = re.compile(r"Epoch\[(\d+)\] Metrics -- val_identity_dice: ([\d.]+) val_mean_dice: ([\d.]+)")


def parse(path: str):
    """(steps, losses, [(step, identity_dice, dice)]) of one log; repeated steps after a resume keep the last."""
    text = open(path, errors="replace").read()
    losses, epoch_len = {}, 1
    for e, i, n, loss in STEP.findall(text):
        epoch_len = int(n)
        losses[(int(e) - 1) * epoch_len + int(i)] = float(loss)
    vals = {int(e) * epoch_len: (float(ident), float(d)) for e, ident, d in VAL.findall(text)}
    steps = sorted(losses)
    return np.array(steps), np.array([losses[s] for s in steps]), sorted((s, *v) for s, v in vals.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--labels", nargs="*")
    parser.add_argument("--output", default="docs/training_curve.png")
    args = parser.parse_args(argv)
    labels = args.labels or args.logs
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0
    for path, label in zip(args.logs, labels):
        steps, losses, vals = parse(path)
        if len(steps) == 0:
            continue
        k = 25
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) > k else losses
        a.plot(steps[: len(smooth)] + offset, smooth, label=label)
        if vals:
            v = np.array(vals)
            b.plot(v[:, 0] + offset, v[:, 2], "o-", label=f"{label}: model")
            b.plot(v[:, 0] + offset, v[:, 1], "x--", color="gray", label=f"{label}: identity")
        offset += int(steps[-1])
    a.set_xlabel("training step")
    a.set_ylabel("total loss (25-step mean)")
    b.set_xlabel("training step")
    b.set_ylabel("validation Dice (CSF/GM/WM)")
    for ax in (a, b):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(args.output)


if __name__ == "__main__":
    main()
