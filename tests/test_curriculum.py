"""bundle/curriculum.py: the motion ranges grow from ``start`` to the full ones, epoch by epoch, resumably."""

from __future__ import annotations

import numpy as np
import pytest
from ignite.engine import Engine

from bundle.curriculum import MotionCurriculum, attach_motion_curriculum
from bundle.data.deform import MotionRange
from bundle.data.synth import SynthPairDataset


def _dataset() -> SynthPairDataset:
    motion = MotionRange(rotation_deg=10.0, translation_mm=8.0, scale=0.08, shear=0.04, elastic_mm=4.0)
    return SynthPairDataset(length=2, spatial_dims=2, spacing_mm=4.0, motion=motion)


def test_schedule_is_linear_from_start_to_full_and_keeps_the_control_spacing():
    data = _dataset()
    cur = MotionCurriculum(data, start=0.25, ramp_epochs=3)
    assert [cur.fraction(e) for e in (1, 2, 3, 4, 9)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    first = cur.ranges(1)
    assert (first.rotation_deg, first.translation_mm, first.elastic_mm) == pytest.approx((2.5, 2.0, 1.0))
    assert first.control_spacing_mm == data.generator.motion.control_spacing_mm
    assert cur.ranges(4) == data.generator.motion
    with pytest.raises(ValueError, match="start"):
        MotionCurriculum(data, start=0.0)


def test_each_epoch_of_a_training_run_draws_from_its_ranges_and_a_resumed_run_continues():
    data = _dataset()
    seen = []

    def step(engine, batch):
        seen.append((engine.state.epoch, data.generator.motion.rotation_deg))

    engine = Engine(step)
    attach_motion_curriculum(engine, data, start=0.5, ramp_epochs=2)
    engine.run([0], max_epochs=3)
    assert seen == [(1, 5.0), (2, 7.5), (3, 10.0)]
    # the motion actually drawn is smaller early on: the generator samples from the current ranges
    small = MotionCurriculum(data, start=0.1, ramp_epochs=5).ranges(1)
    rng = np.random.default_rng(0)
    a_small, _ = small.sample(rng, (32, 32), 4.0)
    a_full, _ = data.generator.motion.sample(np.random.default_rng(0), (32, 32), 4.0)
    assert np.abs(a_small - np.eye(3)).max() < np.abs(a_full - np.eye(3)).max()
    # resuming at epoch 2 (state restored before EPOCH_STARTED) gives epoch 2's ranges
    data2, seen = _dataset(), []
    resumed = Engine(lambda e, b: seen.append(data2.generator.motion.rotation_deg))
    attach_motion_curriculum(resumed, data2, start=0.5, ramp_epochs=2)
    resumed.state.epoch, resumed.state.iteration, resumed.state.max_epochs, resumed.state.epoch_length = 1, 1, 3, 1
    resumed.run([0], max_epochs=3)
    assert seen == [7.5, 10.0]
