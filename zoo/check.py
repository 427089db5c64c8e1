"""``zoo check SLUG`` / ``zoo check --all``: does a paper meet the zoo's paper contract?

The contract (CONTRIBUTING.md, "Adding a paper") has five parts, and this command checks
each inside the project (the current directory, or ``--root``):

1. ``lightning_modules/<slug>.py`` defines a ``ZooModule`` subclass whose docstring cites the
   paper (``Author et al., YEAR`` or the metafile's arXiv id);
2. ``datamodules/<slug>.py`` defines a ``ZooDataModule`` subclass;
3. ``recipes/<slug>/`` holds ``tiny.yaml`` and at least one paper-scale recipe; every recipe
   parses through the zoo command line (``fit --print_config``, in-process, nothing is built
   or trained) and every paper-scale recipe declares its ``# Layout under data.root``;
4. ``recipes/<slug>/metafile.yaml`` validates against the ledger schema
   (:mod:`zoo.ledger`), each reported number names an existing recipe, and the generated
   ``README.md`` is what ``zoo docs`` would write now;
5. ``tests/papers/test_<slug>.py`` holds at least one test.

A file that still carries a scaffold placeholder (:data:`PLACEHOLDER`, written by
``zoo new``) fails, so a scaffold never passes as a paper. Each failure is one line saying
what to add and where; the exit status is 1 on any failure.

Speed (``zoo check --all`` runs in CI): importing torch and Lightning once is most of the
cost, and parsing a recipe with jsonargparse the rest. One parser is built once
(:func:`zoo.lightning_cli.build_parser`) and reused for every recipe; the modules the recipes
name are imported once, before the recipes are parsed in ``--jobs`` forked worker processes
that inherit both.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import multiprocessing
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: The marker ``zoo new`` puts in every part a contributor must still write.
PLACEHOLDER = "ZOO-TODO"
#: A paper citation in a docstring: "Radford et al., 2021", "(Mu et al., ECCV 2022)",
#: "(Mu, Kirillov, Wagner, Xie; ECCV 2022)": authors and a year, or "et al." and a year.
_CITATION = re.compile(r"et al\.,?[^.\n]{0,40}?(?:19|20)\d\d|\([A-Z][^()]*(?:19|20)\d\d[^()]*\)")
#: The most specific line of a jsonargparse error (the rest is Union-subtype noise).
_REASON = re.compile(r"is not accepted|not found|Expected a|does not validate|error:", re.I)
_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
#: Where a paper's module and datamodule live (``lightning_modules/<slug>.py``, ...).
_PAPER_PACKAGES = ("lightning_modules", "datamodules")


@dataclass
class Report:
    """The failures of one paper, each a line ``<where>: <what to add>``."""

    slug: str
    failures: list[str] = field(default_factory=list)

    def fail(self, where: str, what: str) -> None:
        self.failures.append(f"{where}: {what}")

    @property
    def ok(self) -> bool:
        return not self.failures


@contextlib.contextmanager
def _on_path(root: Path) -> Iterator[None]:
    """Import ``lightning_modules`` / ``datamodules`` from ``root`` (not another checkout)."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


def _import(name: str, report: Report, where: str):
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import error is a contract failure
        report.fail(where, f"fix the import error ({type(err).__name__}: {err})")
        return None


def _defined_subclasses(module, base: type) -> list[type]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, base)
        and obj is not base
        and obj.__module__ == module.__name__
    ]


def check_module(root: Path, slug: str, arxiv: str | None, report: Report) -> None:
    where = f"lightning_modules/{slug}.py"
    if not (root / where).is_file():
        report.fail(where, "add the paper's ZooModule subclass (python -m zoo new scaffolds it)")
        return
    if PLACEHOLDER in (root / where).read_text(encoding="utf-8"):
        report.fail(where, f"replace every {PLACEHOLDER} placeholder (equations, citation, code)")
    from zoo.module import ZooModule

    module = _import(f"lightning_modules.{slug}", report, where)
    if module is None:
        return
    classes = _defined_subclasses(module, ZooModule)
    if not classes:
        report.fail(where, "define a ZooModule subclass named after the paper")
        return
    docs = " ".join(filter(None, [module.__doc__, *(c.__doc__ for c in classes)]))
    cited = _CITATION.search(docs) or (arxiv and arxiv in docs)
    if not cited:
        report.fail(
            where,
            "cite the paper in the module or class docstring ('Author et al., YEAR' or its "
            "arXiv id) and map each equation to the code",
        )


