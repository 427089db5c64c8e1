"""vl-zoo: a PyTorch Lightning model zoo for visual and vision-language pre-training.

Importing ``zoo`` is cheap: torch, Lightning and the model code load only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "list_models", "load"]


def __getattr__(name: str) -> Any:
    """``zoo.load`` and ``zoo.list_models``, imported on first use (see :mod:`zoo.hub`)."""
    if name in ("load", "list_models"):
        import zoo.hub

        return getattr(zoo.hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
