"""Data-parallel training and batch registration with 2 gloo processes on CPU (torchrun).

``configs/multi_gpu_train.json`` / ``configs/multi_gpu_inference.json`` merged over the
single-process configs, launched as ``python -m torch.distributed.run --nproc_per_node=2``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch import nn

from bundle.inference import OUTPUT_FILES
from bundle.networks import RegistrationBundleNet, StructuredRegistration, structured_forward

from conftest import ROOT, composed, config_files, run_bundle

TRAIN = "['configs/common.json','configs/train.json','configs/multi_gpu_train.json']"
INFER = "['configs/common.json','configs/inference.json','configs/multi_gpu_inference.json']"
FIRST_4 = "$monai.data.load_decathlon_datalist(@datalist_file, True, 'training')[:4]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> str:
    """``torchrun --nproc_per_node=nproc -m monai.bundle <args>`` on CPU (gloo); returns the log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    proc = subprocess.run([*cmd, "-m", "monai.bundle", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"torchrun monai.bundle {args[0]} failed ({proc.returncode}):\n{log[-4000:]}")
    return log


def _train_args(root, datalist) -> list[str]:
    # SGD, not Adam: Adam rescales each gradient element to ~lr, so biases in front of an
    # instance norm (mathematically zero gradient, numerically rounding noise) would move by
    # +-lr depending on the noise, in either run. The shipped loss is a batch mean of
    # per-pair terms (its MI histograms span each pair's own range), as the check requires.
    return [
        "run", "--bundle_root", str(root), "--datalist_file", str(datalist), "--spatial_dims", "2",
        "--train#augmentation", "[]", "--train#datalist", FIRST_4, "--train#trainer#max_epochs", "1",
        "--val_interval", "1", "--optimizer#_target_", "torch.optim.SGD", "--learning_rate", "0.01",
        # the regression affine head: the keypoint head's closed-form fit amplifies rounding noise (0.9e-3 apart after
        # one epoch, measured), which would hide what this test checks, the distributed machinery
        "--network_def#affine", "regression",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(sample_2d, tmp_path_factory):
    """The same 2 iterations (4 pairs, no shuffling): 1 process x batch 2 and 2 ranks x batch 1."""
    single, ddp = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("ddp")
    run_bundle(*_train_args(single, sample_2d), "--config_file", composed("train.json"),
               "--train#dataloader#shuffle", "False", "--train#dataloader#batch_size", "2")  # fmt: skip
    log = torchrun(*_train_args(ddp, sample_2d), "--config_file", TRAIN, "--train#sampler#shuffle", "False")
    return single, ddp, log


def _files(root) -> list[str]:
    names = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
    return sorted(re.sub(r"tfevents\..*", "tfevents", n) for n in names)


def test_weights_match_single_process(runs):
    single, ddp, _ = runs
    name = "models/last_checkpoint_final_iteration=2.pt"
    a = torch.load(single / name, weights_only=True)["model"]
    b = torch.load(ddp / name, weights_only=True)["model"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    init = _initial_weights()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    step = max(float((a[k] - init[k]).abs().max()) for k in a)
    print(f"max |w_1proc - w_2proc| = {diff:.3e} (largest weight change from init {step:.3e})")
    assert step > 1e-2, step  # the weights did move, so a missing gradient sync would show
    assert diff < 1e-5, diff


def _initial_weights() -> dict:
    """The weights both runs start from: train.json's ``network_def`` (2D) after its seed."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config(config_files("train.json"))
    parser["spatial_dims"] = 2
    parser["network_def"]["affine"] = "regression"  # as _train_args
    set_determinism(seed=parser["seed"])
    try:
        return parser.get_parsed_content("network_def", instantiate=True).state_dict()
    finally:
        set_determinism(seed=None)


def test_validation_reduced_across_ranks(runs):
    single, ddp, _ = runs
    read = lambda root: dict(line.strip().split(",") for line in open(root / "runs" / "train" / "metrics.csv"))  # noqa: E731
    a, b = read(single), read(ddp)
    # each rank validates 1 of the 2 pairs; the logged value is the mean over both
    assert float(a["val_identity_dice"]) == pytest.approx(float(b["val_identity_dice"]), abs=1e-6)
    assert float(a["val_mean_dice"]) == pytest.approx(float(b["val_mean_dice"]), abs=1e-4)


def test_rank0_only_artefacts(runs):
    single, ddp, log = runs
    assert _files(ddp) == _files(single)  # checkpoints, model.pt, metrics.csv, TensorBoard: one set
    pids = {p.name.split(".")[-2] for p in (ddp / "runs" / "train").glob("*tfevents*")}
    assert len(pids) == 1, pids  # all event files from one process (rank 0)
    assert len(re.findall(r"Epoch: 1/1, Iter: \d/2 --", log)) == 2  # iteration logs from rank 0 only
    assert len(re.findall(r"Epoch\[1\] Metrics --", log)) == 1


def test_batch_registration_split(runs, sample_2d, tmp_path):
    _, ddp, _ = runs
    data = json.loads(sample_2d.read_text())
    abs_path = lambda p: p if os.path.isabs(p) else str(sample_2d.parent / p)  # noqa: E731
    datalist = tmp_path / "three.json"  # 3 pairs on 2 ranks: an uneven split
    datalist.write_text(json.dumps({"test": [{k: abs_path(it[k]) for k in ("fixed", "moving", "fixed_label", "moving_label")} for it in data["test"][:3]]}))
    out = tmp_path / "out"
    log = torchrun("run", "--config_file", INFER, "--spatial_dims", "2", "--spacing_mm", "2.0", "--network_def#affine", "regression",
                   "--checkpoint", str(ddp / "models" / "model.pt"), "--datalist", str(datalist), "--output_dir", str(out))  # fmt: skip
    done = [(int(r), int(i)) for r, i in re.findall(r"rank (\d)/2: pair (\d{4})", log)]
    assert Counter(i for _, i in done) == Counter({0: 1, 1: 1, 2: 1}), done  # every pair exactly once
    assert sorted(done) == [(0, 0), (0, 2), (1, 1)]
    assert sorted(p.name for p in out.iterdir()) == ["0000", "0001", "0002"]
    for i in range(3):
        assert set(OUTPUT_FILES) - {"keypoints.csv"} <= {p.name for p in (out / f"{i:04d}").iterdir()}  # regression head: no keypoints
        assert json.loads((out / f"{i:04d}" / "metrics.json").read_text())["moving"] == abs_path(data["test"][i]["moving"])


def test_structured_forward_goes_through_the_wrapper():
    net = RegistrationBundleNet(spatial_dims=2, encoder_channels=(4, 8), affine_channels=8)
    x = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    direct = net.register(*x, bidirectional=False, synthesis=False).forward.ddf
    wrapped = structured_forward(StructuredRegistration(net), *x, bidirectional=False, synthesis=False).forward.ddf
    torch.testing.assert_close(direct, wrapped)

    class Wrapper(nn.Module):  # like DistributedDataParallel(net): a bare network inside
        def __init__(self):
            super().__init__()
            self.module = net

    with pytest.raises(TypeError, match="StructuredRegistration"):
        structured_forward(Wrapper(), *x)


def test_multi_gpu_config_follows_train_json():
    """Rank-0-only handlers of train.json are disabled by one named switch that multi_gpu_train.json sets."""
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    multi = json.loads((ROOT / "configs" / "multi_gpu_train.json").read_text())
    assert train["is_not_rank0"] is False and "get_rank()" in multi["is_not_rank0"]
    assert not [k for k in multi if k.endswith("#_disabled_")], "handlers are switched by name, not by list index"
    handlers = [h for s in ("train", "validate") for h in train[s]["handlers"]]
    switched = {h["_target_"] for h in handlers if h.get("_disabled_") == "@is_not_rank0"}
    assert switched == {"StatsHandler", "TensorBoardStatsHandler", "ignite.handlers.ProgressBar", "CheckpointSaver"}
    kept = [h["_target_"] for h in handlers if "_disabled_" not in h]
    assert kept == ["ValidationHandler", "MetricsSaver"]  # both need every rank (evaluation, all-gather)
    calls = lambda exprs: set(re.findall(r"(bundle\.[\w.]+|@[\w#]+\.attach)\(", " ".join(exprs)))  # noqa: E731
    assert calls(train["initialize"]) <= calls(multi["initialize"]), "a step of train.json's initialize is missing"
