"""Motion curriculum: synthesised training pairs move little at first, then over the full ranges."""

from __future__ import annotations

import dataclasses

from .data.deform import MotionRange

__all__ = ["MotionCurriculum", "attach_motion_curriculum"]


class MotionCurriculum:
    """Ignite handler scaling a synthesised dataset's :class:`MotionRange` with the epoch.

    At epoch ``e`` (1-based, as Ignite counts) every range is the full one times
    ``start + (1 - start) * min(1, (e - 1) / ramp_epochs)``: ``start`` of the full motion in
    the first epoch, the full motion from epoch ``ramp_epochs + 1`` on. The factor depends
    on the epoch only, so a resumed run continues the same schedule.

    Args:
        dataset: a :class:`bundle.data.synth.SynthPairDataset` (its ``generator.motion`` is set).
        start: fraction of the full ranges in the first epoch, in (0, 1].
        ramp_epochs: epochs over which the fraction rises linearly to 1; 0 disables the ramp.
    """

    def __init__(self, dataset, start: float = 0.3, ramp_epochs: int = 6):
        if not 0.0 < float(start) <= 1.0:
            raise ValueError(f"start must be in (0, 1], got {start}")
        self.dataset, self.start, self.ramp_epochs = dataset, float(start), int(ramp_epochs)
        self.full: MotionRange = dataset.generator.motion

    def fraction(self, epoch: int) -> float:
        """Fraction of the full ranges used in ``epoch`` (1-based)."""
        if self.ramp_epochs <= 0:
            return 1.0
        return self.start + (1.0 - self.start) * min(1.0, max(epoch - 1, 0) / self.ramp_epochs)

    def ranges(self, epoch: int) -> MotionRange:
        """The motion ranges of ``epoch``; the B-spline spacing is kept."""
        f = self.fraction(epoch)
        m = self.full
        return dataclasses.replace(
            m, rotation_deg=m.rotation_deg * f, translation_mm=m.translation_mm * f, scale=m.scale * f, shear=m.shear * f, elastic_mm=m.elastic_mm * f
        )

    def __call__(self, engine) -> None:
        self.dataset.generator.motion = self.ranges(engine.state.epoch)


def attach_motion_curriculum(trainer, dataset, start: float = 0.3, ramp_epochs: int = 6) -> MotionCurriculum:
    """Apply a :class:`MotionCurriculum` to ``dataset`` at the start of each of ``trainer``'s epochs."""
    from ignite.engine import Events

    handler = MotionCurriculum(dataset, start, ramp_epochs)
    trainer.add_event_handler(Events.EPOCH_STARTED, handler)
    return handler
