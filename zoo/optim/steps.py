"""The number of optimiser steps a Lightning epoch takes (:func:`optimizer_steps_per_epoch`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L


def optimizer_steps_per_epoch(trainer: L.Trainer) -> int | float:
    """Optimiser steps Lightning takes in one training epoch on this rank.

    Lightning 2.6 (``_TrainingEpochLoop._should_accumulate``) steps the optimiser after every
    ``accumulate_grad_batches``-th batch of the epoch and, unless the strategy accumulates
    by itself (DeepSpeed), also after the epoch's last batch when it closes a partial window.
    So with ``n`` training batches (``trainer.num_training_batches``: this rank's loader
    length after ``limit_train_batches``) and accumulation ``a`` an epoch has
    ``ceil(n / a)`` steps, or ``floor(n / a)`` when the strategy handles accumulation.

    Builds the training loader if Lightning has not yet (with ``max_steps`` alone,
    ``trainer.estimated_stepping_batches`` does not); it is the loader Lightning then trains
    with. Returns ``inf`` for a loader without a length, 0 when nothing trains.
    """
    if trainer.limit_train_batches == 0:
        return 0
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        return float("inf")
    batches, accumulate = int(batches), int(trainer.accumulate_grad_batches)
    full, partial = divmod(batches, accumulate)
    steps_on_partial = partial > 0 and not trainer.strategy.handles_gradient_accumulation
    return full + int(steps_on_partial)
