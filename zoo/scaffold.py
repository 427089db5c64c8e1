"""``zoo new SLUG --family FAMILY``: write the five parts of a new paper from templates.

The parts follow the current patterns (CLIP / SLIP): ``lightning_modules/<slug>.py`` (a
``ZooModule`` whose docstring has placeholders for the paper's equations),
``datamodules/<slug>.py`` (on the family's datamodule), ``recipes/<slug>/tiny.yaml`` (runs as
generated, on embedded digits), ``recipes/<slug>/metafile.yaml`` (a skeleton of the ledger
schema) and ``tests/papers/test_<slug>.py`` (a placeholder test that fails).

Every part carries the :data:`zoo.check.PLACEHOLDER` marker, so ``zoo check`` and the test
suite fail until the contributor has written the paper: a scaffold never passes as a paper.
Templates live in ``zoo/templates/<family>/`` (``common/`` for the parts families share):
``contrastive`` (a dual encoder on :class:`~zoo.data.image_text_datamodule.ImageTextDataModule`),
``fewshot`` (a :class:`~zoo.fewshot.module.FewShotModule` head on a frozen CLIP, on
:class:`~zoo.data.fewshot_datamodule.FewShotDataModule`) and ``ssl`` (a vision tower with an
EMA teacher on :class:`~zoo.data.labelled_datamodule.LabelledImageDataModule` with extra views).
"""

from __future__ import annotations

import argparse
import keyword
import re
from collections.abc import Sequence
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).resolve().parent / "templates"
_SLUG = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
#: Names a paper module may not take: they would shadow packages the zoo imports.
_RESERVED = {"zoo", "tests", "common", "lightning", "torch", "timm", "transformers", "datasets"}


def families() -> list[str]:
    """The families with templates (a folder with a module template)."""
    return sorted(p.parent.name for p in TEMPLATES.glob("*/module.py.tmpl"))


def class_name(slug: str) -> str:
    """``toy_method`` -> ``ToyMethod`` (a slug's parts, capitalised)."""
    return "".join(part[:1].upper() + part[1:] for part in slug.split("_") if part)


def targets(root: Path, slug: str) -> dict[str, Path]:
    """Template name -> where ``zoo new`` writes it."""
    return {
        "module.py": root / "lightning_modules" / f"{slug}.py",
        "datamodule.py": root / "datamodules" / f"{slug}.py",
        "tiny.yaml": root / "recipes" / slug / "tiny.yaml",
        "metafile.yaml": root / "recipes" / slug / "metafile.yaml",
        "test.py": root / "tests" / "papers" / f"test_{slug}.py",
    }


def validate_slug(root: Path, slug: str) -> None:
    """Raise ``ValueError`` for a malformed slug or one the project already has."""
    if not _SLUG.match(slug) or slug.endswith("_") or "__" in slug:
        raise ValueError(
            f"invalid slug {slug!r}: 2-40 lower-case letters, digits and single '_', "
            "starting with a letter (e.g. clip_adapter)"
        )
    if keyword.iskeyword(slug) or slug in _RESERVED:
        raise ValueError(f"invalid slug {slug!r}: it is a reserved name")
    taken = [p for p in targets(root, slug).values() if p.exists()]
    if (root / "recipes" / slug).exists():
        taken.append(root / "recipes" / slug)
    if taken:
        listed = ", ".join(str(p.relative_to(root)) for p in sorted(set(taken)))
        raise ValueError(f"paper {slug!r} already exists ({listed}); choose another slug")


def _template(family: str, name: str) -> Template:
    for folder in (TEMPLATES / family, TEMPLATES / "common"):
        path = folder / f"{name}.tmpl"
        if path.is_file():
            return Template(path.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"no template {name} for family {family!r} in {TEMPLATES}")


def new_paper(root: Path, slug: str, family: str) -> list[Path]:
    """Write the five parts of paper ``slug`` under ``root``; return the written paths."""
    if family not in families():
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(families())}")
    validate_slug(root, slug)
    cls = class_name(slug)
    values = {"slug": slug, "cls": cls, "const": slug.upper(), "title": cls, "family": family}
    # render everything before writing anything: a broken template leaves no half scaffold
    rendered = {
        path: _template(family, name).substitute(values)
        for name, path in targets(root, slug).items()
    }
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(rendered)


def new_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo new", description=__doc__.splitlines()[0])
    parser.add_argument("slug", help="the paper's slug, e.g. clip_adapter")
    parser.add_argument("--family", required=True, choices=families())
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    args = parser.parse_args(list(argv))
    root = Path(args.root).resolve()
    if not (root / "lightning_modules").is_dir() or not (root / "recipes").is_dir():
        parser.error(f"{root} has no lightning_modules/ and recipes/: run it in the project root")
    try:
        written = new_paper(root, args.slug, args.family)
    except ValueError as err:
        parser.error(str(err))
    for path in written:
        print(f"wrote {path.relative_to(root)}")
    print(
        f"next: replace every ZOO-TODO, add a paper-scale recipe with its layout header, run "
        f"`python -m zoo docs`, then `python -m zoo check {args.slug}` until it passes"
    )
    return 0
