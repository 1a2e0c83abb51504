"""Ignite iterations for the two-stage, two-direction registration model.

MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` expect one image and one label; a
registration batch holds a moving and a fixed image (and their labels), and the loss
needs the whole structured network output. These subclasses replace only the iteration,
so every MONAI/Ignite handler (stats, TensorBoard, checkpoints, validation) works as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents

from .metrics import one_hot_labels
from .networks.bundle_net import structured_forward
from .resample import warp_labels

__all__ = ["RegistrationTrainer", "RegistrationEvaluator"]


def _pair(batch: dict, device, non_blocking: bool, keys: Sequence[str]) -> list[torch.Tensor]:
    return [batch[k].to(device=device, non_blocking=non_blocking).as_tensor() if hasattr(batch[k], "as_tensor") else batch[k].to(device) for k in keys]


class RegistrationTrainer(SupervisedTrainer):
    """Unsupervised trainer: ``network.register(moving, fixed)`` and a composite loss.

    ``network`` may also be ``DistributedDataParallel(StructuredRegistration(net))`` for
    multi-GPU training (see :func:`structured_forward` and ``configs/multi_gpu_train.json``).

    ``loss_function(output, moving, fixed)`` must return a dict with the total under
    ``"loss"`` (see :class:`bundle.losses.RegistrationLoss`); every term is put in
    ``engine.state.output`` for logging.

    Args:
        moving_key, fixed_key: batch keys of the two images.
        bidirectional: train both directions (inverse consistency needs it).
        synthesis: run the synthesis decoders and cycle.
        deformable: run the deformable stage (``False``: train the keypoint affine stage alone).
        label_keys: batch keys of the moving and fixed label maps, passed to the loss (its
            ``overlap`` term); ``None``: the loss sees the images only.
        gt_key: batch key of the pair's known motion, passed to the loss (its ``displacement``
            term, synthetic supervision); ``None``: not read.
        All other arguments as in ``monai.engines.SupervisedTrainer``.
    """

    def __init__(
        self, *args, moving_key: str = "moving", fixed_key: str = "fixed", bidirectional: bool = True, synthesis: bool = True,
        deformable: bool = True, label_keys: Sequence[str] | None = None, gt_key: str | None = None, **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.moving_key, self.fixed_key = moving_key, fixed_key
        self.bidirectional, self.synthesis, self.deformable = bidirectional, synthesis, deformable
        self.label_keys = tuple(label_keys) if label_keys else ()
        self.gt_key = gt_key

    def _iteration(self, engine, batchdata):
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        moving, fixed = _pair(batchdata, engine.state.device, engine.non_blocking, (self.moving_key, self.fixed_key))
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        labels = _pair(batchdata, engine.state.device, engine.non_blocking, self.label_keys) if self.label_keys else []
        output = structured_forward(engine.network, moving, fixed, bidirectional=self.bidirectional, synthesis=self.synthesis, deformable=self.deformable)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        extra = {"gt_ddf": _pair(batchdata, engine.state.device, engine.non_blocking, (self.gt_key,))[0]} if self.gt_key else {}
        terms = engine.loss_function(output, moving, fixed, *labels, **extra)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        terms["loss"].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {k: v.detach() if k == "loss" else v.item() for k, v in terms.items()}
        return engine.state.output


class RegistrationEvaluator(SupervisedEvaluator):
    """Validation: register each pair, warp the moving labels, emit one-hot ``pred``/``label``.

    The output dict holds ``pred`` (warped moving labels, one-hot), ``label`` (fixed labels,
    one-hot), ``identity`` (unwarped moving labels, one-hot) and ``ddf``, so MONAI's
    ``MeanDice`` handler scores the registration directly.

    Args:
        labels: label values scored (background excluded).
        deformable: score the full registration (``False``: the keypoint affine stage alone).
        Keys and other arguments as in :class:`RegistrationTrainer` / ``SupervisedEvaluator``.
    """

    def __init__(
        self,
        *args,
        moving_key: str = "moving",
        fixed_key: str = "fixed",
        moving_label_key: str = "moving_label",
        fixed_label_key: str = "fixed_label",
        labels: Sequence[int] = (1, 2, 3),
        deformable: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.keys = (moving_key, fixed_key, moving_label_key, fixed_label_key)
        self.labels = tuple(labels)
        self.deformable = deformable

    def _iteration(self, engine, batchdata):
        moving, fixed, moving_label, fixed_label = _pair(batchdata, engine.state.device, engine.non_blocking, self.keys)
        engine.network.eval()
        with torch.no_grad():
            result = structured_forward(engine.network, moving, fixed, bidirectional=False, synthesis=False, deformable=self.deformable).forward
            warped_label = warp_labels(moving_label, result.ddf, labels=(0, *self.labels))
        engine.state.output = {
            "pred": one_hot_labels(warped_label, self.labels),
            "label": one_hot_labels(fixed_label, self.labels),
            "identity": one_hot_labels(moving_label, self.labels),
            "ddf": result.ddf,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def attach_resume(trainer, ckpt_dir: str, load_dict: dict, pattern: str = "last_*.pt", map_location=None) -> str | None:
    """Resume ``trainer`` from the newest readable checkpoint matching ``ckpt_dir/pattern``, if any.

    Restores every object of ``load_dict`` (model, optimiser, trainer state: epoch and
    iteration counters) with MONAI's ``CheckpointLoader``, which loads with
    ``weights_only=True``. A checkpoint that cannot be read (torn by a kill during its
    write) is skipped with a warning in favour of the next newest. Returns the checkpoint
    path or ``None`` when starting fresh.
    """
    import glob
    import os

    from monai.handlers import CheckpointLoader

    for path in sorted(glob.glob(os.path.join(ckpt_dir, pattern)), key=os.path.getmtime, reverse=True):
        if _readable_checkpoint(path):
            CheckpointLoader(load_path=path, load_dict=load_dict, map_location=map_location).attach(trainer)
            return path
        logging.getLogger(__name__).warning(f"{path}: unreadable checkpoint (torn write?), resuming from an older one if any")
    return None


class WallTimeLimit:
    """Ignite handler: terminate the engine once ``seconds`` of wall time have passed since its creation.

    Like Ignite's ``TimeLimit``, but in a distributed run every rank stops at the same
    iteration: the ranks all-reduce their "time is up" flags (maximum) each iteration, so no
    rank leaves while the others wait in the next gradient all-reduce.
    """

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()

    def __call__(self, engine) -> None:
        stop = time.monotonic() - self.start >= self.seconds
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            flag = torch.tensor([float(stop)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            logging.getLogger(__name__).info(f"time limit of {self.seconds:g} s reached: stopping after iteration {engine.state.iteration}")
            engine.terminate()


def attach_time_limit(trainer, seconds: float | None) -> WallTimeLimit | None:
    """Stop ``trainer`` after ``seconds`` of wall time (:class:`WallTimeLimit`); ``None`` or 0: no limit.

    The run ends as if its epochs were done: ``Events.COMPLETED`` fires, so the checkpoint
    saver's ``save_final`` writes the final state, and the next run resumes from it.
    """
    if not seconds or float(seconds) <= 0:
        return None
    from ignite.engine import Events

    handler = WallTimeLimit(seconds)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return handler


def _readable_checkpoint(path: str) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means it cannot be resumed from
        return False
    return True
