"""Pretrained model folders and packages: export, install, load (see DESIGN.md).

- :func:`load` (``zoo.load``): a model by installed name, ``local-dir:PATH`` or
  ``hf-hub:ORG/NAME[@REV]``, as a :class:`~zoo.hub.model.ZooModel`;
- :func:`list_models` (``zoo.list_models``): installed model packages (``zoo.models``);
- :func:`export_model` (``zoo export``): Lightning checkpoints, HF CLIP folders and OpenAI /
  open_clip state dicts → model folder + package source tree (+ wheel);
- :func:`load_backbone_into`: a stored ``backbone.*`` into another paper's ``encoder``;
- LoRA adapter packages (``zoo export --adapter-only``, ``zoo.load(ADAPTER, base=BASE)``):
  :mod:`zoo.hub.adapter`.

Attributes load lazily: ``list_models`` and name resolution never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "zoo.hub.loader",
    "load_backbone_into": "zoo.hub.loader",
    "ZooModel": "zoo.hub.model",
    "load_model_folder": "zoo.hub.model",
    "export_model": "zoo.hub.export",
    "ExportResult": "zoo.hub.export",
    "list_models": "zoo.hub.registry",
    "installed_models": "zoo.hub.registry",
    "resolve_model_dir": "zoo.hub.registry",
    "ModelNotFoundError": "zoo.hub.registry",
    "HubOfflineError": "zoo.hub.registry",
    "read_config": "zoo.hub.config",
    "Architecture": "zoo.hub.architectures",
    "register_architecture": "zoo.hub.architectures",
    "get_architecture": "zoo.hub.architectures",
    "TamperedWeightsError": "zoo.hub.security",
    "UnsafePathError": "zoo.hub.security",
    "UnsafeConfigError": "zoo.hub.security",
    "UntrustedCheckpointError": "zoo.hub.security",
    "BaseWeightsMismatchError": "zoo.hub.adapter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
