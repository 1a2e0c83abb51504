"""Robustness: valid oddities of the input files, resumable training, reproducible results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT, composed, config_files

MODEL = ROOT / "models" / "model.pt"
SHIFT_MM = np.array([6.0, 0.0, 0.0])  # RAS mm, in-plane (the shipped model does not recover z shifts, docs/README.md)
VOXEL_MM = 2.0


# -- a known physical shift, stored in another orientation ------------------------------------
def _rot_z(degrees: float) -> np.ndarray:
    r = np.deg2rad(degrees)
    return np.array([[np.cos(r), -np.sin(r), 0.0], [np.sin(r), np.cos(r), 0.0], [0.0, 0.0, 1.0]])


def _covering_grid(affine, shape, spacing, degrees: float, margin: float = 1.15):
    """A grid rotated about z with anisotropic ``spacing`` covering an image's field of view."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:]
    centre, extent = world.mean(1), (world.max(1) - world.min(1)) * margin
    n = np.ceil(extent / np.asarray(spacing)).astype(int) + 1
    out = np.eye(4)
    out[:3, :3] = _rot_z(degrees) @ np.diag(spacing)
    out[:3, 3] = centre - out[:3, :3] @ ((n - 1) / 2.0)
    return out, tuple(int(v) for v in n)


def _lps_voxel_order(array: np.ndarray, affine: np.ndarray):
    """Reverse the first two voxel axes and compensate in the affine: same physical image."""
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1.0
    flip[:2, 3] = np.array(array.shape[:2]) - 1
    return array[::-1, ::-1].copy(), affine @ flip


def _render_shifted(image, affine, shift_mm, grid_affine, grid_shape) -> np.ndarray:
    """``image`` translated physically by ``shift_mm``, sampled on another grid: ``out(p) = image(p - shift)``."""
    from bundle.resample import grid_world_points, sample_at_world

    pts = grid_world_points(grid_affine, grid_shape, dtype=torch.float64)
    pts = pts - torch.as_tensor(shift_mm, dtype=torch.float64).reshape(3, 1, 1, 1)
    return sample_at_world(torch.from_numpy(np.asarray(image, dtype=np.float64))[None], affine, pts)[0].numpy()


def _moving_variants(t2, affine, shift_mm) -> dict:
    """The shifted T2 as a plain RAS float copy and as an LPS-ordered, oblique, anisotropic int16 file."""
    to_ras = np.eye(4)
    to_ras[0, 0], to_ras[0, 3] = -1.0, t2.shape[0] - 1
    ras_affine = affine @ to_ras if affine[0, 0] < 0 else affine
    ras = _render_shifted(t2, affine, shift_mm, ras_affine, t2.shape).astype(np.float32)
    grid_affine, grid_shape = _covering_grid(affine, t2.shape, (1.5, 2.5, 3.0), 10.0)
    odd = _render_shifted(t2, affine, shift_mm, grid_affine, grid_shape)
    odd = np.round(odd / odd.max() * 3000).astype(np.int16)
    return {"ras": (ras, ras_affine), "lps_oblique_int16": _lps_voxel_order(odd, grid_affine)}


def _ddf_ras_mm(path, shape) -> np.ndarray:
    """``ddf_mm.nii.gz`` (ITK vector image, LPS mm components) as RAS mm, ``(*shape, 3)``."""
    ddf = np.asarray(nib.load(path).dataobj, dtype=np.float64).reshape(*shape, 3)
    ddf[..., :2] *= -1.0  # LPS -> RAS
    return ddf


@pytest.fixture(scope="module")
def shifted_results(tmp_path_factory):
    """Register each moving variant to the T1 template with the shipped model; recovered mean shifts."""
    from test_bundle import network_from_config

    from bundle.data.templates import load_spm_templates
    from bundle.inference import PairRegistrar

    t = load_spm_templates()
    root = tmp_path_factory.mktemp("shift")
    fixed = root / "fixed.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(t.t1), t.affine), fixed)
    brain = t.brain_mask
    registrar = PairRegistrar(network_from_config(3), MODEL)
    results = {}
    for name, (array, affine) in _moving_variants(np.asarray(t.t2), t.affine, SHIFT_MM).items():
        moving = root / f"moving_{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), moving)
        registrar.run(fixed=fixed, moving=moving, output_dir=root / name)
        mean = _ddf_ras_mm(root / name / "ddf_mm.nii.gz", brain.shape)[brain].mean(0)
        results[name] = {"mean_mm": mean, "out": root / name}
    return {"fixed_affine": t.affine, "shape": brain.shape, "results": results}


def test_variant_files_are_what_they_claim(tmp_path):
    """The odd copy really is LPS-ordered, oblique, anisotropic and integer."""
    from bundle.data.templates import load_spm_templates

    t = load_spm_templates()
    array, affine = _moving_variants(np.asarray(t.t2), t.affine, SHIFT_MM)["lps_oblique_int16"]
    assert array.dtype == np.int16
    assert nib.aff2axcodes(affine)[:2] == ("L", "P")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [1.5, 2.5, 3.0])
    cosines = affine[:3, :3] / spacing
    assert abs(np.degrees(np.arccos(abs(cosines[0, 0]))) - 10.0) < 1e-6


