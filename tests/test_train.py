"""Training through ``python -m monai.bundle run --config_file configs/train.json`` (2D, small)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from conftest import ROOT, composed, run_bundle


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    """A short 2D training (4 mm, 16 pairs) through the shipped train config."""
    root = tmp_path_factory.mktemp("train2d")
    proc = run_bundle(
        "run", "--config_file", composed("train.json"), "--bundle_root", str(root),
        "--spatial_dims", "2", "--spacing_mm", "4.0", "--sample_dir", str(root / "sample"),
        "--sample_pairs", json.dumps({"n_train": 16, "n_val": 4, "n_test": 0}),
        "--learning_rate", "0.002", "--train#trainer#max_epochs", "30", "--val_interval", "30",
        "--train#augmentation", "[]",
        timeout=900,
    )
    return root, proc.stderr + proc.stdout


def _losses(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"Iter: \d+/\d+ -- .*?loss: (-?[\d.]+)", log)]


def test_training_lowers_loss_and_beats_identity(trained_2d):
    root, log = trained_2d
    _assert_learned(root, log, min_iterations=400, loss_drop=0.2, dice_gain=0.05)


def _assert_learned(root, log: str, min_iterations: int, loss_drop: float, dice_gain: float) -> None:
    """The mean loss of the last 48 iterations is ``loss_drop`` below the first 48's; validation Dice beats identity."""
    losses = _losses(log)
    assert len(losses) >= min_iterations, len(losses)
    first, last = sum(losses[:48]) / 48, sum(losses[-48:]) / 48
    assert last < first - loss_drop, (first, last)
    rows = list(csv.reader(open(root / "runs" / "train" / "metrics.csv")))
    values = {r[0]: float(r[1]) for r in rows if len(r) >= 2}
    assert values["val_mean_dice"] > values["val_identity_dice"] + dice_gain, values


def test_checkpoints_are_weights_only_and_resumable(trained_2d):
    root, _ = trained_2d
    models = root / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    assert any(k.startswith("affine_head.") for k in best)
    last = sorted(models.glob("last_*.pt"))
    state = torch.load(last[-1], weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 30 * 16  # 30 epochs of 16 pairs: resumes at the right epoch


def test_training_on_synthesised_pairs_generalises_to_template_pairs(tmp_path):
    """``--training_data @synth#dataset``: streamed label-map pairs; validated on template pairs never trained on."""
    proc = run_bundle(
        "run", "--config_file", composed("train.json"), "--bundle_root", str(tmp_path),
        "--spatial_dims", "2", "--spacing_mm", "4.0", "--sample_dir", str(tmp_path / "sample"),
        "--sample_pairs", json.dumps({"n_train": 0, "n_val": 4, "n_test": 0}),
        "--training_data", "@synth#dataset", "--synth#pairs_per_epoch", "16",
        "--learning_rate", "0.002", "--train#trainer#max_epochs", "25", "--val_interval", "25",
        timeout=900,
    )
    _assert_learned(tmp_path, proc.stderr + proc.stdout, min_iterations=350, loss_drop=0.1, dice_gain=0.03)


def test_time_limit_stops_training_saves_the_final_state_and_resumes(tmp_path):
    """``--time_limit_s``: a 1000-epoch run on 2 synthesised pairs per epoch stops after ~6 s with its final checkpoint;
    the same command resumes from it (here with 2 loader workers, which draw new pairs each epoch)."""
    args = [
        "run", "--config_file", composed("train.json"), "--bundle_root", str(tmp_path),
        "--spatial_dims", "2", "--spacing_mm", "4.0", "--sample_dir", str(tmp_path / "sample"),
        "--sample_pairs", json.dumps({"n_train": 0, "n_val": 1, "n_test": 0}),
        "--training_data", "@synth#dataset", "--synth#pairs_per_epoch", "2", "--train#dataloader#num_workers", "2",
        "--train#trainer#max_epochs", "1000", "--val_interval", "1000", "--time_limit_s", "6",
    ]
    def newest() -> dict:  # by time: file names hold iteration numbers, which do not sort as text ("10" < "7")
        files = list((tmp_path / "models").glob("last_*.pt"))
        assert files, list((tmp_path / "models").iterdir())
        return torch.load(max(files, key=lambda f: f.stat().st_mtime_ns), weights_only=True)["trainer"]

    run_bundle(*args, timeout=300)
    first = newest()
    assert 0 < first["iteration"] < 1000 * 2  # stopped by the limit, not by max_epochs
    run_bundle(*args, timeout=300)
    assert newest()["iteration"] > first["iteration"]  # resumed, not restarted


def test_affine_stage_training_learns_keypoints_and_keeps_the_pretrained_rest(tmp_path):
    """``configs/train_affine.json``: the keypoint head alone, on synthesised pairs with the label-overlap term,
    starting from the shipped 2D weights; validated (affine only) on template pairs never trained on."""
    pretrained = ROOT / "models" / "model_2d.pt"
    proc = run_bundle(
        "run", "--config_file", "['configs/common.json','configs/train.json','configs/train_affine.json']",
        "--bundle_root", str(tmp_path), "--pretrained", str(pretrained),
        "--spatial_dims", "2", "--sample_dir", str(tmp_path / "sample"),
        "--sample_pairs", json.dumps({"n_train": 0, "n_val": 6, "n_test": 0}),
        "--synth#pairs_per_epoch", "16", "--learning_rate", "0.002", "--train#trainer#max_epochs", "20", "--val_interval", "20",
        "--curriculum", json.dumps({"start": 1.0, "ramp_epochs": 0}),
        timeout=900,
    )
    log = proc.stderr + proc.stdout
    assert re.search(r"Iter: \d+/16 -- .*overlap: [\d.]+", log)
    rows = list(csv.reader(open(tmp_path / "runs" / "affine" / "metrics.csv")))
    values = {r[0]: float(r[1]) for r in rows if len(r) >= 2}
    assert values["val_mean_dice"] > values["val_identity_dice"] + 0.15, values  # measured 0.76 vs 0.50
    trained = torch.load(tmp_path / "runs" / "affine" / "ckpt" / "model.pt", weights_only=True)
    given = torch.load(pretrained, weights_only=True)
    assert any(k.startswith("affine_head.levels.") for k in trained)  # the keypoint head, not the regression one
    rest = [k for k in trained if not k.startswith("affine_head.")]
    assert rest and all(torch.equal(trained[k], given[k]) for k in rest)  # only the affine head was optimised
