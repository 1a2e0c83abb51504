"""``bundle/checkpoints.py``: the layouts ``load_network_weights`` reads, its errors, and ``make_atomic``."""

from __future__ import annotations

import pytest
import torch

from bundle.checkpoints import AtomicDiskSaver, load_network_weights, make_atomic
from bundle.networks import RegistrationBundleNet


def _net(seed: int, channels=(4, 8, 8)) -> RegistrationBundleNet:
    torch.manual_seed(seed)
    net = RegistrationBundleNet(2, encoder_channels=channels, affine_channels=8, integration_steps=3)
    for p in net.parameters():  # the heads start at the identity: perturb so every tensor differs between seeds
        p.data += 0.01 * torch.randn_like(p)
    return net


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "layout",
    [
        lambda net, opt: net.state_dict(),  # a raw state dict (what Ignite writes for one object: models/model.pt)
        lambda net, opt: {"model": net.state_dict()},
        lambda net, opt: {"model": net.state_dict(), "optimizer": opt.state_dict(), "trainer": {"epoch": 3, "iteration": 6}},
    ],
    ids=["state_dict", "model_key", "training_checkpoint"],
)
def test_every_saved_layout_loads_the_same_weights(tmp_path, layout):
    trained = _net(1)
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    path = tmp_path / "ckpt.pt"
    torch.save(layout(trained, opt), path)
    fresh = _net(2)
    assert all(not torch.equal(a, b) for a, b in zip(fresh.parameters(), trained.parameters()))
    out = load_network_weights(fresh, path)
    assert out is fresh
    _assert_same_weights(fresh, trained)


def test_checkpoints_written_by_monai_savers_made_atomic_load_back(tmp_path):
    """What ``configs/train.json`` writes: ``last_*.pt`` (model, optimiser, trainer) and a model-only file."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver

    net = _net(3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    engine = Engine(lambda e, b: None)
    full = CheckpointSaver(str(tmp_path / "full"), {"model": net, "optimizer": opt, "trainer": engine}, file_prefix="last", save_interval=1, n_saved=1)
    model_only = CheckpointSaver(str(tmp_path / "model"), {"model": net}, save_interval=1, n_saved=1)
    make_atomic([full, [model_only]], "not a saver")
    assert isinstance(full._interval_checkpoint.save_handler, AtomicDiskSaver)
    assert isinstance(model_only._interval_checkpoint.save_handler, AtomicDiskSaver)
    full.attach(engine)
    model_only.attach(engine)
    engine.run([0, 1], max_epochs=2)
    files = sorted((tmp_path / "full").iterdir()) + sorted((tmp_path / "model").iterdir())
    assert [p.name for p in files] == ["last_checkpoint_epoch=2.pt", "model_epoch=2.pt"]  # the epoch-1 files were superseded
    assert set(torch.load(files[0], weights_only=True)) == {"model", "optimizer", "trainer"}
    for path in files:
        fresh = _net(4)
        load_network_weights(fresh, path)
        _assert_same_weights(fresh, net)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        load_network_weights(_net(0), tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_network_weights(_net(0), tmp_path)  # a folder is not a checkpoint


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.pt: not a weights-only checkpoint \(refusing to run arbitrary code\): ") as exc:
        load_network_weights(_net(0), path)
    assert "\n" not in str(exc.value)


def test_mismatched_shapes_and_keys_are_refused_with_the_file_named(tmp_path):
    bigger = tmp_path / "bigger.pt"
    torch.save(_net(0, channels=(4, 8, 16)).state_dict(), bigger)
    with pytest.raises(ValueError, match=r"bigger.pt: checkpoint does not fit this network architecture \(.*size mismatch") as exc:
        load_network_weights(_net(0), bigger)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 500

    partial = tmp_path / "partial.pt"
    state = _net(0).state_dict()
    state.pop(next(iter(state)))
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"partial.pt: checkpoint does not fit this network architecture \(.*Missing key"):
        load_network_weights(_net(0), partial)

    other_key = tmp_path / "network_key.pt"
    torch.save({"network": _net(0).state_dict()}, other_key)  # only a "model" entry is unwrapped
    with pytest.raises(ValueError, match="network_key.pt: checkpoint does not fit this network architecture"):
        load_network_weights(_net(0), other_key)



def test_a_refused_checkpoint_leaves_the_network_unchanged(tmp_path):
    """load_state_dict copies every tensor that fits before it raises; the loader undoes that."""
    partial = tmp_path / "partial.pt"
    state = _net(1).state_dict()
    state.pop(next(iter(state)))  # one key missing: every other tensor fits
    torch.save(state, partial)
    net = _net(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="partial.pt: checkpoint does not fit"):
        load_network_weights(net, partial)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(state[k], after[k]) for k in state)  # the other seed's weights really differ


def test_excluded_prefixes_keep_the_networks_own_weights(tmp_path):
    """A keypoint affine head starts from a checkpoint trained with the regression head."""
    path = tmp_path / "regression.pt"
    donor = _net(1)
    torch.save(donor.state_dict(), path)
    torch.manual_seed(2)
    net = RegistrationBundleNet(2, encoder_channels=(4, 8, 8), affine_channels=8, integration_steps=3, affine="keypoints", num_keypoints=4)
    own = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("affine_head.")}
    with pytest.raises(ValueError, match="regression.pt: checkpoint does not fit"):
        load_network_weights(net, path)
    load_network_weights(net, path, exclude=["affine_head."])
    state, given = net.state_dict(), donor.state_dict()
    assert all(torch.equal(state[k], v) for k, v in own.items())
    rest = [k for k in state if not k.startswith("affine_head.")]
    assert rest and all(torch.equal(state[k], given[k]) for k in rest)
