"""Papers and recipes, discovered from ``recipes/<paper>/`` (never listed by hand).

A paper is a folder ``recipes/<slug>/`` with ``metafile.yaml``; its recipes are the other
``*.yaml`` files there. The recipes folder is, first match wins:

1. ``$VL_ZOO_RECIPES``;
2. the copy bundled in an installed wheel, ``zoo/_recipes/`` (``setup.py`` copies the source
   tree's ``recipes/`` there at build time, as mmpretrain/mim ship configs in ``.mim/``);
3. the source tree next to the ``zoo`` package (a checkout or an editable install);
4. ``./recipes``.

A recipe is named ``<paper>/<recipe>`` (``slip/tiny``; ``slip/tiny.yaml`` and
``recipes/slip/tiny.yaml`` are the same name). :func:`resolve_recipe` turns a ``--config``
value into a file: a real file always wins, so a user's edited copy is never shadowed.
This module imports no torch, so ``zoo list`` / ``zoo info`` answer at once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

#: Where ``setup.py`` puts the recipes inside the installed ``zoo`` package.
BUNDLED_RECIPES = Path(__file__).resolve().parent / "_recipes"

#: The files of a paper folder that ship and that ``zoo recipes copy`` writes.
PAPER_FILE_PATTERNS = ("*.yaml", "README.md")


class RecipeNotFoundError(FileNotFoundError):
    """A recipe name or path that matches neither a file nor a known recipe."""


def is_tiny_recipe(path: str | os.PathLike[str]) -> bool:
    """``tiny.yaml`` and its variants (``tiny_f.yaml``: Tip-Adapter-F next to the
    training-free Tip-Adapter): recipes on embedded or generated data, with no paper-scale
    data layout to declare."""
    stem = Path(path).stem
    return stem == "tiny" or stem.startswith("tiny_")


def recipes_dir() -> Path:
    """The recipes folder (see the module docstring for the search order)."""
    candidates = [
        os.environ.get("VL_ZOO_RECIPES"),
        BUNDLED_RECIPES,
        Path(__file__).resolve().parent.parent / "recipes",
        Path.cwd() / "recipes",
    ]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError(
        "recipes folder not found; set VL_ZOO_RECIPES, run from the vl-zoo source tree or "
        "reinstall vl-zoo (its wheel ships the recipes)"
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

    @property
    def files(self) -> list[Path]:
        """Every file a copy of this paper's folder needs: recipes, metafile, README."""
        found = {p for pattern in PAPER_FILE_PATTERNS for p in self.folder.glob(pattern)}
        return sorted(p for p in found if p.is_file())


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


def recipe_names() -> list[str]:
    """Every known recipe as ``<paper>/<recipe>`` (the short form ``--config`` accepts)."""
    return [f"{p.slug}/{r.stem}" for p in papers() for r in p.recipes]


def looks_like_recipe(value: str) -> bool:
    """Whether a ``--config`` value is meant as a file or recipe name, not inline YAML
    (jsonargparse also accepts ``--config '{trainer: {max_epochs: 1}}'``)."""
    if any(ch in value for ch in "{}[]:\n") and not Path(value).exists():
        return False
    return value.endswith((".yaml", ".yml")) or "/" in value.replace(os.sep, "/")


def resolve_recipe(value: str | os.PathLike[str]) -> Path:
    """A ``--config`` value → a recipe file.

    An existing file is returned as given (a real file always wins). Otherwise the value is
    read as a recipe name (:func:`find_recipe`). Raises :class:`RecipeNotFoundError`,
    listing the known recipes, when nothing matches."""
    path = Path(value)
    if path.is_file():
        return path
    return find_recipe(value)


def find_recipe(name: str | os.PathLike[str]) -> Path:
    """A recipe name, ``slip/tiny``, ``slip/tiny.yaml`` or ``recipes/slip/tiny.yaml``, looked
    up in :func:`recipes_dir` only (files in the working directory do not count)."""
    path = Path(name)
    parts = path.parts
    if len(parts) == 3 and parts[0] == "recipes":
        parts = parts[1:]
    if len(parts) == 2 and not path.is_absolute():
        paper, stem = parts
        stem = stem.removesuffix(".yaml")
        try:
            candidate = recipes_dir() / paper / f"{stem}.yaml"
        except FileNotFoundError:
            candidate = None
        if candidate is not None and candidate.is_file() and stem != "metafile":
            return candidate
    raise RecipeNotFoundError(_not_found_message(str(name)))


def _not_found_message(value: str) -> str:
    try:
        names = recipe_names()
    except FileNotFoundError as err:
        return f"recipe not found: {value} ({err})"
    known = ", ".join(names) if names else "none"
    return (
        f"recipe not found: {value} (no such file, and no known recipe of that name); "
        f"known recipes: {known}"
    )


def copy_recipes(names: list[str], dest: Path, *, force: bool = False) -> list[Path]:
    """Copy papers (``slip``) or single recipes (``slip/tiny``) to ``dest/<paper>/``.

    Nothing is written when a destination file exists and ``force`` is false: a user's edits
    are never overwritten silently. Returns the files written."""
    plan: list[tuple[Path, Path]] = []
    for name in names:
        if "/" in name.replace(os.sep, "/"):
            source = find_recipe(name)
            plan.append((source, dest / source.parent.name / source.name))
        else:
            paper = get_paper(name)
            plan += [(f, dest / paper.slug / f.name) for f in paper.files]
    existing = [target for _, target in plan if target.exists()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise FileExistsError(f"refusing to overwrite {listed} (use --force)")
    for source, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in plan]
