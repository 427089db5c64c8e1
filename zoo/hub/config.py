"""The ``config.json`` of a model folder: file names, reading with validation (no torch import).

A model folder holds ``config.json`` (schema: :mod:`zoo.hub.schema`; ``format_version`` 1 for
dual encoders, 2 for the other architectures of :mod:`zoo.hub.architectures`), ``model.safetensors``,
``model.safetensors.sha256``, ``README.md`` (the model card) and optionally ``tokenizer/`` and
``recipe.yaml``. See :mod:`zoo.hub` for the full layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zoo.hub.architectures import FORMAT_VERSION, validate_architecture
from zoo.hub.schema import ModelConfig, describe_errors
from zoo.hub.security import UnsafeConfigError, check_name, safe_child

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TOKENIZER_DIR = "tokenizer"
RECIPE_FILE = "recipe.yaml"
CLIP_BPE = "clip-bpe"

# Keys every config.json has (``tokenizer`` is ``null`` for image-only models).
REQUIRED_KEYS = (
    "format_version",
    "name",
    "zoo_version",
    "paper",
    "architecture",
    "heads",
    "preprocess",
    "tokenizer",
    "weights",
    "provenance",
)


def digest_file_name(weights_file: str) -> str:
    """The sidecar digest file of a weights file: ``model.safetensors.sha256``."""
    return f"{weights_file}.sha256"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def validate_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Check a parsed ``config.json`` against :class:`~zoo.hub.schema.ModelConfig` (unknown
    keys and wrong types are errors naming the key), its format version, name and
    architecture entry (:mod:`zoo.hub.architectures`), and that every path it names stays
    inside ``folder``. Returns it as a dict."""
    where = folder / CONFIG_FILE
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise UnsafeConfigError(f"{where} lacks required keys: {missing}")
    version = config["format_version"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise UnsafeConfigError(
            f"{where}: format_version {version!r} is not supported "
            f"(this zoo reads 1..{FORMAT_VERSION}); upgrade vl-zoo"
        )
    try:
        ModelConfig.model_validate(dict(config))
    except ValidationError as err:
        raise UnsafeConfigError(f"{where}: {describe_errors(err)}") from None
    check_name(config["name"])
    arch = validate_architecture(config["architecture"])
    if version < arch.format_version:
        raise UnsafeConfigError(
            f"{where}: architecture {arch.name!r} needs format_version >= {arch.format_version}"
        )
    if config["tokenizer"] is None and arch.uses_text:
        raise UnsafeConfigError(f"{where}: architecture {arch.name!r} needs a tokenizer entry")
    safe_child(folder, config["weights"]["file"], "weights.file")
    tokenizer = (config["tokenizer"] or {}).get("name_or_path", CLIP_BPE)
    if tokenizer != CLIP_BPE:
        safe_child(folder, tokenizer, "tokenizer.name_or_path")
    return dict(config)


def read_config(folder: str | Path) -> dict[str, Any]:
    """Parse and validate ``folder/config.json``."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a zoo model folder (no {CONFIG_FILE}): {folder}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnsafeConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, Mapping):
        raise UnsafeConfigError(f"{path} must hold a JSON object")
    return validate_config(config, folder)
