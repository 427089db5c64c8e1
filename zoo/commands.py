"""``zoo list``, ``zoo info``, ``zoo recipes`` and ``zoo export``.

``list``, ``info`` and ``recipes`` read the recipe folders, metafiles and installed model
packages without importing torch; ``export`` imports the model code when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.recipe_index import (
    copy_recipes,
    find_recipe,
    get_paper,
    papers,
    recipe_names,
    recipes_dir,
    resolve_recipe,
)


def list_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo list", description="List papers and recipes.")
    parser.add_argument(
        "--models", action="store_true", help="list installed model packages instead"
    )
    args = parser.parse_args(argv)
    if args.models:
        return list_models_command()
    for paper in papers():
        print(f"{paper.slug:<14} {paper.title}")
        for recipe in paper.recipes:
            print(f"  {_relative(recipe)}")
    return 0


def _relative(path: Path) -> str:
    """A recipe as ``--config`` takes it: relative to the working directory when it is under
    it (``recipes/slip/tiny.yaml`` in a checkout), else its name (``slip/tiny.yaml``), which
    resolves to the bundled recipe of an installed wheel."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return f"{path.parent.name}/{path.name}"


def _fmt_row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def _table(rows: list[list[object]], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return [_fmt_row(header, widths), _fmt_row(["-" * w for w in widths], widths)] + [
        _fmt_row(r, widths) for r in rows
    ]


def info_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo info", description="Show a paper's numbers.")
    parser.add_argument(
        "paper", help="paper slug, e.g. slip, or one of its recipes, slip/tiny (see `zoo list`)"
    )
    args = parser.parse_args(argv)
    slug = args.paper
    if "/" in slug or slug.endswith(".yaml"):  # a recipe: show its paper
        try:
            slug = resolve_recipe(slug).resolve().parent.name
        except FileNotFoundError as err:
            parser.error(str(err))
    try:
        paper = get_paper(slug)
    except KeyError as err:
        parser.error(str(err.args[0]))
    meta = paper.metafile
    info = meta.get("paper", {})
    print(f"{info.get('title', paper.slug)}")
    for key in ("venue", "arxiv", "code"):
        if info.get(key):
            print(f"  {key}: {info[key]}")
    reported = [r for r in meta.get("reported") or [] if r.get("claim") is None]
    claims = [r for r in meta.get("reported") or [] if r.get("claim") is not None]
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
    for claim in claims:
        print(f"\nClaimed ({claim.get('source', '')}): {claim['claim']}")
    if meta.get("reported_unavailable") and not reported:
        print(f"\nReported: no number listed. {meta['reported_unavailable']}")
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


def recipes_command(argv: Sequence[str]) -> int:
    """``zoo recipes list | show RECIPE | copy (NAME... | --all) DIR [--force]``."""
    parser = argparse.ArgumentParser(
        prog="zoo recipes",
        description="The recipes bundled with vl-zoo (found in "
        "$VL_ZOO_RECIPES, the installed package or the source tree).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every recipe name (what --config accepts) and the folder")
    show = sub.add_parser("show", help="print a known recipe's YAML")
    show.add_argument("recipe", help="e.g. slip/tiny")
    copy = sub.add_parser(
        "copy",
        help="write an editable copy of papers (slip: recipes, metafile, README) or recipes",
        description="Write an editable copy: `zoo recipes copy slip ./my-recipes` writes "
        "./my-recipes/slip/; then `zoo fit --config my-recipes/slip/tiny.yaml`.",
    )
    copy.add_argument("names", nargs="*", help="papers (slip) or recipes (slip/tiny)")
    copy.add_argument("dest", help="destination folder; <paper>/ folders are made inside it")
    copy.add_argument("--all", action="store_true", help="copy every paper")
    copy.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if args.action == "list":
        print(f"# recipes folder: {recipes_dir()}")
        print("\n".join(recipe_names()))
        return 0
    if args.action == "show":
        try:
            print(find_recipe(args.recipe).read_text(), end="")
        except FileNotFoundError as err:
            show.error(str(err))
        return 0
    if args.all == bool(args.names):
        copy.error("name papers or recipes to copy, or give --all (not both)")
    names = [p.slug for p in papers()] if args.all else args.names
    try:
        written = copy_recipes(names, Path(args.dest), force=args.force)
    except (KeyError, FileNotFoundError, FileExistsError) as err:
        copy.error(str(err.args[0]) if isinstance(err, KeyError) else str(err))
    for path in written:
        print(f"wrote {path}")
    return 0


def list_models_command() -> int:
    """Print installed model packages: name, paper and model folder."""
    from zoo.hub.config import read_config
    from zoo.hub.registry import installed_model_dir, list_models

    names = list_models()
    if not names:
        print("no zoo model packages installed (pip install a folder written by `zoo export`)")
    for name in names:
        try:
            folder = installed_model_dir(name)
            paper = read_config(folder).get("paper", "?")
        except (OSError, ValueError, LookupError) as err:
            print(f"{name:<24} (broken: {err})")
            continue
        print(f"{name:<24} {paper:<10} {folder}")
    return 0


def _metrics_arg(value: str | None) -> dict[str, Any] | None:
    """``--metrics``: inline JSON or a path to a JSON file."""
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    metrics = json.loads(text)
    if not isinstance(metrics, dict):
        raise ValueError("--metrics must be a JSON object: {name: value or {value, dataset}}")
    return metrics


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo export",
        description="Write a self-describing model folder (config.json, model.safetensors, "
        "sha256, model card) inside a pip-installable package source tree DIR.",
    )
    parser.add_argument("source", help="a zoo fit .ckpt, a HF CLIP folder or an OpenAI state dict")
    parser.add_argument("--name", required=True, help="model name, e.g. slip-vit-tiny-digits")
    parser.add_argument("--out", required=True, help="output folder (package source tree)")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "lightning", "hf-clip", "openai"]
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--recipe", help="recipe YAML (default: the config.yaml next to a ckpt)")
    parser.add_argument(
        "--metrics", help='JSON or JSON file: {"zeroshot_top1": {"value": 61.3, "dataset": "..."}}'
    )
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow unpickling (your own .ckpt)"
    )
    parser.add_argument("--wheel", action="store_true", help="also build a wheel (pip wheel)")
    parser.add_argument("--wheel-dir", help="where the wheel goes (default: OUT/dist)")
    parser.add_argument("--package-version", default="1.0.0", help="version of the model package")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--class-path", help="module class for a .ckpt without _class_path")
    parser.add_argument("--gelu", action="store_true", help="openai: GELU, not QuickGELU")
    parser.add_argument("--vision-heads", type=int, help="openai: vision attention heads")
    parser.add_argument("--text-heads", type=int, help="openai: text attention heads")
    parser.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA-tuned .ckpt (ViSFT stage 2): write the adapter alone; load it with "
        "zoo.load(NAME, base=BASE)",
    )
    return parser


