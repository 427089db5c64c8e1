"""``zoo list``, ``zoo info`` and ``zoo export``.

``list`` and ``info`` read the recipe folders, metafiles and installed model packages without
importing torch; ``export`` imports the model code when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.recipe_index import get_paper, papers


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
        )
    except (OSError, ValueError, RuntimeError) as err:
        parser.error(str(err))
    weights = result.model_dir / result.config["weights"]["file"]
    print(f"exported {args.name} → {result.model_dir}")
    print(
        f"  weights {weights.stat().st_size / 1e6:.2f} MB, sha256 {result.config['weights']['sha256']}"
    )
    print(f"  load:    zoo.load('local-dir:{result.root}')")
    print(f"  install: pip install --no-build-isolation {result.root}")
    if result.wheel:
        print(f"  wheel:   {result.wheel}")
    return 0