@pytest.mark.parametrize("name", ["ras", "lps_oblique_int16"])
def test_in_plane_shift_recovered_in_any_orientation(shifted_results, name):
    """x and y of the mean displacement in the brain within 1 voxel of the truth (measured: x +0.1/+0.2, y +1.5/+1.6 mm)."""
    res = shifted_results["results"][name]
    error = res["mean_mm"] - SHIFT_MM
    assert np.all(np.abs(error[:2]) < VOXEL_MM), (name, res["mean_mm"])


@pytest.mark.parametrize("name", ["ras", "lps_oblique_int16"])
def test_shift_vector_recovered_within_one_voxel(shifted_results, name):
    """The whole 3D shift vector within 1 voxel, whatever the storage (failed before the synthesis-trained model)."""
    mean = shifted_results["results"][name]["mean_mm"]
    assert np.linalg.norm(mean - SHIFT_MM) < VOXEL_MM, mean


def test_orientations_agree(shifted_results):
    """Same physical input, different storage: same answer (measured: within 0.15 mm)."""
    res = shifted_results["results"]
    diff = res["ras"]["mean_mm"] - res["lps_oblique_int16"]["mean_mm"]
    assert np.all(np.abs(diff) < 0.25 * VOXEL_MM), diff


@pytest.mark.parametrize("name", ["ras", "lps_oblique_int16"])
def test_outputs_carry_the_fixed_grid(shifted_results, name):
    out = shifted_results["results"][name]["out"]
    for fname in ("warped_moving.nii.gz", "ddf_mm.nii.gz", "jacobian.nii.gz"):
        img = nib.load(out / fname)
        assert img.shape[:3] == shifted_results["shape"], fname
        np.testing.assert_allclose(img.affine, shifted_results["fixed_affine"], atol=1e-5, err_msg=fname)


# -- training killed mid-run resumes -----------------------------------------------------------
ITERS_PER_EPOCH = 8  # sample_2d: 8 training pairs, batch size 1


def _train_command(datalist, root, epochs: int, *extra: str) -> list[str]:
    """The user's 2D training command (``configs/train.json``), validation off to keep it short."""

    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", composed("train.json"), "--spatial_dims", "2",
        "--datalist_file", str(datalist), "--ckpt_dir", str(root / "ckpt"), "--output_dir", str(root / "out"),
        "--train#trainer#max_epochs", str(epochs), "--val_interval", "1000", *extra,
    ]


