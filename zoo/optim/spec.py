"""``OptimSpec``: one recipe block naming the optimiser, the schedule and the parameter-group
rule, with their hyper-parameters; and :func:`merge_onto`, which lays a partial override on a
paper's defaults (``SLIP(optim={"lr": 1e-3})`` keeps SLIP's weight decay)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# The names each registry accepts; the registries themselves live next to their builders
# (zoo.optim.optimizers / schedules / groups), which check them against these at import.
OPTIMIZER_NAMES = ("adamw", "sgd", "lars", "lamb")
SCHEDULE_NAMES = ("warmup_cosine", "constant_warmup_cosine", "step", "constant")
GROUP_RULE_NAMES = ("slip", "timm", "layer_decay", "all")


@dataclass
class OptimSpec:
    """Optimiser, learning-rate schedule and parameter-group rule, chosen by name.

    The defaults are SLIP's (``main.py`` / ``utils.cosine_scheduler``): fused AdamW
    (0.9, 0.98), ``lr`` the peak learning rate for the whole (global) batch, a linear warm-up
    from ``warmup_start_lr`` over ``warmup_epochs`` (or ``warmup_steps`` when set), then a half
    cosine down to ``min_lr``, updated every optimiser step; parameters with ``ndim < 2`` or a
    name containing one of ``no_decay_keywords`` get no weight decay.

    ``optimizer``: ``adamw`` (``torch.optim.AdamW``: ``betas``, ``eps``, ``fused``), ``sgd``
    (``torch.optim.SGD``: ``momentum``, ``nesterov``; CoOp: lr 0.002, momentum 0.9, wd 5e-4),
    ``lars`` (``timm.optim.Lars``: ``momentum``, ``nesterov``, ``trust_coeff``, ``eps``; the
    trust ratio is applied to decayed groups only) or ``lamb`` (``timm.optim.Lamb``: ``betas``,
    ``eps``; timm clips the global gradient norm to 1 inside the step).

    ``schedule`` (a factor on every group's own initial lr, so ratios between groups stay):

    - ``warmup_cosine``: SLIP's, above;
    - ``constant_warmup_cosine``: CoOp (Dassl ``ConstantWarmupScheduler`` around
      ``CosineAnnealingLR(T_max=max_epoch)``): ``warmup_lr`` for the warm-up, then
      ``min_lr + ½(lr − min_lr)(1 + cos(π t / T))``, t counted from the warm-up's end and T
      the whole run (as Dassl's ``T_max``, so the cosine does not reach ``min_lr``);
    - ``step``: the linear warm-up, then ``lr · gamma^k`` after the k-th of ``milestones``
      (epochs; ``milestone_steps`` in optimiser steps overrides them), as ``MultiStepLR``;
    - ``constant``: the linear warm-up, then ``lr``.

    ``interval``: ``step`` updates the lr every optimiser step (SLIP); ``epoch`` once per
    epoch, as CoOp / Dassl step their schedulers: the schedule then counts epochs
    (``warmup_epochs`` and ``milestones`` are rounded to whole epochs; ``warmup_steps`` and
    ``milestone_steps`` are refused).

    ``groups`` (see :mod:`zoo.optim.groups`): ``slip`` (above), ``timm``
    (``timm.optim.param_groups_weight_decay``: 1-D parameters, ``*.bias`` and every
    submodule's ``no_weight_decay()`` names undecayed), ``layer_decay``
    (``timm.optim.param_groups_layer_decay``, MAE / BEiT fine-tuning: with the timm model at
    ``layer_decay_module`` (e.g. ``encoder.visual``; unset: the whole model) as the trunk of
    depth L, layer i (stem 0, block j at j + 1) trains at ``layer_decay ** (L + 1 - i)`` and
    everything outside the trunk (heads, other towers) at 1, as the top layer) or ``all`` (one
    decayed group: ``torch``'s and Dassl's default). ``lr_mult`` then multiplies the lr of the parameters under a module
    prefix (``{"head": 10.0}``; the longest matching prefix wins).

    CoOp's block, for example (Dassl ``configs/trainers/CoOp``; ``optim.SGD``, ``MAX_EPOCH``
    50, ``WARMUP_EPOCH`` 1, ``WARMUP_CONS_LR`` 1e-5, cosine to 0 per epoch)::

        optim: {optimizer: sgd, lr: 0.002, momentum: 0.9, weight_decay: 5.0e-4, groups: all,
                schedule: constant_warmup_cosine, interval: epoch, warmup_epochs: 1,
                warmup_lr: 1.0e-5, min_lr: 0.0}
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
    # Fields below were added after checkpoints with pickled specs existed: plain (not
    # default_factory) defaults, so an unpickled old spec reads them from the class.
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    trust_coeff: float = 0.001
    schedule: str = "warmup_cosine"
    interval: Literal["step", "epoch"] = "step"
    warmup_lr: float = 1e-5
    milestones: tuple[float, ...] = ()
    milestone_steps: tuple[int, ...] | None = None
    gamma: float = 0.1
    groups: str = "slip"
    layer_decay: float = 0.75
    layer_decay_module: str | None = None
    lr_mult: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for key, value, known in (
            ("optimizer", self.optimizer, OPTIMIZER_NAMES),
            ("schedule", self.schedule, SCHEDULE_NAMES),
            ("groups", self.groups, GROUP_RULE_NAMES),
            ("interval", self.interval, ("step", "epoch")),
        ):
            if value not in known:
                raise ValueError(f"optim.{key} {value!r} is not one of {', '.join(known)}")
        self.betas = tuple(self.betas)
        self.milestones = tuple(self.milestones)
        if self.milestone_steps is not None:
            self.milestone_steps = tuple(self.milestone_steps)
        if self.interval == "epoch" and (
            self.warmup_steps is not None or self.milestone_steps is not None
        ):
            raise ValueError(
                "optim.interval 'epoch' counts epochs: use warmup_epochs / milestones, "
                "not warmup_steps / milestone_steps"
            )


def merge_onto(default: T, value: T | Mapping[str, Any] | None) -> T:
    """``value`` laid over a dataclass ``default`` (a paper's defaults), as a fresh copy.

    ``None`` gives a copy of ``default``; a mapping replaces just its keys (unknown keys are
    an error naming them), so ``{"lr": 1e-3}`` keeps the paper's other values; an instance
    of the dataclass is complete already and is used as it is (copied). Copies, so that a
    module never shares (and mutates) the module-level default of a signature.
    """
    if value is None:
        return copy.deepcopy(default)
    if isinstance(value, type(default)):
        return copy.deepcopy(value)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"expected {type(default).__name__} or a mapping, got {type(value).__name__}"
        )
    names = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"unknown {type(default).__name__} keys: {', '.join(unknown)}")
    return dataclasses.replace(copy.deepcopy(default), **copy.deepcopy(dict(value)))
