"""Heads stored next to the backbone (``head.<name>.*``): describe and rebuild them.

Only :class:`zoo.heads.ProjectionMLP` heads (type ``"projection_mlp"``, e.g. SLIP's
``ssl_head``) are known; their :class:`MLPSpec` is read off the module's layers and checked
by rebuilding it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from zoo.heads import MLPSpec, ProjectionMLP
from zoo.specs import to_spec

PROJECTION_MLP = "projection_mlp"
_NORMS = {nn.BatchNorm1d: "bn", nn.LayerNorm: "ln"}
_ACTS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu"}


def projection_mlp_spec(mlp: ProjectionMLP) -> MLPSpec:
    """The :class:`MLPSpec` that builds ``mlp`` (verified by rebuilding it)."""
    children = list(mlp.children())
    linears = [m for m in children if isinstance(m, nn.Linear)]
    norms = [_NORMS[type(m)] for m in children if type(m) in _NORMS]
    acts = [_ACTS[type(m)] for m in children if type(m) in _ACTS]
    spec = MLPSpec(
        hidden_dims=[lin.out_features for lin in linears[:-1]],
        out_dim=linears[-1].out_features,
        norm=norms[0] if norms else "none",
        act=acts[0] if acts else "relu",
        bias=linears[0].bias is not None,
        last_norm=type(children[-1]) in _NORMS,
    )
    rebuilt = ProjectionMLP(mlp.in_dim, spec).state_dict()
    ours = mlp.state_dict()
    if rebuilt.keys() != ours.keys() or any(rebuilt[k].shape != v.shape for k, v in ours.items()):
        raise ValueError(f"cannot describe this ProjectionMLP with an MLPSpec: {mlp}")
    return spec


def describe_head(name: str, head: nn.Module) -> dict[str, Any]:
    """The ``config.json`` entry of a head: ``{"type", "in_dim", "spec"}``."""
    if not isinstance(head, ProjectionMLP):
        raise ValueError(
            f"module {name!r} ({type(head).__name__}) is not a known head type; only "
            "ProjectionMLP heads can be exported"
        )
    spec = projection_mlp_spec(head)
    return {"type": PROJECTION_MLP, "in_dim": head.in_dim, "spec": dataclasses.asdict(spec)}


def build_head(entry: Mapping[str, Any]) -> nn.Module:
    """A fresh head from its ``config.json`` entry."""
    if entry.get("type") != PROJECTION_MLP:
        raise ValueError(f"unknown head type {entry.get('type')!r}")
    return ProjectionMLP(int(entry["in_dim"]), to_spec(MLPSpec, entry["spec"]))
