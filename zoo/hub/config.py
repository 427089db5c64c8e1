"""The ``config.json`` of a model folder: file names, reading with validation (no torch import).

A model folder holds ``config.json`` (this schema, ``format_version`` 1), ``model.safetensors``,
``model.safetensors.sha256``, ``README.md`` (the model card) and optionally ``tokenizer/`` and
``recipe.yaml``. See :mod:`zoo.hub` for the full layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.hub.security import UnsafeConfigError, check_name, check_spec_is_inert, safe_child

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TOKENIZER_DIR = "tokenizer"
RECIPE_FILE = "recipe.yaml"
CLIP_BPE = "clip-bpe"

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
PREPROCESS_KEYS = ("image_size", "resize", "crop", "mean", "std", "interpolation")


def digest_file_name(weights_file: str) -> str:
    """The sidecar digest file of a weights file: ``model.safetensors.sha256``."""
    return f"{weights_file}.sha256"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def validate_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Check a parsed ``config.json``: required keys, format version, name, architecture and
    that every path it names stays inside ``folder``. Returns it as a dict."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise UnsafeConfigError(f"{folder / CONFIG_FILE} lacks required keys: {missing}")
    version = config["format_version"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise UnsafeConfigError(
            f"{folder / CONFIG_FILE}: format_version {version!r} is not supported "
            f"(this zoo reads 1..{FORMAT_VERSION}); upgrade vl-zoo"
        )
    check_name(config["name"])
    for key in ("architecture", "heads", "preprocess", "tokenizer", "weights", "provenance"):
        if not isinstance(config[key], Mapping):
            raise UnsafeConfigError(f"{folder / CONFIG_FILE}: {key} must be a JSON object")
    arch = config["architecture"]
    if not isinstance(arch, Mapping) or arch.get("type") != "dual_encoder":
        raise UnsafeConfigError(f"unsupported architecture {arch!r} (expected dual_encoder)")
    check_spec_is_inert(arch.get("spec") or {})
    missing_pre = [k for k in PREPROCESS_KEYS if k not in config["preprocess"]]
    if missing_pre:
        raise UnsafeConfigError(f"config.json preprocess lacks {missing_pre}")
    safe_child(folder, config["weights"].get("file"), "weights.file")
    tokenizer = config["tokenizer"].get("name_or_path")
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
