"""``zoo.load`` and moving a stored backbone into another paper's module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoo.backbones import DualEncoder
from zoo.hub.config import read_config
from zoo.hub.model import ZooModel, load_model_folder
from zoo.hub.registry import find_model_folder, resolve_model_dir
from zoo.hub.weights import load_weights, split_state


def load(
    name_or_uri: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
    base: ZooModel | str | Path | None = None,
) -> ZooModel:
    """Load a zoo model: an installed package name, ``local-dir:PATH`` or
    ``hf-hub:ORG/NAME[@REV]`` (online only).

    Weights load only from safetensors whose sha256 matches ``config.json`` and the
    ``.sha256`` file (pickles only with ``trust_pickle=True``). Returns a :class:`ZooModel`
    in eval mode, in ``dtype`` (float32 by default, whatever the stored dtype) on ``device``.

    A LoRA adapter package (``zoo export --adapter-only``, :mod:`zoo.hub.adapter`) loads only
    with ``base``: the model it was trained on (a loaded :class:`ZooModel`, a model folder, or
    a name / ``local-dir:`` / ``hf-hub:`` URI). The base's weights must hash to the sha256 the
    adapter records (else :class:`~zoo.hub.adapter.BaseWeightsMismatchError`); the result is
    the base with the adapter merged, with the adapter package's preprocessing and config.
    """
    folder = resolve_model_dir(name_or_uri)
    return load_model_folder(
        folder, device=device, dtype=dtype, trust_pickle=trust_pickle, base=base
    )


def _target_encoder(module: nn.Module) -> DualEncoder:
    if isinstance(module, DualEncoder):
        return module
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, DualEncoder):
        raise TypeError(f"{type(module).__name__} has no DualEncoder at .encoder")
    return encoder


def load_backbone_into(
    module: nn.Module, source: ZooModel | str | Path, trust_pickle: bool = False
) -> nn.Module:
    """Load a stored ``backbone.*`` into ``module.encoder`` (any paper module) or into a
    :class:`DualEncoder`, strictly: every backbone key must match, no head is touched.

    ``source`` is a loaded :class:`ZooModel`, a model name / ``local-dir:`` / ``hf-hub:`` URI
    (str), or a folder (``Path``). Returns ``module``.
    """
    encoder = _target_encoder(module)
    if isinstance(source, ZooModel):
        state = source.encoder.state_dict()
    else:
        folder = find_model_folder(source) if isinstance(source, Path) else None
        folder = folder or resolve_model_dir(str(source))
        state, _ = split_state(load_weights(folder, read_config(folder), trust_pickle))
    encoder.load_state_dict(state, strict=True)
    return module
