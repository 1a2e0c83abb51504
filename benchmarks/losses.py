"""Forward+backward time and peak memory of the fast losses and the velocity integration against MONAI's, in one run.

    python -m benchmarks.losses --sizes 64 96 128 --output docs/benchmarks.md

Each (loss, implementation, size) is measured in a fresh process: peak memory is the rise of
the process's peak resident set (CPU) or of ``torch.cuda.max_memory_allocated`` (GPU) over
its level once the inputs exist; time is the fastest of ``--repeats`` forward+backward passes
after one warm-up. Results replace the ``losses`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from .report import machine_line, write_section

LOSSES = {
    "mutual information (32 bins)": (
        "monai.losses.GlobalMutualInformationLoss(kernel_type='b-spline', num_bins=32)",
        "bundle.losses.SparseMutualInformationLoss(num_bins=32)",
        "image",
    ),
    "bending energy": ("monai.losses.BendingEnergyLoss()", "bundle.losses.BendingEnergy()", "field"),
    "diffusion": ("monai.losses.DiffusionLoss()", "bundle.losses.Diffusion()", "field"),
    # the sum of the integrated field, so that the backward runs; the grids the network and the refinement integrate
    "scaling and squaring (7 steps)": (
        "(lambda f: lambda v: f(v).sum())(monai.networks.blocks.DVF2DDF(7, 'bilinear', 'border'))",
        "(lambda f: lambda v: f(v).sum())(bundle.networks.deformable_head.ScalingAndSquaring(7))",
        "field",
        (8, 16, 24),
    ),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def measure_one(expression: str, kind: str, size: int, device: str, repeats: int) -> dict:
    """Time and peak memory of ``expression`` (a loss constructor) on inputs of ``size``^3."""
    import monai.losses  # noqa: F401
    import monai.networks.blocks  # noqa: F401

    import bundle.losses  # noqa: F401 - names used by ``expression``
    import bundle.networks.deformable_head  # noqa: F401

    loss = eval(expression)  # noqa: S307 - our own constant expressions
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, size, size, size) if kind == "image" else (1, 3, size, size, size)
    inputs = [torch.rand(shape, generator=g).to(device) for _ in range(2 if kind == "image" else 1)]
    cuda = device.startswith("cuda")

    def step():
        x = inputs[0].clone().requires_grad_(True)
        loss(x, *inputs[1:]).backward()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    step()
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "peak_mb": max(peak, 0.0)}


def measure(expression: str, kind: str, size: int, device: str, repeats: int) -> dict:
    """:func:`measure_one` in a fresh Python process (clean peak-memory baseline)."""
    cmd = [sys.executable, "-m", "benchmarks.losses", "--one", expression, kind, str(size), device, str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "## Losses and the velocity integration: forward + backward",
        "",
        f"Machine: {machine_line()}. Command: `{command}`.",
        "Each cell: fastest of the repeats after a warm-up; peak memory over the inputs, in a fresh process.",
        "",
        "| loss or layer | size | device | MONAI s | ours s | speed-up | MONAI peak MB | ours peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, o = r["monai"], r["ours"]
        lines.append(
            f"| {r['loss']} | {r['size']}^3 | {r['device']} | {m['seconds']:.4f} | {o['seconds']:.4f} | "
            f"{m['seconds'] / o['seconds']:.1f}x | {m['peak_mb']:.0f} | {o['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="the losses' sizes (the integration has its own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        expression, kind, size, device, repeats = args.one
        print(json.dumps(measure_one(expression, kind, int(size), device, int(repeats))))
        return []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name, (theirs, ours, kind, *own_sizes) in LOSSES.items():
        for size in own_sizes[0] if own_sizes else args.sizes:
            for device in devices:
                row = {"loss": name, "size": size, "device": device}
                row["monai"] = measure(theirs, kind, size, device, args.repeats)
                row["ours"] = measure(ours, kind, size, device, args.repeats)
                print(json.dumps(row), flush=True)
                rows.append(row)
    command = "python -m benchmarks.losses " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(args.output, "losses", markdown(rows, command.strip()))
    return rows


if __name__ == "__main__":
    main()
