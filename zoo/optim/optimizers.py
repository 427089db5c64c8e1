"""Optimisers by name (``OptimSpec.optimizer``), built on the groups of
:func:`zoo.optim.groups.param_groups`: each group starts at ``spec.lr * lr_scale``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from timm.optim import Lamb, Lars
from torch import nn

from zoo.optim.groups import param_groups
from zoo.optim.spec import OPTIMIZER_NAMES, OptimSpec


def _adamw(groups: list[dict], spec: OptimSpec) -> torch.optim.Optimizer:
    fused = spec.fused
    if fused is None:  # fused AdamW is much faster and supported on CPU and CUDA tensors
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=fused)


def _sgd(groups: list[dict], spec: OptimSpec) -> torch.optim.Optimizer:
    # CoOp (Dassl build_optimizer): SGD(momentum 0.9, dampening 0, nesterov False).
    # fused only when asked (torch's default for SGD is foreach).
    fused = spec.fused or None
    return torch.optim.SGD(
        groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, fused=fused
    )


def _lars(groups: list[dict], spec: OptimSpec) -> torch.optim.Optimizer:
    # timm's Lars adapts only groups with weight decay (always_adapt=False), so biases and
    # norms in no-decay groups take plain momentum SGD steps, as SimCLR / BYOL exclude them.
    return Lars(
        groups,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        trust_coeff=spec.trust_coeff,
        eps=spec.eps,
    )


def _lamb(groups: list[dict], spec: OptimSpec) -> torch.optim.Optimizer:
    return Lamb(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimSpec], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "lars": _lars,
    "lamb": _lamb,
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


def build_optimizer(
    model: nn.Module, spec: OptimSpec, ndims: Mapping[nn.Parameter, int] | None = None
) -> torch.optim.Optimizer:
    """``spec.optimizer`` over ``model``'s parameter groups (empty groups dropped). A group
    with ``lr_scale`` ≠ 1 starts at ``spec.lr * lr_scale``; the others at ``spec.lr`` itself."""
    groups = [g for g in param_groups(model, spec, ndims) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        if g["lr_scale"] != 1.0:
            g["lr"] = spec.lr * g["lr_scale"]
    return OPTIMIZERS[spec.optimizer](groups, spec)


def build_adamw(
    model: nn.Module, spec: OptimSpec, ndims: Mapping[nn.Parameter, int] | None = None
) -> torch.optim.Optimizer:
    """:func:`build_optimizer`; the name predates the other optimisers (benchmarks use it)."""
    return build_optimizer(model, spec, ndims)
