"""Named encoder presets as data, as in open_clip's ``model_configs/*.json``.

A preset is a YAML file ``zoo/backbones/presets/<name>.yaml`` holding a
:class:`~zoo.backbones.DualEncoderSpec` mapping (shipped as package data). A recipe or a
``to_spec`` call names one and overrides any field, nested mappings merged key by key::

    encoder: {preset: vit-b16-clip, vision: {drop_path_rate: 0.1}}

resolves to the preset with ``vision.drop_path_rate`` replaced and every other field kept.
Resolution happens when the spec is built (:func:`zoo.specs.to_spec`) and, for recipes and
command-line values, when the zoo's command line loads them (:func:`expand_presets`), so
``--print_config``, saved ``config.yaml`` files and checkpoints hold the resolved spec, never
the preset name, and fields can still be overridden one by one on the command line.
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


#: Preset names of specs other than the encoder's, resolved by those specs themselves
#: (``resolve_mapping``): the size presets of the ViSFT heads (``DETRHeadSpec``,
#: ``Mask2FormerHeadSpec``, the captioner). No encoder preset file may take one of them.
SPEC_PRESET_NAMES = frozenset({"tiny", "paper"})


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


def expand_presets(data: Any) -> Any:
    """``data`` (a parsed YAML / JSON value) with every mapping that has a ``preset`` key
    replaced by the complete :class:`~zoo.backbones.DualEncoderSpec` mapping it resolves to
    (:func:`resolve_preset`, then every field written out), recursively. The zoo's command line loads
    recipes and option values through this (:func:`zoo.lightning_cli.load_with_presets`),
    so jsonargparse only ever sees full encoder mappings: ``--print_config`` and the saved
    ``config.yaml`` hold the resolved spec, and dotted overrides such as
    ``--model.init_args.encoder.vision.depth=1`` apply on top of the preset. The names of
    :data:`SPEC_PRESET_NAMES` belong to other specs' own presets (the ViSFT heads'
    ``preset: tiny``) and are left to those specs' ``resolve_mapping``; any other unknown name
    fails here, listing the encoder presets."""
    if isinstance(data, Mapping):
        name = data.get(PRESET_KEY)
        if isinstance(name, str) and name not in SPEC_PRESET_NAMES:
            # every field written out: a preset given on the command line replaces the
            # recipe's encoder whole, instead of jsonargparse merging it field by field
            from zoo.backbones.dual_encoder import DualEncoderSpec
            from zoo.specs import to_spec

            return dataclasses.asdict(to_spec(DualEncoderSpec, data))
        return {key: expand_presets(value) for key, value in data.items()}
    if isinstance(data, list):
        return [expand_presets(value) for value in data]
    return data
