"""``zoo reproduce RECIPE --seeds N``: fit a recipe N times and record what came out.

Each seed runs ``fit`` in-process through the same LightningCLI as ``zoo fit``; the recipe's
evaluation callbacks (zero-shot, linear probe, ...) report their metrics at the end of fit.
The record has full provenance: the resolved config and its sha256, the git commit (and
whether the tree was dirty), package versions, hardware, date and the command. ``--append``
adds one entry per metric to ``recipes/<paper>/metafile.yaml`` under ``reproduced``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _code_is_dirty() -> bool:
    """Uncommitted changes to tracked files other than the ledger itself (metafiles and
    generated READMEs, which ``--append`` and ``zoo docs`` write)."""
    changed = [
        line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    return any(not (p.endswith("metafile.yaml") or p.endswith(".md")) for p in changed)


def provenance() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("vl-zoo", "torch", "lightning", "timm", "transformers", "torchmetrics"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": _code_is_dirty(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "versions": versions,
        "hardware": f"{platform.machine()} {platform.processor() or ''} {_cpu_count()} CPU cores".replace(
            "  ", " "
        ),
        "python": platform.python_version(),
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_seed(recipe: str, seed: int, overrides: Sequence[str]) -> tuple[dict[str, float], str]:
    """Fit once; return the evaluation callbacks' metrics and the resolved config (YAML)."""
    from zoo.lightning_cli import run_lightning_cli

    args = ["fit", "--config", recipe, "--seed_everything", str(seed), *overrides]
    cli = run_lightning_cli(args)
    metrics: dict[str, float] = {}
    for callback in cli.trainer.callbacks:
        metrics.update(getattr(callback, "results", {}) or {})
    config = cli.parser.dump(cli.config, skip_none=False)
    return metrics, config


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    names = sorted(set().union(*per_seed)) if per_seed else []
    out = {}
    for name in names:
        values = [m[name] for m in per_seed if name in m]
        out[name] = {
            "values": [round(v, 4) for v in values],
            "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        }
    return out


def append_to_metafile(record: dict[str, Any], metafile: Path) -> None:
    text = metafile.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    meta = yaml.safe_load(text) or {}
    entries = meta.setdefault("reproduced", []) or []
    for metric, stats in record["metrics"].items():
        if metric.endswith("_C"):  # the probe's chosen regularisation: a setting, not a result
            continue
        entries.append(
            {
                "recipe": Path(record["recipe"]).name,
                "metric": metric,
                "mean": stats["mean"],
                "std": stats["std"],
                "values": stats["values"],
                "seeds": record["seeds"],
                "scale": record["scale"],
                "command": record["command"],
                "commit": record["commit"],
                "dirty": record["dirty"],
                "date": record["date"],
                "hardware": record["hardware"],
                "zoo_version": record["versions"].get("vl-zoo"),
                "config_sha256": record["config_sha256"],
            }
        )
    meta["reproduced"] = entries
    from zoo.ledger import validate_metafile

    validate_metafile(meta)  # never write an entry the ledger schema would reject
    metafile.write_text(
        header + yaml.safe_dump(meta, sort_keys=False, width=100, allow_unicode=True)
    )


def reproduce_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/slip/tiny.yaml")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument(
        "--seed-list", type=int, nargs="*", help="explicit seeds instead of --seeds"
    )
    parser.add_argument("--scale", default=None, help="what was run, e.g. 'tiny: digits 16px, CPU'")
    parser.add_argument("--out", default=None, help="JSON record path (default runs/reproduce/...)")
    parser.add_argument("--append", action="store_true", help="append the result to the metafile")
    parser.add_argument(
        "--from-record",
        default=None,
        help="append an existing JSON record (written by an earlier `zoo reproduce`) instead of running",
    )
    parser.epilog = "Arguments after `--` are passed to `zoo fit` (e.g. -- --trainer.max_epochs 5)."
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    overrides = argv[split + 1 :]
    recipe = Path(args.recipe)
    if not recipe.is_file():
        parser.error(f"recipe not found: {recipe}")
    from zoo.recipe_index import BUNDLED_RECIPES

    if args.append and recipe.resolve().is_relative_to(BUNDLED_RECIPES.resolve()):
        parser.error(
            "--append writes into the recipe's metafile, and this recipe is the copy installed "
            "with vl-zoo: run `zoo recipes copy PAPER DIR` or use a source checkout"
        )
    if args.from_record:
        record = json.loads(Path(args.from_record).read_text())
        if Path(record["recipe"]).name != recipe.name or record["paper"] != recipe.parent.name:
            parser.error(f"{args.from_record} is a record of {record['recipe']}, not {recipe}")
        append_to_metafile(record, recipe.parent / "metafile.yaml")
        print(f"[zoo reproduce] appended {args.from_record} to {recipe.parent / 'metafile.yaml'}")
        return 0
    seeds = args.seed_list if args.seed_list else list(range(args.seeds))
    paper = recipe.parent.name
    started = provenance()  # before the runs: the code that produced the numbers
    per_seed, configs = [], []
    for seed in seeds:
        print(
            f"[zoo reproduce] {recipe} seed {seed} ({len(per_seed) + 1}/{len(seeds)})", flush=True
        )
        metrics, config = run_seed(str(recipe), seed, overrides)
        per_seed.append(metrics)
        configs.append(config)
    # the seed is the only difference between runs; hash the first run's resolved config
    record = {
        "recipe": recipe.as_posix(),
        "paper": paper,
        "seeds": seeds,
        "metrics": summarise(per_seed),
        "per_seed": per_seed,
        "scale": args.scale or f"recipe {recipe.stem}",
        "command": "python -m zoo reproduce " + shlex.join(argv),
        "config": configs[0],
        "config_sha256": hashlib.sha256(configs[0].encode()).hexdigest(),
        **started,
    }
    out = Path(args.out or f"runs/reproduce/{paper}-{recipe.stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"[zoo reproduce] wrote {out}")
    for name, stats in record["metrics"].items():
        print(f"  {name}: {stats['mean']:.2f} ± {stats['std']:.2f} over seeds {seeds}")
    if args.append:
        metafile = recipe.parent / "metafile.yaml"
        append_to_metafile(record, metafile)
        print(f"[zoo reproduce] appended to {metafile}")
    return 0


if __name__ == "__main__":
    sys.exit(reproduce_command(sys.argv[1:]))
