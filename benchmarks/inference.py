"""Register-and-write time per stage and peak memory at real sizes, against a baseline commit.

    python -m benchmarks.inference --baseline 2310d5c --output docs/benchmarks.md

Generates (once) a 2 mm (91x109x91) and a 1 mm (181x217x181) T2->T1 pair, then for this
working tree and for ``--baseline`` (checked out with ``git worktree``) runs the full
``PairRegistrar.register_files`` path ``--repeats`` times in a fresh process per size and
version, reporting the median seconds of each stage (load, preprocess = resampling onto the
network grid, network, resample = field and image back to the fixed grid, Jacobian, write)
and the process's peak resident memory. Results replace the ``inference`` section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bundle.cli import BUNDLE_ROOT

from .report import machine_line, write_section

STAGES = ("load", "preprocess", "network", "resample", "jacobian", "write")

# Runs inside the version under test (its own ``bundle`` package), so it uses only long-standing API.
_SNIPPET = """
import json, os, resource, statistics, sys
from monai.bundle import ConfigParser
from bundle.inference import PairRegistrar
folder, out, repeats, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
composed = os.path.exists("configs/common.json")  # configs composed over common.json since that file exists
parser = ConfigParser(); parser.read_config(["configs/common.json", "configs/inference.json"] if composed else "configs/inference.json")
registrar = PairRegistrar(parser.get_parsed_content("network_def", instantiate=True), "models/model.pt", device=device, overwrite=True)
runs = [registrar.register_files(folder + "/fixed.nii.gz", folder + "/moving.nii.gz", out)["seconds"] for _ in range(repeats)]
keys = set().union(*runs)
print(json.dumps({"seconds": {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys},
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ensure_pairs(folder: Path) -> dict[str, Path]:
    """The benchmark pairs (seed 7, T2 moving) at 2 mm and 1 mm, generated on first use."""
    from bundle.data.pairs import generate_pair, write_pair

    pairs = {}
    for spacing in (2.0, 1.0):
        path = folder / f"{spacing:g}mm"
        if not (path / "moving.nii.gz").is_file():
            write_pair(path, generate_pair(7, "t2", 3, spacing))
        pairs[f"{spacing:g} mm"] = path
    return pairs


def measure(root: Path, pair: Path, repeats: int, device: str) -> dict:
    """Median stage seconds and peak memory of the code at ``root`` on ``pair``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", _SNIPPET, str(pair), out, str(repeats), device]
        proc = subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed in {root}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], command: str, baseline: str | None) -> str:
    lines = [
        "## Inference at real sizes: register and write one pair",
        "",
        f"Machine: {machine_line()}. Command: `{command}`. Median of the repeats, each a full",
        "`register_files` (read, resample to the 2 mm network grid, network, field and warped image back",
        "on the fixed grid, Jacobian, write NIfTI/ITK files); peak = the process's peak resident memory.",
        (f"`baseline` is commit `{baseline}` run in the same session, side by side." if baseline else ""),
        "",
        "| pair | code | " + " | ".join(STAGES) + " | total s | peak MB |",
        "|---" * (len(STAGES) + 4) + "|",
    ]
    for r in rows:
        s = r["seconds"]
        cells = " | ".join(f"{s[k]:.2f}" if k in s else "in total" for k in STAGES)  # older code did not time every stage
        lines.append(f"| {r['pair']} | {r['code']} | {cells} | {s['total']:.2f} | {r['peak_mb']:.0f} |")
    return "\n".join(line for line in lines if line is not None)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=None, help="git commit to compare with (run from a temporary worktree)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(BUNDLE_ROOT / "outputs" / "benchmarks" / "inference_pairs"))
    parser.add_argument("--output", default=str(BUNDLE_ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    pairs = ensure_pairs(Path(args.data))
    versions = {"this": BUNDLE_ROOT}
    worktree = None
    if args.baseline:
        worktree = Path(tempfile.mkdtemp(prefix="xmreg-baseline-"))
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=BUNDLE_ROOT, check=True, capture_output=True)
        versions = {"baseline": worktree, "this": BUNDLE_ROOT}
    rows = []
    try:
        for name, path in pairs.items():
            for code, root in versions.items():
                row = {"pair": name, "code": code, **measure(root, path.resolve(), args.repeats, args.device)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=BUNDLE_ROOT, capture_output=True)
    command = "python -m benchmarks.inference " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(args.output, "inference", markdown(rows, command.strip(), args.baseline))
    return rows


if __name__ == "__main__":
    main()
