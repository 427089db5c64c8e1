"""vl-zoo: a PyTorch Lightning model zoo for visual and vision-language pre-training.

Importing ``zoo`` is cheap: torch, Lightning and the model code load only when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
