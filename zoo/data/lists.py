"""Class-name and prompt-template lists for zero-shot evaluation, given inline, as a file,
or as a named built-in (``builtin:imagenet``)."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.data.splits import resolve_path


def load_list(value: list[str] | str | None, root: Path | None = None) -> list[str] | None:
    """A list given inline, ``builtin:<name>`` (:func:`builtin_list`), or a path (relative to
    ``root``) to a JSON list or a text file with one item per line."""
    if value is None or isinstance(value, list):
        return value
    if value.startswith("builtin:"):
        return builtin_list(value.removeprefix("builtin:"))
    path = Path(resolve_path(root, value))  # type: ignore[arg-type]
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    text = path.read_text()
    return (
        json.loads(text) if path.suffix == ".json" else [s for s in text.splitlines() if s.strip()]
    )


def builtin_list(name: str) -> list[str]:
    """The ImageNet class names and OpenAI's 80 / simple prompt templates, as shipped with
    open_clip (``open_clip.zero_shot_metadata``; no download)."""
    from open_clip import zero_shot_metadata as meta

    lists = {
        "imagenet": meta.IMAGENET_CLASSNAMES,
        "openai_imagenet": [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES],
        "simple_imagenet": [t("{}") for t in meta.SIMPLE_IMAGENET_TEMPLATES],
    }
    if name not in lists:
        raise ValueError(f"unknown builtin list {name!r}; known: {', '.join(lists)}")
    return list(lists[name])
