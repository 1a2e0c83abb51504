"""``bundle/engine.py``: the training and validation iterations on a tiny 2D network and 32x32 pairs."""

from __future__ import annotations

import math
import types

import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.handlers import MeanDice, from_engine

from bundle.engine import RegistrationEvaluator, RegistrationTrainer
from bundle.losses import RegistrationLoss
from bundle.networks import RegistrationBundleNet, affine_to_ddf

SIZE = (32, 32)


def _blob(centre, sigma=4.0, size=SIZE) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    return torch.exp(-sum((a - c) ** 2 for a, c in zip(axes, centre)) / (2 * sigma**2))[None, None]


def _pairs() -> list[dict]:
    """Two batch-of-one pairs: a bright blob (moving contrast) and its shifted, inverted copy (fixed contrast)."""
    out = []
    for dx in (2.0, -3.0):
        moving = _blob((16.0 + dx, 15.0))
        fixed = 0.9 * (1.0 - _blob((16.0, 15.0)))
        out.append({"moving": moving, "fixed": fixed})
    return out


def _network(seed: int = 0) -> RegistrationBundleNet:
    torch.manual_seed(seed)
    return RegistrationBundleNet(2, encoder_channels=(4, 8, 8), affine_channels=8, integration_steps=3)


def _trainer(net, max_epochs: int, bidirectional=True, synthesis=True, lr=1e-2):
    return RegistrationTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=_pairs(), network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr), loss_function=RegistrationLoss(spatial_dims=2),
        bidirectional=bidirectional, synthesis=synthesis, decollate=False,
    )


def test_trainer_output_holds_every_weighted_term_and_their_sum():
    trainer = _trainer(_network(), max_epochs=1)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    assert trainer.state.iteration == 2 and len(outputs) == 2
    for out in outputs:
        assert set(out) == {"similarity", "synthesis", "cycle", "inverse", "smoothness", "loss"}
        assert torch.is_tensor(out["loss"]) and not out["loss"].requires_grad
        others = [v for k, v in out.items() if k != "loss"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in others)
        assert float(out["loss"]) == pytest.approx(sum(others), rel=1e-5)


def test_trainer_one_direction_without_synthesis_has_only_image_and_smoothness_terms():
    trainer = _trainer(_network(), max_epochs=1, bidirectional=False, synthesis=False)
    trainer.run()
    out = trainer.state.output
    assert set(out) == {"similarity", "smoothness", "loss"}
    assert float(out["loss"]) == pytest.approx(out["similarity"] + out["smoothness"], rel=1e-5)


def test_trainer_steps_the_optimiser_and_the_loss_decreases():
    net = _network()
    before = [p.detach().clone() for p in net.parameters()]
    trainer = _trainer(net, max_epochs=6)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 12
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    # same pair every other iteration: compare the first and last epoch pair by pair
    assert losses[-2] < losses[0] and losses[-1] < losses[1], losses
    assert net.training  # the trainer switched it to training mode


def test_trainer_reads_metatensor_batches_like_plain_tensors():
    """``LoadImaged`` gives ``MetaTensor`` images; the iteration strips the meta data and computes the same terms."""
    plain = _trainer(_network(), max_epochs=1)
    plain.run()
    meta = _trainer(_network(), max_epochs=1)
    meta.data_loader = [{k: MetaTensor(v, meta={"filename_or_obj": f"{k}.nii.gz"}) for k, v in b.items()} for b in _pairs()]
    meta.run()
    assert set(meta.state.output) == set(plain.state.output)
    for k, v in plain.state.output.items():
        assert float(meta.state.output[k]) == pytest.approx(float(v), rel=1e-6, abs=1e-7), k


def test_trainer_refuses_a_missing_batch():
    trainer = _trainer(_network(), max_epochs=1)
    with pytest.raises(ValueError, match="Must provide batch data"):
        trainer._iteration(trainer, None)


# -- evaluator ----------------------------------------------------------------------------------
def _labels(shift: int = 0) -> torch.Tensor:
    """``(1, 1, 32, 32)`` label map of three rectangles (labels 1, 2, 3), moved ``shift`` voxels along axis 0."""
    lab = torch.zeros(1, 1, *SIZE, dtype=torch.float32)
    lab[0, 0, 8:16, 8:20] = 1
    lab[0, 0, 16:24, 8:20] = 2
    lab[0, 0, 10:22, 22:28] = 3
    return torch.roll(lab, shift, dims=2)


def _dice_of_shift(shift: int) -> list[float]:
    """Analytic Dice of each rectangle with itself moved ``shift`` voxels along axis 0 (all widths > shift)."""
    heights = {1: 8, 2: 8, 3: 12}  # extent along axis 0
    return [(2 * (h - abs(shift))) / (2 * h) for h in heights.values()]


