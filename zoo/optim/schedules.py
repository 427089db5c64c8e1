"""Learning-rate schedules by name (``OptimSpec.schedule``), as a ``LambdaLR`` factor.

Each schedule gives the lr at unit ``t`` (an optimiser step, or an epoch with
``interval: epoch``) for the spec's peak ``lr``; the factor ``lr(t) / spec.lr`` multiplies
every group's own initial lr (``spec.lr * lr_scale``), so layer decay and lr multipliers keep
their ratios at every step, as MAE's ``lr_sched`` does with ``lr * param_group["lr_scale"]``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from zoo.optim.spec import SCHEDULE_NAMES, OptimSpec


@dataclass(frozen=True)
class Horizon:
    """A run in schedule units: ``total`` units, the first ``warmup`` of them warm-up,
    ``milestones`` where the ``step`` schedule multiplies by ``gamma``."""

    total: int
    warmup: int
    milestones: tuple[int, ...] = ()


def horizon(spec: OptimSpec, total_steps: int, steps_per_epoch: float) -> Horizon:
    """Convert the spec's epochs to schedule units.

    ``interval: step``: ``total_steps`` optimiser steps; ``warmup_steps`` / ``milestone_steps``
    as given, else ``warmup_epochs`` / ``milestones`` × ``steps_per_epoch`` rounded.
    ``interval: epoch``: ``ceil(total_steps / steps_per_epoch)`` epochs (``max_epochs``, or
    the epochs ``max_steps`` reaches into); warm-up and milestones rounded to whole epochs.
    """
    if spec.interval == "epoch":
        total = math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else 0
        warmup = int(round(spec.warmup_epochs))
        milestones = tuple(int(round(m)) for m in spec.milestones)
    else:
        total = total_steps
        warmup = (
            spec.warmup_steps
            if spec.warmup_steps is not None
            else int(round(spec.warmup_epochs * steps_per_epoch))
        )
        milestones = (
            spec.milestone_steps
            if spec.milestone_steps is not None
            else tuple(int(round(m * steps_per_epoch)) for m in spec.milestones)
        )
    return Horizon(total, min(warmup, total), tuple(sorted(milestones)))


def linear_warmup_lr(t: int, warmup: int, base_lr: float, start_lr: float) -> float:
    """SLIP's warm-up: ``linspace(start_lr, base_lr, warmup)[t]``."""
    if warmup == 1:
        return start_lr
    return start_lr + (base_lr - start_lr) * t / (warmup - 1)


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, start_lr: float
) -> float:
    """SLIP's ``cosine_scheduler``: ``linspace(start_lr, base_lr, warmup_steps)`` then
    ``min_lr + ½(base_lr − min_lr)(1 + cos(π i / (total − warmup)))`` for i = 0 … total − warmup − 1.
    """
    if step < warmup_steps:
        return linear_warmup_lr(step, warmup_steps, base_lr, start_lr)
    decay_steps = max(total_steps - warmup_steps, 1)
    i = min(step - warmup_steps, decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * i / decay_steps))


def _warmup_cosine(t: int, h: Horizon, spec: OptimSpec) -> float:
    return warmup_cosine_lr(t, h.total, h.warmup, spec.lr, spec.min_lr, spec.warmup_start_lr)


def _constant_warmup_cosine(t: int, h: Horizon, spec: OptimSpec) -> float:
    # Dassl ConstantWarmupScheduler: cons_lr while last_epoch < warmup_epoch, then the
    # successor CosineAnnealingLR(T_max=max_epoch, eta_min=0) from its epoch 0.
    if t < h.warmup:
        return spec.warmup_lr
    i = min(t - h.warmup, h.total)
    return spec.min_lr + 0.5 * (spec.lr - spec.min_lr) * (
        1 + math.cos(math.pi * i / max(h.total, 1))
    )


def _step(t: int, h: Horizon, spec: OptimSpec) -> float:
    if t < h.warmup:
        return linear_warmup_lr(t, h.warmup, spec.lr, spec.warmup_start_lr)
    return spec.lr * spec.gamma ** bisect.bisect_right(h.milestones, t)  # as MultiStepLR


def _constant(t: int, h: Horizon, spec: OptimSpec) -> float:
    if t < h.warmup:
        return linear_warmup_lr(t, h.warmup, spec.lr, spec.warmup_start_lr)
    return spec.lr


SCHEDULES: dict[str, Callable[[int, Horizon, OptimSpec], float]] = {
    "warmup_cosine": _warmup_cosine,
    "constant_warmup_cosine": _constant_warmup_cosine,
    "step": _step,
    "constant": _constant,
}
assert tuple(SCHEDULES) == SCHEDULE_NAMES


def build_schedule(
    optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int, steps_per_epoch: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """``spec.schedule`` over the run (``total_steps`` optimiser steps, ``steps_per_epoch`` of
    them an epoch) as a ``LambdaLR``; step it per ``spec.interval``."""
    h = horizon(spec, total_steps, steps_per_epoch)
    lr_at = SCHEDULES[spec.schedule]

    def factor(t: int) -> float:
        return lr_at(t, h, spec) / spec.lr if spec.lr else 0.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