def _start(command, log):

    """Start ``command`` from the bundle root, stdout and stderr to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as fh:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _epoch_checkpoints(ckpt_dir) -> dict[int, object]:

    found = {}
    for p in ckpt_dir.glob("last_checkpoint_epoch=*.pt"):
        found[int(re.search(r"epoch=(\d+)", p.name).group(1))] = p
    return found


def _kill_after_checkpoint(proc, ckpt_dir, min_epoch: int = 1, timeout: float = 120.0) -> None:
    """Wait for an epoch checkpoint >= ``min_epoch``, then SIGTERM (SIGKILL after 5 s)."""

    deadline = time.monotonic() + timeout
    try:
        while not any(e >= min_epoch for e in _epoch_checkpoints(ckpt_dir)):
            assert proc.poll() is None, f"training ended (code {proc.returncode}) before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _logged_iterations(log) -> list[tuple[int, int]]:
    """``(epoch, iteration in epoch)`` of every iteration the StatsHandler logged."""

    return [(int(e), int(i)) for e, i in re.findall(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ --", log.read_text())]


def test_killed_training_resumes_where_it_stopped(sample_2d, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    proc = _start(_train_command(sample_2d, tmp_path, 4), first)
    _kill_after_checkpoint(proc, tmp_path / "ckpt")
    assert proc.returncode != 0, "the first run was meant to be killed"
    resumed = max(_epoch_checkpoints(tmp_path / "ckpt"))
    done = _logged_iterations(first)
    lost = (done[-1][0] - 1) * ITERS_PER_EPOCH + done[-1][1] - resumed * ITERS_PER_EPOCH
    assert 0 <= lost <= ITERS_PER_EPOCH, (done[-1], resumed)  # at most one checkpoint interval

    proc = _start(_train_command(sample_2d, tmp_path, 5), second)
    assert proc.wait(timeout=300) == 0, second.read_text()[-3000:]
    assert f"last_checkpoint_epoch={resumed}.pt" in second.read_text()  # "Restored all variables from ..."
    again = _logged_iterations(second)
    assert again[0] == (resumed + 1, 1) and len(again) == (5 - resumed) * ITERS_PER_EPOCH, (again[:2], len(again))

    state = torch.load(tmp_path / "ckpt" / f"last_checkpoint_final_iteration={5 * ITERS_PER_EPOCH}.pt", weights_only=True)
    trainer = state["trainer"]
    assert trainer["max_epochs"] == 5 and trainer["iteration"] == 5 * ITERS_PER_EPOCH
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {5.0 * ITERS_PER_EPOCH}, steps  # Adam's moments were restored, not restarted


def test_checkpoint_write_killed_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    """A failure while writing the next checkpoint: the previous file is intact, no torn file."""
    from bundle.checkpoints import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(3)}, "last_checkpoint_epoch=1.pt")
    saver.remove("last_checkpoint_epoch=1.pt")  # what Ignite does before writing epoch 2

    def torn_save(obj, path):
        open(path, "wb").write(b"PK\x03")
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        saver({"w": torch.zeros(3)}, "last_checkpoint_epoch=2.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint_epoch=1.pt"]
    assert torch.equal(torch.load(tmp_path / "last_checkpoint_epoch=1.pt", weights_only=True)["w"], torch.ones(3))
    saver({"w": torch.zeros(3)}, "last_checkpoint_epoch=2.pt")  # the superseded file goes once the new one is in place
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint_epoch=2.pt"]


def test_fixed_name_checkpoint_is_replaced_not_removed(tmp_path):
    from bundle.checkpoints import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.ones(1)}, "ignored_name.pt")
    saver.remove("ignored_name.pt")
    saver({"w": torch.zeros(1)}, "other_name.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["w"]) == 0.0


def test_train_config_makes_every_checkpoint_saver_atomic(sample_2d, tmp_path):
    """The objects ``configs/train.json`` trains with (after ``initialize``) write atomically."""
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointSaver

    from bundle.checkpoints import AtomicDiskSaver

    parser = ConfigParser()
    parser.read_config(config_files("train.json"))
    parser.update({"spatial_dims": 2, "datalist_file": str(sample_2d), "ckpt_dir": str(tmp_path / "ckpt"), "output_dir": str(tmp_path / "out")})
    parser.get_parsed_content("initialize")
    savers = [parser.get_parsed_content("train#checkpoint_saver")]
    savers += [h for h in parser.get_parsed_content("validate#handlers") if isinstance(h, CheckpointSaver)]
    handlers = [getattr(s, a) for s in savers for a in ("_interval_checkpoint", "_final_checkpoint", "_key_metric_checkpoint")]
    handlers = [h.save_handler for h in handlers if h is not None]
    assert len(savers) == 2 and len(handlers) == 3
    assert all(isinstance(h, AtomicDiskSaver) for h in handlers), handlers
    assert handlers[-1].filename == "model.pt"


def test_resume_skips_a_torn_checkpoint(tmp_path):
    from ignite.engine import Engine

    from bundle.engine import attach_resume

    net = torch.nn.Linear(2, 2)
    good = tmp_path / "last_checkpoint_epoch=1.pt"
    torch.save({"model": net.state_dict()}, good)
    torn = tmp_path / "last_checkpoint_epoch=2.pt"
    torn.write_bytes(good.read_bytes()[:100])
    os.utime(good, (1, 1))  # older than the torn one
    assert attach_resume(Engine(lambda e, b: None), str(tmp_path), {"model": net}) == str(good)


# -- reproducible results ----------------------------------------------------------------------
def _final_weights(root, epochs: int) -> dict:
    path = root / "ckpt" / f"last_checkpoint_final_iteration={epochs * ITERS_PER_EPOCH}.pt"
    return torch.load(path, weights_only=True)["model"]


def test_training_is_reproducible(sample_2d, tmp_path):
    """Same seed and data, augmentation on (seeded by ``determinism``): bitwise the same weights."""
    procs = [_start(_train_command(sample_2d, tmp_path / n, 2, "--seed", "7"), tmp_path / f"{n}.log") for n in ("a", "b")]
    for name, proc in zip(("a", "b"), procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    a, b = _final_weights(tmp_path / "a", 2), _final_weights(tmp_path / "b", 2)
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff == 0.0, diff
    assert _augmentation_is_random()


def _augmentation_is_random() -> bool:
    """``train.json`` augments by default (so the seed matters): a random affine with prob > 0."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("train.json"))
    return any(t["_target_"] == "RandAffined" and t["prob"] > 0 for t in parser.get("train#augmentation"))


def test_inference_is_reproducible(sample_3d, tmp_path):
    """Two runs of ``configs/inference.json`` (separate processes) write identical arrays."""

    item = json.loads(sample_3d.read_text())["test"][0]
    pair = ["--fixed", str(sample_3d.parent / item["fixed"]), "--moving", str(sample_3d.parent / item["moving"])]
    procs = []
    for name in ("a", "b"):
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", composed("inference.json"), *pair, "--output_dir", str(tmp_path / name)]
        procs.append(_start(command, tmp_path / f"{name}.log"))
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    for fname in ("ddf_mm.nii.gz", "warped_moving.nii.gz", "jacobian.nii.gz"):
        a, b = (nib.load(tmp_path / n / fname) for n in ("a", "b"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), fname
        assert np.array_equal(a.affine, b.affine), fname