class _ConstantShift(torch.nn.Module):
    """A "network" whose forward displacement is a constant ``shift`` voxels along axis 0."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def register(self, moving, fixed, bidirectional=True, synthesis=True):
        theta = torch.tensor([[[1.0, 0.0, self.shift], [0.0, 1.0, 0.0]]]).expand(moving.shape[0], -1, -1)
        return types.SimpleNamespace(forward=types.SimpleNamespace(ddf=affine_to_ddf(theta, moving.shape[2:])))


def _evaluate(net, shift: int, labels=(1, 2, 3)):
    pair = _pairs()[0]
    batch = {**pair, "moving_label": _labels(shift), "fixed_label": _labels(0)}
    evaluator = RegistrationEvaluator(
        device=torch.device("cpu"), val_data_loader=[batch], network=net, decollate=False, labels=labels,
        key_val_metric={"dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        additional_metrics={"identity_dice": MeanDice(include_background=False, output_transform=from_engine(["identity", "label"]))},
    )
    evaluator.run()
    return evaluator


def test_evaluator_with_an_identity_network_scores_the_dice_of_the_shift():
    net = _network()
    torch.nn.init.zeros_(net.deformable_head.output.conv.weight)  # affine head is the identity at initialisation: ddf == 0
    evaluator = _evaluate(net, shift=2)
    out = evaluator.state.output
    assert set(out) == {"pred", "label", "identity", "ddf"}
    for k in ("pred", "label", "identity"):
        assert out[k].shape == (1, 4, *SIZE)
        assert torch.equal(out[k].sum(1), torch.ones(1, *SIZE))  # one-hot
    assert out["ddf"].shape == (1, 2, *SIZE) and float(out["ddf"].abs().max()) == 0.0
    assert torch.equal(out["pred"], out["identity"])
    assert torch.equal(out["label"][0, 1:].argmax(0)[8:16, 8:20], torch.zeros(8, 12, dtype=torch.long))  # channel 1 = label 1
    expected = sum(_dice_of_shift(2)) / 3
    assert evaluator.state.metrics["dice"] == pytest.approx(expected, abs=1e-6)
    assert evaluator.state.metrics["identity_dice"] == pytest.approx(expected, abs=1e-6)
    assert not net.training


def test_evaluator_warps_the_moving_labels_through_the_ddf():
    """``pred(x) = moving_label(x + ddf(x))``: a moving label shifted by +2 is undone by a ddf of +2."""
    evaluator = _evaluate(_ConstantShift(2.0), shift=2)
    assert evaluator.state.metrics["dice"] == pytest.approx(1.0)
    assert evaluator.state.metrics["identity_dice"] == pytest.approx(sum(_dice_of_shift(2)) / 3, abs=1e-6)
    wrong = _evaluate(_ConstantShift(-2.0), shift=2)
    assert wrong.state.metrics["dice"] == pytest.approx(sum(_dice_of_shift(4)) / 3, abs=1e-6)


def test_evaluator_scores_only_the_listed_labels():
    evaluator = _evaluate(_ConstantShift(0.0), shift=2, labels=(3,))
    out = evaluator.state.output
    assert out["pred"].shape == (1, 2, *SIZE)
    assert evaluator.state.metrics["dice"] == pytest.approx(_dice_of_shift(2)[2], abs=1e-6)



def test_wall_time_limit_terminates_and_completes():
    from ignite.engine import Engine

    from bundle.engine import attach_time_limit

    engine = Engine(lambda e, b: None)
    completed = []
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    assert attach_time_limit(engine, None) is None and attach_time_limit(engine, 0) is None
    attach_time_limit(engine, 1e-9)  # already over: stops after the first iteration
    engine.run(range(10), max_epochs=100)
    assert engine.state.iteration == 1 and completed == [1]  # COMPLETED fires: save_final checkpoints run


def _rank(rank: int, port: int, queue) -> None:
    import os

    from ignite.engine import Engine

    from bundle.engine import WallTimeLimit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)

    def step(engine, batch):  # every iteration synchronises, as a gradient all-reduce does
        t = torch.ones(1)
        torch.distributed.all_reduce(t)

    engine = Engine(step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, WallTimeLimit(0.0 if rank == 0 else 1e9))  # only rank 0's time is up
    engine.run(range(5), max_epochs=20)
    queue.put((rank, engine.state.iteration))
    torch.distributed.destroy_process_group()


def test_wall_time_limit_stops_every_rank_at_the_same_iteration():
    """Rank 0's clock runs out, rank 1's never does: both stop after iteration 1 instead of rank 1 hanging."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert sorted(queue.get(timeout=5) for _ in range(2)) == [(0, 1), (1, 1)]


def test_trainer_passes_the_known_motion_to_the_displacement_term():
    """With ``gt_key`` the trainer reads the pair's ``gt_ddf`` and the loss reports the end-point error against it."""
    net = _network()
    pairs = [dict(p, gt_ddf=torch.full((1, 2, *SIZE), 1.0)) for p in _pairs()]
    trainer = RegistrationTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=pairs, network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), loss_function=RegistrationLoss(2, weights={"displacement": 1.0}),
        bidirectional=False, synthesis=False, gt_key="gt_ddf", decollate=False,
    )
    trainer.run()
    assert "displacement" in trainer.state.output and trainer.state.output["displacement"] > 0.5  # sqrt(2)-ish: near-identity field
    trainer = _trainer(_network(), max_epochs=1)
    trainer.loss_function = RegistrationLoss(2, weights={"displacement": 1.0})
    with pytest.raises(ValueError, match="gt_ddf"):
        trainer.run()
