"""``zoo list`` and ``zoo info``: read the recipe folders and metafiles (no torch import)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from zoo.registry import get_paper, papers


def list_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo list", description="List papers and recipes.")
    parser.parse_args(argv)
    for paper in papers():
        print(f"{paper.slug:<14} {paper.title}")
        for recipe in paper.recipes:
            print(f"  {_relative(recipe)}")
    return 0


def _relative(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def _fmt_row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def _table(rows: list[list[object]], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return [_fmt_row(header, widths), _fmt_row(["-" * w for w in widths], widths)] + [
        _fmt_row(r, widths) for r in rows
    ]


def info_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo info", description="Show a paper's numbers.")
    parser.add_argument("paper", help="paper slug, e.g. slip (see `zoo list`)")
    args = parser.parse_args(argv)
    try:
        paper = get_paper(args.paper)
    except KeyError as err:
        parser.error(str(err.args[0]))
    meta = paper.metafile
    info = meta.get("paper", {})
    print(f"{info.get('title', paper.slug)}")
    for key in ("venue", "arxiv", "code"):
        if info.get(key):
            print(f"  {key}: {info[key]}")
    reported = meta.get("reported") or []
    if reported:
        print(f"\nReported ({reported[0].get('source', 'see metafile')}):")
        header = ["dataset", "setting", "metric", "value", "recipe"]
        rows = [
            [
                r.get("dataset", ""),
                r.get("setting", ""),
                r.get("metric", ""),
                r.get("value", ""),
                r.get("recipe", ""),
            ]
            for r in reported
        ]
        print("\n".join("  " + line for line in _table(rows, header)))
    reproduced = meta.get("reproduced") or []
    if reproduced:
        print("\nReproduced in this zoo:")
        header = ["recipe", "metric", "mean", "std", "seeds", "scale", "commit"]
        rows = [
            [
                r.get("recipe", ""),
                r.get("metric", ""),
                r.get("mean", ""),
                r.get("std", ""),
                len(r.get("values", [])),
                r.get("scale", ""),
                str(r.get("commit", ""))[:10],
            ]
            for r in reproduced
        ]
        print("\n".join("  " + line for line in _table(rows, header)))
    return 0