def export_command(argv: Sequence[str]) -> int:
    """``zoo export SOURCE --name NAME --out DIR [...]`` (see :mod:`zoo.hub.export`)."""
    parser = export_parser()
    args = parser.parse_args(argv)
    from zoo.hub.export import export_model

    try:
        result = export_model(
            args.source,
            args.name,
            args.out,
            fmt=args.format,
            dtype=args.dtype,
            recipe=args.recipe,
            metrics=_metrics_arg(args.metrics),
            trust_pickle=args.trust_pickle,
            wheel=args.wheel,
            wheel_dir=args.wheel_dir,
            version=args.package_version,
            overwrite=args.overwrite,
            class_path=args.class_path,
            quick_gelu=not args.gelu,
            vision_heads=args.vision_heads,
            text_heads=args.text_heads,
            adapter_only=args.adapter_only,
        )
    except (OSError, ValueError, RuntimeError) as err:
        parser.error(str(err))
    weights = result.model_dir / result.config["weights"]["file"]
    print(f"exported {args.name} → {result.model_dir}")
    print(
        f"  weights {weights.stat().st_size / 1e6:.2f} MB, sha256 {result.config['weights']['sha256']}"
    )
    base = ", base=BASE" if args.adapter_only else ""
    print(f"  load:    zoo.load('local-dir:{result.root}'{base})")
    print(f"  install: pip install --no-build-isolation {result.root}")
    if result.wheel:
        print(f"  wheel:   {result.wheel}")
    return 0