def check_datamodule(root: Path, slug: str, report: Report) -> None:
    where = f"datamodules/{slug}.py"
    if not (root / where).is_file():
        report.fail(where, "add a ZooDataModule subclass that reads the paper's data format")
        return
    if PLACEHOLDER in (root / where).read_text(encoding="utf-8"):
        report.fail(where, f"replace every {PLACEHOLDER} placeholder")
    from zoo.datamodule import ZooDataModule

    module = _import(f"datamodules.{slug}", report, where)
    if module is not None and not _defined_subclasses(module, ZooDataModule):
        report.fail(where, "define a ZooDataModule subclass (e.g. on ImageTextDataModule)")


def _header(text: str) -> str:
    """The leading comment block of a recipe."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


_PARSER = None  # the zoo command line's parser, built on first use (see build_parser)


def _zoo_parser():
    global _PARSER
    if _PARSER is None:
        from zoo.lightning_cli import build_parser

        _PARSER = build_parser()
    return _PARSER


def parse_recipe(recipe: Path) -> str | None:
    """Parse ``recipe`` as ``zoo fit --config RECIPE --print_config`` does, with the parser
    built once (:func:`_zoo_parser`); ``None`` when it parses, else jsonargparse's message
    (its last line names the bad key)."""
    parser = _zoo_parser()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parser.parse_args(["fit", "--config", str(recipe), "--print_config"])
    except SystemExit as exit_info:
        if exit_info.code in (0, None):
            return None
        lines = [line.strip(" -") for line in err.getvalue().splitlines() if line.strip()]
        reasons = [line for line in lines if _REASON.search(line)]
        specific = [line for line in reasons if "is not accepted" in line or "not found" in line]
        return (specific or reasons or lines or [f"exit status {exit_info.code}"])[0]
    except Exception as error:  # noqa: BLE001 - any failure to parse is reported
        return f"{type(error).__name__}: {error}"
    finally:
        # --print_config leaves its request on the parser when parsing fails before the
        # print: the next recipe parsed with it must not inherit the request
        with contextlib.suppress(AttributeError):
            delattr(parser, "print_config")
    return None


def _class_modules(value: object) -> Iterator[str]:
    """The modules of every ``class_path`` in a loaded recipe."""
    if isinstance(value, dict):
        path = value.get("class_path")
        if isinstance(path, str) and "." in path:
            yield path.rsplit(".", 1)[0]
        for item in value.values():
            yield from _class_modules(item)
    elif isinstance(value, list):
        for item in value:
            yield from _class_modules(item)


def _import_quietly(modules: Iterable[str]) -> None:
    """Import ``modules`` now, ignoring failures (the checks that need them report those)."""
    for name in modules:
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(name)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_recipes(recipes: Sequence[Path], jobs: int = 1) -> dict[Path, str | None]:
    """:func:`parse_recipe` of each recipe, in ``jobs`` forked worker processes.

    The parser is built and the modules the recipes name are imported here, once, before
    forking, so the workers inherit them and only parse (a worker importing torch and
    Lightning itself would cost more than the parse). Without ``fork`` (or with one job or
    one recipe) the recipes are parsed here, one after the other."""
    recipes = list(recipes)
    modules: set[str] = set()
    for recipe in recipes:
        with contextlib.suppress(Exception):
            modules.update(_class_modules(yaml.safe_load(recipe.read_text(encoding="utf-8"))))
    _import_quietly(sorted(modules))
    _zoo_parser()
    jobs = min(jobs, len(recipes))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return {recipe: parse_recipe(recipe) for recipe in recipes}
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return dict(zip(recipes, pool.map(parse_recipe, recipes, chunksize=1)))


def paper_recipes(root: Path, slug: str) -> list[Path]:
    """The recipes of paper ``slug`` (every YAML of its folder but the metafile), sorted."""
    folder = root / "recipes" / slug
    return sorted(p for p in folder.glob("*.yaml") if p.name != "metafile.yaml")


def check_recipes(
    root: Path,
    slug: str,
    report: Report,
    parse: bool = True,
    parsed: Mapping[Path, str | None] | None = None,
) -> None:
    """``parsed``: results of :func:`parse_recipes` already computed (``zoo check --all``);
    recipes not in it are parsed here."""
    from zoo.data.layouts import parse_layout
    from zoo.recipe_index import is_tiny_recipe

    folder = root / "recipes" / slug
    where = f"recipes/{slug}/"
    if not folder.is_dir():
        report.fail(where, "add the paper's recipes folder (tiny.yaml, paper settings, metafile)")
        return
    recipes = paper_recipes(root, slug)
    if not (folder / "tiny.yaml").is_file():
        report.fail(
            where + "tiny.yaml",
            "add a tiny recipe that trains on embedded data on 2 CPU cores in minutes",
        )
    if not any(not is_tiny_recipe(p) for p in recipes):
        report.fail(
            where + "<setting>.yaml",
            "add one recipe per paper setting with the paper's hyperparameters",
        )
    for recipe in recipes:
        rel = f"{where}{recipe.name}"
        text = recipe.read_text(encoding="utf-8")
        if PLACEHOLDER in text:
            report.fail(rel, f"replace every {PLACEHOLDER} placeholder")
        if not is_tiny_recipe(recipe):
            try:
                layout = parse_layout(_header(text))
            except ValueError as err:
                report.fail(rel, f"fix the '# Layout under data.root' header ({err})")
                layout = None
            if layout == []:
                report.fail(
                    rel,
                    "add a '# Layout under data.root' header block, one '#   <path>: <format> "
                    "<columns>' line per file the recipe reads",
                )
        problem = None
        if parse:
            problem = parsed[recipe] if parsed and recipe in parsed else parse_recipe(recipe)
        if problem is not None:
            report.fail(
                rel, f"make it parse with `zoo fit --config {rel} --print_config`: {problem}"
            )


def check_metafile(root: Path, slug: str, report: Report) -> dict | None:
    """Validate the metafile; return it (loaded) when it is readable YAML."""
    from pydantic import ValidationError

    from zoo.ledger import validate_metafile

    folder = root / "recipes" / slug
    where = f"recipes/{slug}/metafile.yaml"
    path = folder / "metafile.yaml"
    if not path.is_file():
        report.fail(where, "add the metafile: paper (title, arxiv, code), reported numbers")
        return None
    text = path.read_text(encoding="utf-8")
    if PLACEHOLDER in text:
        report.fail(where, f"replace every {PLACEHOLDER} placeholder with the paper's facts")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        report.fail(where, f"fix the YAML ({err})")
        return None
    try:
        validate_metafile(data)
    except ValidationError as err:
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            report.fail(where, f"{loc}: {e['msg']} (schema: zoo/ledger.py)")
    for i, entry in enumerate(data.get("reported") or []):
        recipe = str(entry.get("recipe") or "") if isinstance(entry, dict) else ""
        name = recipe.split(maxsplit=1)[0] if recipe else ""  # "x.yaml (overrides)"
        if name and not (folder / name).is_file():
            report.fail(where, f"reported.{i}.recipe names {name}: add recipes/{slug}/{name}")
    return data


def check_readme(root: Path, slug: str, report: Report) -> None:
    from zoo.docs import render_readme
    from zoo.recipe_index import Paper

    folder = root / "recipes" / slug
    readme = folder / "README.md"
    where = f"recipes/{slug}/README.md"
    try:
        expected = render_readme(Paper(slug, folder))
    except Exception as err:  # noqa: BLE001 - a metafile the renderer cannot read
        report.fail(where, f"cannot be generated ({type(err).__name__}: {err})")
        return
    if not readme.is_file():
        report.fail(where, "generate it with `python -m zoo docs`")
    elif readme.read_text(encoding="utf-8") != expected:
        report.fail(where, "stale: regenerate it with `python -m zoo docs`")


def check_tests(root: Path, slug: str, report: Report) -> None:
    where = f"tests/papers/test_{slug}.py"
    path = root / where
    if not path.is_file():
        report.fail(where, "add faithfulness tests of the method's defining properties")
        return
    text = path.read_text(encoding="utf-8")
    if PLACEHOLDER in text:
        report.fail(where, "replace the placeholder test with a faithfulness test of the paper")
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        report.fail(where, f"fix the syntax error ({err})")
        return
    tests = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    ]
    if not tests:
        report.fail(where, "add at least one test_* function asserting a property of the paper")


def check_paper(
    root: Path,
    slug: str,
    parse_recipes: bool = True,
    parsed: Mapping[Path, str | None] | None = None,
) -> Report:
    """Every contract check of one paper (``parse_recipes=False`` skips the CLI parse;
    ``parsed``: the recipes' parse results when already computed)."""
    report = Report(slug)
    if not _SLUG.match(slug):
        report.fail(slug, "a slug is lower-case letters, digits and '_', starting with a letter")
        return report
    with _on_path(root):
        meta = check_metafile(root, slug, report)
        info = (meta or {}).get("paper") if isinstance(meta, dict) else None
        arxiv = str(info.get("arxiv")) if isinstance(info, dict) and info.get("arxiv") else None
        check_module(root, slug, arxiv, report)
        check_datamodule(root, slug, report)
        check_recipes(root, slug, report, parse=parse_recipes, parsed=parsed)
        if meta is not None:
            check_readme(root, slug, report)
        check_tests(root, slug, report)
    return report


def paper_slugs(root: Path) -> list[str]:
    """Every paper of the project: a recipes folder, a module or a datamodule names it."""
    found = {p.name for p in (root / "recipes").glob("*") if p.is_dir()}
    for folder in ("lightning_modules", "datamodules"):
        found |= {p.stem for p in (root / folder).glob("*.py") if not p.stem.startswith("_")}
    return sorted(found)


def check_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo check", description=__doc__.splitlines()[0])
    parser.add_argument("slugs", nargs="*", help="papers to check, e.g. clip slip")
    parser.add_argument("--all", action="store_true", help="check every paper in the project")
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    parser.add_argument(
        "--no-parse", action="store_true", help="skip parsing recipes through the CLI (faster)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="worker processes that parse recipes (default: one per available CPU)",
    )
    args = parser.parse_args(list(argv))
    root = Path(args.root).resolve()
    if not (root / "recipes").is_dir():
        parser.error(f"no recipes/ folder under {root}: run it from the project root or set --root")
    slugs = paper_slugs(root) if args.all else args.slugs
    if not slugs:
        parser.error("name a paper (zoo check SLUG) or use --all")
    parsed: dict[Path, str | None] = {}
    if not args.no_parse:
        valid = [slug for slug in slugs if _SLUG.match(slug)]
        with _on_path(root):
            # the papers' own modules first: every recipe of the paper names them
            _import_quietly(f"{part}.{slug}" for slug in valid for part in _PAPER_PACKAGES)
            recipes = [recipe for slug in valid for recipe in paper_recipes(root, slug)]
            parsed = parse_recipes(recipes, jobs=args.jobs or available_cpus())
    failed = 0
    for slug in slugs:
        report = check_paper(root, slug, parse_recipes=not args.no_parse, parsed=parsed)
        for line in report.failures:
            print(f"FAIL {slug}: {line}")
        if report.ok:
            print(f"ok   {slug}: the paper contract is met")
        failed += not report.ok
    if failed:
        print(f"zoo check: {failed} of {len(slugs)} paper(s) do not meet the contract")
    return 1 if failed else 0
