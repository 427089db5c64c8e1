"""Spec dataclasses from plain mappings (checkpoint hyper-parameters, JSON model configs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def to_spec(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """``value`` as a ``cls`` instance: ``None`` → defaults, a mapping → nested construction
    (unknown keys are an error naming them), an instance → itself.

    A spec class may define ``resolve_mapping(mapping) -> dict`` to expand a mapping first,
    e.g. :class:`~zoo.backbones.DualEncoderSpec` resolves ``{preset: NAME, **overrides}``
    (:mod:`zoo.backbones.presets`)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")
    resolve = getattr(cls, "resolve_mapping", None)
    if callable(resolve):
        value = resolve(value)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, item in value.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(item, Mapping):
            item = to_spec(hint, item)
        kwargs[name] = item
    return cls(**kwargs)


def expand_named_preset(
    value: Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]], spec_name: str
) -> dict[str, Any]:
    """``{preset: NAME, **overrides}`` → ``{**presets[NAME], **overrides}`` (no ``preset``
    key: the mapping as it is); an unknown name is an error listing the known ones. The
    ``resolve_mapping`` of spec classes with in-module presets (the ViSFT heads)."""
    value = dict(value)
    preset = value.pop("preset", None)
    if preset is None:
        return value
    if preset not in presets:
        raise ValueError(f"unknown {spec_name} preset {preset!r}; choose from {list(presets)}")
    return {**presets[preset], **value}
