"""Freezing helpers: freeze modules, list what trains, and verify a module is frozen."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def freeze(*modules: nn.Module, eval_mode: bool = True) -> None:
    """Set ``requires_grad=False`` on every parameter; optionally switch to eval mode
    (so dropout and batch-norm statistics stay fixed)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
        if eval_mode:
            m.eval()


def unfreeze(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def trainable_parameter_names(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def assert_frozen(module: nn.Module, allow: Iterable[str] = ()) -> None:
    """Raise if any parameter outside the ``allow`` name prefixes requires grad."""
    allowed = tuple(allow)
    bad = [n for n in trainable_parameter_names(module) if not (allowed and n.startswith(allowed))]
    if bad:
        raise AssertionError(
            f"expected frozen, but trainable: {bad[:10]}{' …' if len(bad) > 10 else ''}"
        )
