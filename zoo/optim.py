"""Optimiser recipes: AdamW parameter groups, the per-step warm-up + cosine schedule, and the
number of optimiser steps a Lightning epoch takes (:func:`optimizer_steps_per_epoch`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import lightning as L


@dataclass
class OptimSpec:
    """AdamW with SLIP's schedule (``main.py`` / ``utils.cosine_scheduler``).

    ``lr`` is the peak learning rate for the whole (global) batch. The schedule warms up
    linearly from ``warmup_start_lr`` over ``warmup_epochs`` (or ``warmup_steps`` when set),
    then follows a half cosine down to ``min_lr``; it is updated every optimiser step. An
    epoch is the number of optimiser steps Lightning takes per epoch on one rank
    (:func:`optimizer_steps_per_epoch`: gradient accumulation and ``limit_train_batches``
    counted), and the cosine ends at the run's last step (``max_epochs`` and/or ``max_steps``).
    Parameters with ``ndim < 2`` or whose name contains one of ``no_decay_keywords`` get no
    weight decay (SLIP: ``p.ndim < 2 or 'bias' in n or 'ln' in n or 'bn' in n``).
    """

    lr: float = 5e-4
    weight_decay: float = 0.5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    warmup_start_lr: float = 1e-6
    min_lr: float = 1e-5
    no_decay_keywords: list[str] = field(default_factory=lambda: ["bias", "ln", "bn"])
    fused: bool | None = None


def is_no_decay(
    name: str, param: torch.Tensor, keywords: Iterable[str], ndim: int | None = None
) -> bool:
    """SLIP's rule: no weight decay for 1-D parameters (biases, norm gains, the logit scale)
    and names containing a keyword. ``ndim`` overrides ``param.ndim`` (see :func:`param_groups`)."""
    return (param.ndim if ndim is None else ndim) < 2 or any(k in name for k in keywords)


def param_groups(
    model: nn.Module, spec: OptimSpec, ndims: Mapping[nn.Parameter, int] | None = None
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group (frozen ones skipped).

    ``ndims`` gives parameters' true dimensionality where ``param.ndim`` no longer shows it:
    under FSDP (``use_orig_params=True``) each parameter is a flat 1-D view of its shard when
    the optimiser is built, so every weight matrix would otherwise lose its weight decay.
    """
    ndims = ndims or {}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no = is_no_decay(name, p, spec.no_decay_keywords, ndims.get(p))
        (no_decay if no else decay).append(p)
    return [
        {"params": decay, "weight_decay": spec.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_adamw(
    model: nn.Module, spec: OptimSpec, ndims: Mapping[nn.Parameter, int] | None = None
) -> torch.optim.AdamW:
    groups = [g for g in param_groups(model, spec, ndims) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = spec.fused
    if fused is None:  # fused AdamW is much faster and supported on CPU and CUDA tensors
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=fused)


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, start_lr: float
) -> float:
    """SLIP's ``cosine_scheduler``: ``linspace(start_lr, base_lr, warmup_steps)`` then
    ``min_lr + ½(base_lr − min_lr)(1 + cos(π i / (total − warmup)))`` for i = 0 … total − warmup − 1.
    """
    if step < warmup_steps:
        if warmup_steps == 1:
            return start_lr
        return start_lr + (base_lr - start_lr) * step / (warmup_steps - 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    i = min(step - warmup_steps, decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * i / decay_steps))


def build_schedule(
    optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int, steps_per_epoch: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = (
        spec.warmup_steps
        if spec.warmup_steps is not None
        else int(round(spec.warmup_epochs * steps_per_epoch))
    )
    warmup = min(warmup, total_steps)

    def factor(step: int) -> float:
        lr = warmup_cosine_lr(step, total_steps, warmup, spec.lr, spec.min_lr, spec.warmup_start_lr)
        return lr / spec.lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
