"""Papers and recipes, discovered from ``recipes/<paper>/`` (never listed by hand).

A paper is a folder ``recipes/<slug>/`` with ``metafile.yaml``; its recipes are the other
``*.yaml`` files there. The recipes folder is found from ``$VL_ZOO_RECIPES``, the source tree
next to the ``zoo`` package, or ``./recipes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml


def recipes_dir() -> Path:
    candidates = [
        os.environ.get("VL_ZOO_RECIPES"),
        Path(__file__).resolve().parent.parent / "recipes",
        Path.cwd() / "recipes",
    ]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError(
        "recipes folder not found; set VL_ZOO_RECIPES or run from the vl-zoo source tree"
    )


@dataclass(frozen=True)
class Paper:
    slug: str
    folder: Path

    @property
    def metafile(self) -> dict[str, Any]:
        return load_metafile(self.folder / "metafile.yaml")

    @property
    def recipes(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.yaml") if p.name != "metafile.yaml")

    @property
    def title(self) -> str:
        return str(self.metafile.get("paper", {}).get("title", self.slug))


@cache
def load_metafile(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def papers() -> list[Paper]:
    root = recipes_dir()
    return [Paper(p.parent.name, p.parent) for p in sorted(root.glob("*/metafile.yaml"))]


def get_paper(slug: str) -> Paper:
    found = {p.slug: p for p in papers()}
    if slug not in found:
        raise KeyError(f"unknown paper {slug!r}; known: {', '.join(sorted(found)) or 'none'}")
    return found[slug]
