"""Render each paper's pages from its ``metafile.yaml`` (the single source of numbers).

- ``recipes/<paper>/README.md`` and the papers table of the root README: written by
  ``zoo docs``; a test fails when a committed one is out of date.
- ``papers/<paper>.md`` of the documentation site: rendered in memory at ``mkdocs build``
  time (``docs/hooks/papers.py`` calls :func:`paper_pages`), from the metafile, the recipes'
  header comments and the paper module's docstring, so nothing generated is committed.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from zoo.recipe_index import Paper, papers
from zoo.recipe_index import recipes_dir as recipes_root

HEADER = "<!-- generated from metafile.yaml by `zoo docs`; do not edit by hand -->\n"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _facts(info: dict[str, Any]) -> str:
    return "\n".join(
        f"- **{k}:** {info[k]}"
        for k in ("authors", "venue", "arxiv", "code", "code_commit")
        if info.get(k)
    )


def render_readme(paper: Paper) -> str:
    meta = paper.metafile
    info = meta.get("paper", {})
    out = [HEADER, f"# {info.get('title', paper.slug)}\n"]
    out.append(_facts(info) + "\n")
    recipes = [r.name for r in paper.recipes]
    out.append("## Recipes\n")
    out.append(
        "\n".join(
            f"- [`{r}`]({r}): `python -m zoo fit --config recipes/{paper.slug}/{r}`"
            for r in recipes
        )
        + "\n"
    )
    out += _results_sections(meta)
    return "\n".join(out)


def recipe_setting(entry: dict[str, Any]) -> str:
    """A reproduced entry's recipe, with the ``zoo fit`` overrides it was run with."""
    overrides = " ".join(entry.get("overrides") or [])
    return f"`{entry.get('recipe', '')}`" + (f" `{overrides}`" if overrides else "")


def _results_sections(meta: dict[str, Any]) -> list[str]:
    """Reported results, reproduced results and notes: shared by the README and the site."""
    out: list[str] = []
    reported = meta.get("reported") or []
    numbers = [r for r in reported if r.get("claim") is None]
    claims = [r for r in reported if r.get("claim") is not None]
    if reported or meta.get("reported_unavailable"):
        out.append("## Reported results\n")
    if numbers:
        sources = sorted({r.get("source", "") for r in numbers})
        out.append("Source: " + "; ".join(sources) + "\n")
        rows = [
            [
                r.get("setting", ""),
                r.get("dataset", ""),
                r.get("metric", ""),
                r.get("value", ""),
                f"`{r.get('recipe', '')}`",
            ]
            for r in numbers
        ]
        out.append(_md_table(["setting", "evaluated on", "metric", "value", "recipe"], rows) + "\n")
    if claims:
        # a qualitative result: what the tiny reproduction is read against
        out.append("Claims the paper makes without a checkable number:\n")
        out.extend(
            f"- {r['claim']} ({r.get('metric', '')} on {r.get('dataset', '')}; recipe "
            f"`{r.get('recipe', '')}`; source: {r.get('source', '')})"
            for r in claims
        )
        out.append("")
    if meta.get("reported_unavailable") and not numbers:
        out.append(f"No number listed: {meta['reported_unavailable']}\n")
    reproduced = meta.get("reproduced") or []
    out.append("## Reproduced in this zoo\n")
    if reproduced:
        # a few-shot sweep's entries carry their shot count: a column only where there are any
        swept = any(r.get("shots") is not None for r in reproduced)
        rows = [
            [
                recipe_setting(r),
                *([r.get("shots", "")] if swept else []),
                r.get("metric", ""),
                f"{r.get('mean', float('nan')):.2f} ± {r.get('std', float('nan')):.2f}",
                ", ".join(str(s) for s in r.get("seeds", [])),
                r.get("scale", ""),
                f"`{str(r.get('commit', ''))[:10]}`",
                r.get("date", ""),
            ]
            for r in reproduced
        ]
        header = ["recipe", *(["shots"] if swept else []), "metric", "mean ± std", "seeds"]
        out.append(_md_table([*header, "scale", "commit", "date"], rows) + "\n")
        commands = sorted({r.get("command", "") for r in reproduced if r.get("command")})
        if commands:
            out.append("Commands:\n\n" + "\n".join(f"    {c}" for c in commands) + "\n")
    else:
        out.append("Nothing reproduced yet.\n")
    comparison = fewshot_comparison(meta)
    if comparison:
        out.append(comparison)
    if meta.get("reading"):
        out.append("## What the reproduction shows\n")
        out.append(str(meta["reading"]).strip() + "\n")
    notes = meta.get("notes") or []
    if notes:
        out.append("## Notes\n")
        out.append("\n".join(f"- {n}" for n in notes) + "\n")
    return out


