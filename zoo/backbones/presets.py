"""Named encoder presets as data, as in open_clip's ``model_configs/*.json``.

A preset is a YAML file ``zoo/backbones/presets/<name>.yaml`` holding a
:class:`~zoo.backbones.DualEncoderSpec` mapping (shipped as package data). A recipe or a
``to_spec`` call names one and overrides any field, nested mappings merged key by key::

    encoder: {preset: vit-b16-clip, vision: {drop_path_rate: 0.1}}

resolves to the preset with ``vision.drop_path_rate`` replaced and every other field kept.
Resolution happens when the spec is built (:func:`zoo.specs.to_spec` and, in recipes, the
jsonargparse type registered in :func:`register_cli_type`), so ``--print_config``, saved
``config.yaml`` files and checkpoints hold the resolved spec, never the preset name.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESET_KEY = "preset"


class UnknownPresetError(ValueError):
    """A preset name that no file in ``zoo/backbones/presets`` defines."""


def preset_names() -> list[str]:
    """The known preset names (the files' stems), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@functools.cache
def _read_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if "/" in name or "\\" in name or not path.is_file():
        raise UnknownPresetError(
            f"unknown encoder preset {name!r}; known presets: {', '.join(preset_names())}"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"preset file {path} must hold a mapping")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The mapping of preset ``name`` (a fresh copy, safe to modify)."""
    return copy.deepcopy(_read_preset(str(name)))


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: nested mappings merge key by key, any other value
    (lists included) replaces the base value."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_preset(value: Mapping[str, Any]) -> dict[str, Any]:
    """``{preset: NAME, **overrides}`` → the preset merged with the overrides; a mapping
    without ``preset`` is returned unchanged (as a dict)."""
    if PRESET_KEY not in value:
        return dict(value)
    overrides = {k: v for k, v in value.items() if k != PRESET_KEY}
    return merge(load_preset(value[PRESET_KEY]), overrides)


def _cli_deserialize(value: Any) -> Any:
    from zoo.backbones.dual_encoder import DualEncoderSpec
    from zoo.specs import to_spec

    if type(value).__name__ == "NestedArg":  # --model.init_args.encoder.vision.depth=1
        raise ValueError(
            "encoder fields cannot be overridden one by one on the command line; pass the "
            "whole mapping, e.g. --model.init_args.encoder='{preset: vit-b16-clip, "
            "vision: {drop_path_rate: 0.1}}'"
        )
    if isinstance(value, str):
        value = yaml.safe_load(value)
    return to_spec(DualEncoderSpec, value)


@functools.cache
def register_cli_type() -> None:
    """Make jsonargparse (LightningCLI) parse ``DualEncoderSpec`` arguments through
    :func:`zoo.specs.to_spec`, so recipes may name a preset; dumps (``--print_config``, the
    saved ``config.yaml``) write the resolved spec. Idempotent."""
    try:
        from jsonargparse.typing import register_type
    except ImportError:  # the CLI is not installed: nothing to register
        return
    from zoo.backbones.dual_encoder import DualEncoderSpec

    register_type(DualEncoderSpec, serializer=dataclasses.asdict, deserializer=_cli_deserialize)
