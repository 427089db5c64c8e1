"""Heads: projection MLPs built from a block spec."""

from zoo.heads.mlp import MLPSpec, ProjectionMLP

__all__ = ["MLPSpec", "ProjectionMLP"]