#: The few-shot family: every paper whose shot sweep enters the shared comparison table, and
#: the baselines' (zero-shot CLIP, linear probe) recipe.
FEWSHOT_PAPERS = ("coop", "cocoop", "clip_adapter", "tip_adapter", "sgva_clip")
_FEWSHOT_COLUMNS = (
    ("zero-shot CLIP", "coop", "tiny_zeroshot.yaml", "eval/zeroshot_top1"),
    ("linear probe", "coop", "tiny_zeroshot.yaml", "eval/linear_probe_top1"),
    ("CoOp", "coop", "tiny.yaml", "eval/fewshot_top1"),
    ("CoCoOp", "cocoop", "tiny.yaml", "eval/fewshot_top1"),
    ("CLIP-Adapter", "clip_adapter", "tiny.yaml", "eval/fewshot_top1"),
    ("Tip-Adapter", "tip_adapter", "tiny.yaml", "eval/fewshot_top1"),
    ("Tip-Adapter-F", "tip_adapter", "tiny_f.yaml", "eval/fewshot_top1"),
    ("SgVA-CLIP", "sgva_clip", "tiny.yaml", "eval/fewshot_top1"),
)


def fewshot_comparison(meta: dict[str, Any]) -> str | None:
    """For a few-shot paper with a shot sweep: one table of every method of the family on the
    same protocol (mean ± std of test top-1 over seeds, per shot count), read from all the
    family's metafiles (the newest sweep of each recipe), so each README shows the others."""
    entries = meta.get("reproduced") or []
    if not any(e.get("shots") is not None for e in entries):
        return None
    from zoo.recipe_index import get_paper

    latest: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for slug in sorted({c[1] for c in _FEWSHOT_COLUMNS}):
        try:
            found = get_paper(slug).metafile.get("reproduced") or []
        except (KeyError, FileNotFoundError):
            continue
        for e in found:
            if e.get("shots") is not None:
                latest[(slug, e["recipe"], e["metric"], int(e["shots"]))] = e  # newest wins
    shots = sorted({k[3] for k in latest})
    columns = [c for c in _FEWSHOT_COLUMNS if any(k[:3] == c[1:] for k in latest)]
    if not shots or not columns:
        return None
    rows = []
    for k in shots:
        row: list[Any] = [k]
        for _, slug, recipe, metric in columns:
            e = latest.get((slug, recipe, metric, k))
            row.append(f"{e['mean']:.1f} ± {e['std']:.1f}" if e else "")
        rows.append(row)
    scales = sorted({latest[k]["scale"] for k in latest})
    text = "## The few-shot family on one protocol\n\n"
    text += (
        "Test top-1 (%), mean ± std over the seeds of each sweep, the same splits and shots "
        "for every column (" + "; ".join(scales) + "). Generated from the `reproduced` "
        "entries of the five few-shot metafiles.\n\n"
    )
    return text + _md_table(["shots", *[c[0] for c in columns]], rows) + "\n"


def readme_path(paper: Paper) -> Path:
    return paper.folder / "README.md"


def write_readmes() -> list[Path]:
    """Regenerate every paper README and the papers table of the root README (never the
    recipes installed with vl-zoo: those are regenerated in a source checkout)."""
    from zoo.recipe_index import BUNDLED_RECIPES

    if recipes_root().resolve() == BUNDLED_RECIPES.resolve():
        raise RuntimeError(
            "zoo docs rewrites READMEs in the recipes folder; this one is installed with "
            "vl-zoo: run it in a source checkout"
        )
    written = []
    for paper in papers():
        path = readme_path(paper)
        text = render_readme(paper)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    root_readme = recipes_root().parent / "README.md"
    if root_readme.is_file() and update_root_readme(root_readme):
        written.append(root_readme)
    return written


TABLE_START, TABLE_END = "<!-- papers-table:start -->", "<!-- papers-table:end -->"


#: Metric name endings shown in the root README's papers table.
HEADLINE_METRICS = ("top1", "miou")


