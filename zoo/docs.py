"""Render ``recipes/<paper>/README.md`` from its ``metafile.yaml`` (the single source of numbers).

``zoo docs`` rewrites the READMEs; a test fails when a committed README is out of date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.recipe_index import Paper, papers
from zoo.recipe_index import recipes_dir as recipes_root

HEADER = "<!-- generated from metafile.yaml by `zoo docs`; do not edit by hand -->\n"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_readme(paper: Paper) -> str:
    meta = paper.metafile
    info = meta.get("paper", {})
    out = [HEADER, f"# {info.get('title', paper.slug)}\n"]
    facts = [
        f"- **{k}:** {info[k]}"
        for k in ("authors", "venue", "arxiv", "code", "code_commit")
        if info.get(k)
    ]
    out.append("\n".join(facts) + "\n")
    recipes = [r.name for r in paper.recipes]
    out.append("## Recipes\n")
    out.append(
        "\n".join(
            f"- [`{r}`]({r}): `python -m zoo fit --config recipes/{paper.slug}/{r}`"
            for r in recipes
        )
        + "\n"
    )
    reported = meta.get("reported") or []
    if reported:
        sources = sorted({r.get("source", "") for r in reported})
        out.append("## Reported results\n")
        out.append("Source: " + "; ".join(sources) + "\n")
        rows = [
            [
                r.get("setting", ""),
                r.get("dataset", ""),
                r.get("metric", ""),
                r.get("value", ""),
                f"`{r.get('recipe', '')}`",
            ]
            for r in reported
        ]
        out.append(_md_table(["setting", "evaluated on", "metric", "value", "recipe"], rows) + "\n")
    reproduced = meta.get("reproduced") or []
    out.append("## Reproduced in this zoo\n")
    if reproduced:
        rows = [
            [
                f"`{r.get('recipe', '')}`",
                r.get("metric", ""),
                f"{r.get('mean', float('nan')):.2f} ± {r.get('std', float('nan')):.2f}",
                ", ".join(str(s) for s in r.get("seeds", [])),
                r.get("scale", ""),
                f"`{str(r.get('commit', ''))[:10]}`",
                r.get("date", ""),
            ]
            for r in reproduced
        ]
        out.append(
            _md_table(["recipe", "metric", "mean ± std", "seeds", "scale", "commit", "date"], rows)
            + "\n"
        )
        commands = sorted({r.get("command", "") for r in reproduced if r.get("command")})
        if commands:
            out.append("Commands:\n\n" + "\n".join(f"    {c}" for c in commands) + "\n")
    else:
        out.append("Nothing reproduced yet.\n")
    notes = meta.get("notes") or []
    if notes:
        out.append("## Notes\n")
        out.append("\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(out)


def readme_path(paper: Paper) -> Path:
    return paper.folder / "README.md"


def write_readmes() -> list[Path]:
    """Regenerate every paper README and the papers table of the root README."""
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


def _reproduced_summary(entries: list[dict[str, Any]]) -> str:
    """The newest top-1 result per (recipe, metric) of plain recipe runs; runs with
    command-line overrides (controls, ablations) and older records are listed in the paper's
    own README only."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:  # appended in time order: a later record replaces an earlier one
        metric = str(e.get("metric", "")).removeprefix("eval/")
        if not metric.endswith("top1") or " -- " in str(e.get("command", "")):
            continue
        latest[(str(e.get("recipe", "")), metric)] = e
    parts = [
        f"{metric} {e.get('mean', 0):.1f} ± {e.get('std', 0):.1f} "
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
                str(len(meta.get("reported") or [])),
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
