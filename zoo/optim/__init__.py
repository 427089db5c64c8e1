"""Pluggable optimisation: the optimiser, the learning-rate schedule and the parameter-group
rule are chosen by name in one recipe block (:class:`OptimSpec`), each matching its paper's
official code; :func:`merge_onto` lays a partial override on a paper's defaults.

- :mod:`zoo.optim.spec`: ``OptimSpec``, ``merge_onto``;
- :mod:`zoo.optim.groups`: parameter-group rules (``slip``, ``timm``, ``layer_decay``,
  ``all``) and per-module lr multipliers;
- :mod:`zoo.optim.optimizers`: ``adamw``, ``sgd``, ``lars``, ``lamb``;
- :mod:`zoo.optim.schedules`: ``warmup_cosine``, ``constant_warmup_cosine``, ``step``,
  ``constant``, stepped per optimiser step or per epoch;
- :mod:`zoo.optim.steps`: optimiser steps per Lightning epoch.
"""

from zoo.optim.groups import GROUP_RULES, clean_name, is_no_decay, param_groups
from zoo.optim.optimizers import OPTIMIZERS, build_adamw, build_optimizer
from zoo.optim.schedules import (
    SCHEDULES,
    Horizon,
    build_schedule,
    horizon,
    linear_warmup_lr,
    warmup_cosine_lr,
)
from zoo.optim.spec import OptimSpec, merge_onto
from zoo.optim.steps import optimizer_steps_per_epoch

__all__ = [
    "GROUP_RULES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Horizon",
    "OptimSpec",
    "build_adamw",
    "build_optimizer",
    "build_schedule",
    "clean_name",
    "horizon",
    "is_no_decay",
    "linear_warmup_lr",
    "merge_onto",
    "optimizer_steps_per_epoch",
    "param_groups",
    "warmup_cosine_lr",
]