def _reproduced_summary(entries: list[dict[str, Any]]) -> str:
    """The newest headline result (top-1 accuracy, mIoU) per (recipe, metric) of plain recipe
    runs; runs with command-line overrides (controls, ablations) and older records are listed
    in the paper's own README only. Of a few-shot sweep, the largest shot count is shown (``16-shot``)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:  # appended in time order: a later record replaces an earlier one
        metric = str(e.get("metric", "")).removeprefix("eval/")
        if not metric.endswith(HEADLINE_METRICS) or " -- " in str(e.get("command", "")):
            continue
        key = (str(e.get("recipe", "")), metric)
        shots, kept = e.get("shots"), latest.get(key)
        if shots is not None and kept is not None and kept.get("shots") is not None:
            same_run = kept.get("command") == e.get("command") and kept.get("date") == e.get("date")
            if same_run and shots < kept["shots"]:
                continue  # the same sweep: keep its largest shot count
        latest[key] = e
    parts = [
        f"{metric}{f' {s}-shot' if (s := e.get('shots')) is not None else ''} "
        f"{e.get('mean', 0):.1f} ± {e.get('std', 0):.1f} "
        f"({recipe}, {len(e.get('seeds', []))} seeds, `{str(e.get('commit', ''))[:7]}`)"
        for (recipe, metric), e in latest.items()
    ]
    return "; ".join(parts) or "–"


def render_papers_table() -> str:
    rows = []
    for paper in papers():
        meta = paper.metafile
        rows.append(
            [
                f"[{paper.slug}](recipes/{paper.slug}/README.md)",
                str(meta.get("paper", {}).get("arxiv", "")),
                str(len(paper.recipes)),
                str(sum(r.get("claim") is None for r in meta.get("reported") or [])),
                _reproduced_summary(meta.get("reproduced") or []),
            ]
        )
    return _md_table(
        ["paper", "arXiv", "recipes", "reported numbers", "reproduced here (mean ± std)"], rows
    )


def update_root_readme(readme: Path) -> bool:
    """Replace the papers table between the markers; return True when the file changed."""
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{readme} has no {TABLE_START} … {TABLE_END} markers")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_START}\n{render_papers_table()}\n{TABLE_END}{tail}"
    if new != text:
        readme.write_text(new)
        return True
    return False


# --- documentation site: one page per paper -------------------------------------------------

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`")


def docstring_to_markdown(text: str) -> str:
    """A module docstring as Markdown: Sphinx roles (``:class:`~a.B```) become code spans;
    reStructuredText double backticks are already valid Markdown code spans."""
    return _ROLE.sub(lambda m: f"`{m.group(1)}`", text)


def module_docstring(module: str) -> str:
    """The docstring of ``module``, read from its source without importing it (the site
    builds without torch), or ``""`` when the module cannot be found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""


def recipe_header(path: Path) -> str:
    """The leading ``#`` comment block of a recipe: its provenance and data layout."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)


def paper_classes(paper: Paper) -> tuple[str | None, str | None]:
    """``(model class_path, data class_path)`` of a paper, read from ``tiny.yaml`` (or its
    first recipe): recipes name the paper's classes, so nothing is listed twice."""
    recipes = sorted(paper.recipes, key=lambda p: p.name != "tiny.yaml")
    for recipe in recipes:
        config = yaml.safe_load(recipe.read_text()) or {}
        model, data = config.get("model"), config.get("data")
        model_cls = model.get("class_path") if isinstance(model, dict) else None
        data_cls = data.get("class_path") if isinstance(data, dict) else None
        if model_cls or data_cls:
            return model_cls, data_cls
    return None, None


def render_paper_page(paper: Paper) -> str:
    """The site page of a paper: facts, the method (its module docstring), recipes with their
    header comments, reported and reproduced numbers, and the API of its classes."""
    meta = paper.metafile
    info = meta.get("paper", {})
    model_cls, data_cls = paper_classes(paper)
    out = [f"# {info.get('title', paper.slug)}\n", _facts(info) + "\n"]
    if model_cls:
        doc = module_docstring(model_cls.rsplit(".", 1)[0])
        if doc:
            out.append(f"## Method (`{model_cls}`)\n")
            out.append(docstring_to_markdown(doc) + "\n")
    out.append("## Recipes\n")
    for recipe in paper.recipes:
        out.append(f"### `{recipe.name}`\n")
        out.append(f"```bash\npython -m zoo fit --config recipes/{paper.slug}/{recipe.name}\n```\n")
        header = recipe_header(recipe)
        if header:
            out.append("```text\n" + header + "\n```\n")
    out += _results_sections(meta)
    api = [c for c in (model_cls, data_cls) if c]
    if api:
        out.append("## API\n")
        out += [f"::: {c}\n" for c in api]
    return "\n".join(out)


def render_papers_index() -> str:
    """The site's papers overview: the root README's table with links to the site pages."""
    table = render_papers_table().replace("](recipes/", "](").replace("/README.md)", ".md)")
    return (
        "# Papers\n\n"
        "Every page below is generated at build time from `recipes/<paper>/metafile.yaml`, "
        "the recipes' header comments and the paper module's docstring.\n\n" + table + "\n"
    )


def paper_pages() -> dict[str, str]:
    """Site pages keyed by their path under ``docs/``: ``papers/index.md`` and one
    ``papers/<slug>.md`` per paper."""
    pages = {"papers/index.md": render_papers_index()}
    for paper in papers():
        pages[f"papers/{paper.slug}.md"] = render_paper_page(paper)
    return pages
