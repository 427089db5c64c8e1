"""Heads stored next to the backbone (``head.<name>.*``): describe and rebuild them.

Only :class:`zoo.heads.ProjectionMLP` heads (type ``"projection_mlp"``, e.g. SLIP's
``ssl_head``) are known; each keeps the :class:`MLPSpec` it was built from, checked here by
rebuilding it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from zoo.heads import MLPSpec, ProjectionMLP
from zoo.specs import to_spec

PROJECTION_MLP = "projection_mlp"


def projection_mlp_spec(mlp: ProjectionMLP) -> MLPSpec:
    """The :class:`MLPSpec` that built ``mlp`` (verified by rebuilding it)."""
    spec = mlp.spec
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
