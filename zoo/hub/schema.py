"""The ``config.json`` schema of a model folder, as pydantic models (as :mod:`zoo.ledger`).

Every entry refuses unknown keys, so a typo or a field from a newer zoo fails with the key's
path (``preprocess.mean: ...``) rather than being ignored. The ``architecture`` entry is
validated by the schema its architecture registers (:mod:`zoo.hub.architectures`). No torch
import: ``zoo list --models`` reads configs through this module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Entry(BaseModel):
    """A ``config.json`` object: unknown keys refused, values not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RecipeEntry(Entry):
    path: str
    sha256: str
    file: str


class PreprocessEntry(Entry):
    """:meth:`zoo.preprocess.PreprocessSpec.to_config` (``preprocess``)."""

    image_size: int = Field(ge=1)
    resize: int = Field(ge=1)
    crop: int = Field(ge=1)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"]

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:  # JSON writes 1.0 as 1.0, people write 1
        if isinstance(value, list):
            return [
                float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
            ]
        return value


class TokenizerEntry(Entry):
    name_or_path: str
    context_length: int = Field(ge=1)


class WeightsEntry(Entry):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["float32", "float16", "bfloat16"]


class NumParameters(Entry):
    backbone: int
    heads: int
    total: int


class HeadEntry(Entry):
    """An extra head stored next to the backbone (``head.<name>.*``), see :mod:`zoo.hub.heads`."""

    type: str
    in_dim: int = Field(ge=1)
    spec: dict[str, Any]


class ArchitectureBase(Entry):
    """Fields every ``architecture`` entry has; each architecture subclasses it with its own."""

    type: str
    num_parameters: NumParameters | None = None


class ModelConfig(Entry):
    """The whole ``config.json``. ``tokenizer`` is ``None`` for image-only models (format 2);
    ``architecture`` is checked here only for its ``type`` (see :func:`validate_model_config`)."""

    format_version: int
    name: str
    zoo_version: str
    paper: str
    recipe: RecipeEntry | None = None
    architecture: dict[str, Any]
    heads: dict[str, HeadEntry]
    preprocess: PreprocessEntry
    tokenizer: TokenizerEntry | None
    weights: WeightsEntry
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    provenance: dict[str, Any]


def describe_errors(err: ValidationError, prefix: str = "") -> str:
    """One line per error: ``key.path: message``."""
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        lines.append(f"{prefix}{key}: {item['msg']}")
    return "; ".join(lines)
