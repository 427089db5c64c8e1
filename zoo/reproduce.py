"""``zoo reproduce RECIPE --seeds N``: fit a recipe N times and record what came out.

Each seed runs ``fit`` in-process through the same LightningCLI as ``zoo fit``; the recipe's
evaluation callbacks (zero-shot, linear probe, ...) report their metrics at the end of fit.
The record has full provenance: the resolved config and its sha256, the git commit (and
whether the tree was dirty), package versions, hardware, date and the command. ``--append``
adds one entry per metric to ``recipes/<paper>/metafile.yaml`` under ``reproduced``.

A recipe may declare in its header recipes to fit first, with the same seed: each line
``# after: KEY = RECIPE`` fits RECIPE, then passes its last checkpoint as the config value
KEY (ViSFT: the base model, then the three stage-1 head recipes on it, then stage 2 with
``model.init_args.heads_from`` set to their checkpoints). Prerequisites may have their own;
each recipe is fitted once per seed. Their metrics are recorded too, named
``<recipe stem>:<metric>``. ``--reuse-prerequisites`` keeps fitted prerequisites under
``runs/reproduce/prerequisites/`` and reuses one fitted from the same recipe, seed, inputs and
code (an ablation that differs only in its last stage does not refit the shared stages).

The few-shot protocol sweeps shots × seeds (:func:`sweep`): ``--shots 1 2 4 8 16`` runs the
recipe once per shot count K and seed s with ``--data.init_args.shots K``,
``--data.init_args.fewshot_seed s`` and ``--seed_everything s`` (seeds ``--seed-list``, by
default 1…``--seeds``, the protocol's numbering). Settings that depend on K go in
``--per-shot K[,K...]:KEY=VALUE`` (e.g. CoOp's epochs: ``--per-shot 1:trainer.max_epochs=50
2,4:trainer.max_epochs=100 8,16:trainer.max_epochs=200``), applied after the overrides
given after ``--``. It writes a table of mean ± std per shot count and metric: on stdout,
as a CSV next to the JSON record (one row per (K, seed), then a ``mean`` and a ``std`` row
per K) and, with ``--append``, one metafile entry per (K, metric) with ``shots: K``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
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


#: A recipe header line naming a recipe to fit first and the config key that receives its
#: checkpoint: ``# after: model.init_args.heads_from.detection = recipes/visft/tiny_stage1_detection.yaml``
AFTER_PREFIX = "# after:"


def prerequisites(recipe: str | Path) -> list[tuple[str, Path]]:
    """The ``# after: KEY = RECIPE`` lines of a recipe's header: recipes that must be fitted
    first (same seed), each of whose last checkpoint becomes the config value ``KEY`` (a
    two-stage protocol such as ViSFT's stage-1 heads → stage-2 LoRA)."""
    out = []
    for line in Path(recipe).read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(AFTER_PREFIX):
            key, sep, path = line[len(AFTER_PREFIX) :].partition("=")
            if not sep or not key.strip() or not path.strip():
                raise ValueError(f"{recipe}: expected '{AFTER_PREFIX} KEY = RECIPE', got {line!r}")
            out.append((key.strip(), _recipe_path(Path(path.strip()), Path(recipe))))
    return out


def _recipe_path(path: Path, named_by: Path) -> Path:
    """A recipe named in an ``# after:`` line: as given when it exists from the working
    folder (or is absolute), else relative to the checkout that holds ``named_by``
    (``recipes/<paper>/<file>``: two folders up)."""
    if path.is_absolute() or path.exists():
        return path
    root = named_by.resolve().parents[2]
    return root / path if (root / path).exists() else path


def _nested_overrides(values: dict[str, str]) -> list[str]:
    """``{"model.init_args.heads_from.detection": p, ...}`` → one ``--model.init_args.heads_from``
    JSON mapping per parent key (a dict-valued argument is given whole)."""
    grouped: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        parent, _, leaf = key.rpartition(".")
        grouped.setdefault(parent, {})[leaf] = value
    return [f"--{parent}={json.dumps(leaves)}" for parent, leaves in grouped.items()]


#: Where ``--reuse-prerequisites`` keeps fitted prerequisites (relative to the working folder).
PREREQUISITE_CACHE = Path("runs/reproduce/prerequisites")
#: Where each prerequisite fit keeps its own final checkpoint (one fresh folder per fit).
PREREQUISITE_FITS = Path("runs/reproduce/prerequisite-fits")


def _file_sha256(path: str | Path) -> str:
    from zoo.hub.security import sha256_file

    return sha256_file(Path(path))


def _code_identity() -> str:
    """The commit, plus the sha256 of the uncommitted diff when the tree is dirty: a
    prerequisite fitted by other code is never reused."""
    commit = _git("rev-parse", "HEAD")
    if _code_is_dirty():
        commit += "+" + hashlib.sha256(_git("diff", "HEAD").encode()).hexdigest()[:16]
    return commit


class PrerequisiteChain:
    """Fits a recipe's ``# after:`` prerequisites depth first, each once per seed (a recipe
    named by two later ones, such as a shared base model, is fitted once). With ``reuse``,
    a prerequisite is taken from :data:`PREREQUISITE_CACHE` when one was fitted from the same
    recipe text, seed, inputs (the sha256 of each checkpoint passed to it) and code; a new
    fit is copied there. ``extra``: arguments added to every prerequisite's fit (tests:
    ``--trainer.max_steps 2``)."""

    def __init__(self, seed: int, reuse: bool = False, extra: Sequence[str] = ()):
        self.seed = seed
        self.reuse = reuse
        self.extra = list(extra)
        self.fitted: dict[Path, str] = {}
        self.metrics: dict[str, float] = {}

    def overrides(self, recipe: str | Path, stack: tuple[Path, ...] = ()) -> list[str]:
        """The ``--KEY=checkpoint`` arguments of ``recipe``'s prerequisites (fitting them)."""
        chained: dict[str, str] = {}
        for key, before in prerequisites(recipe):
            where = before.resolve()
            if where in stack or where == Path(recipe).resolve():
                raise ValueError(f"{recipe}: '# after:' lines form a cycle through {before}")
            if where not in self.fitted:
                self.fitted[where] = self._fit(before, (*stack, Path(recipe).resolve()))
            chained[key] = self.fitted[where]
        return _nested_overrides(chained)

    def _fit(self, recipe: Path, stack: tuple[Path, ...]) -> str:
        from zoo.lightning_cli import run_lightning_cli

        inputs = self.overrides(recipe, stack)
        key = None
        if self.reuse:
            key = self._cache_key(recipe, inputs)
            cached = PREREQUISITE_CACHE / f"{recipe.stem}-seed{self.seed}-{key[:16]}"
            if (cached / "last.ckpt").is_file() and (cached / "metrics.json").is_file():
                print(
                    f"[zoo reproduce] reusing {recipe} seed {self.seed} from {cached}", flush=True
                )
                self._record(recipe, json.loads((cached / "metrics.json").read_text()))
                return str(cached / "last.ckpt")
        print(f"[zoo reproduce] fitting {recipe} first (seed {self.seed})", flush=True)
        args = ["fit", "--config", str(recipe), "--seed_everything", str(self.seed)]
        cli = run_lightning_cli([*args, *inputs, *self.extra])
        results: dict[str, float] = {}
        for callback in cli.trainer.callbacks:
            results.update(getattr(callback, "results", {}) or {})
        self._record(recipe, results)
        # This fit's own copy of its final weights, in a folder no other run writes: the
        # recipe's checkpoint folder is shared by every run of it from this working folder,
        # so seeds fitted in parallel processes would overwrite each other's last.ckpt
        # between the save and its use (a NaN loss raises before this point).
        PREREQUISITE_FITS.mkdir(parents=True, exist_ok=True)
        own = Path(
            tempfile.mkdtemp(prefix=f"{recipe.stem}-seed{self.seed}-", dir=PREREQUISITE_FITS)
        )
        path = str((own / "last.ckpt").resolve())  # the working folder may change before use
        cli.trainer.save_checkpoint(path)
        if key is None:
            return path
        import shutil

        cached = PREREQUISITE_CACHE / f"{recipe.stem}-seed{self.seed}-{key[:16]}"
        cached.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached / "last.ckpt")
        (cached / "metrics.json").write_text(json.dumps(results, indent=1))
        return str(cached / "last.ckpt")

    def _record(self, recipe: Path, results: dict[str, float]) -> None:
        for name, value in results.items():
            self.metrics[f"{recipe.stem}:{name}"] = value

    def _cache_key(self, recipe: Path, inputs: list[str]) -> str:
        chained = {}
        for arg in inputs:  # --KEY={"leaf": checkpoint path, ...}
            name, _, value = arg.partition("=")
            chained[name] = {k: _file_sha256(v) for k, v in sorted(json.loads(value).items())}
        identity = {
            "recipe": hashlib.sha256(recipe.read_bytes()).hexdigest(),
            "seed": self.seed,
            "inputs": chained,
            "code": _code_identity(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_seed(
    recipe: str, seed: int, overrides: Sequence[str], reuse_prerequisites: bool = False
) -> tuple[dict[str, float], str]:
    """Fit once (after the recipe's ``# after:`` prerequisites, with the same seed: see
    :class:`PrerequisiteChain`); return the evaluation callbacks' metrics (a prerequisite's as
    ``<its recipe stem>:<metric>``) and the resolved config (YAML)."""
    from zoo.lightning_cli import run_lightning_cli

    chain = PrerequisiteChain(seed, reuse_prerequisites)
    chained = chain.overrides(recipe)
    args = ["fit", "--config", recipe, "--seed_everything", str(seed)]
    cli = run_lightning_cli([*args, *chained, *overrides])
    metrics = dict(chain.metrics)
    for callback in cli.trainer.callbacks:
        metrics.update(getattr(callback, "results", {}) or {})
    config = cli.parser.dump(cli.config, skip_none=False)
    return metrics, config


#: Record fields that must agree for records to be merged (the seed is the only difference).
_MERGE_SAME = ("recipe", "paper", "commit", "dirty", "scale", "versions", "overrides")


def merge_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record from several single-run records of the same recipe, code and settings
    that differ only in their seeds (seeds run as separate processes or on separate
    machines): the seeds and per-seed metrics concatenated, mean ± std recomputed over all,
    the commands listed. Refused when a field of :data:`_MERGE_SAME` differs, a seed
    repeats, a record is a shot sweep, or the resolved configs differ in anything but the
    seed and the prerequisites' checkpoint paths."""
    if any("sweep" in r for r in records):
        raise ValueError("shot sweeps are not merged; run the sweep with --seed-list instead")
    first = records[0]
    for key in _MERGE_SAME:
        values = {json.dumps(r.get(key), sort_keys=True) for r in records}
        if len(values) > 1:
            raise ValueError(f"records differ in {key!r} ({sorted(values)}); they are not one run")
    seeds = [s for r in records for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"records repeat seeds ({seeds})")
    configs = {_config_without_seed(r["config"]) for r in records}
    if len(configs) > 1:
        raise ValueError("records were fitted with different settings (their configs differ)")
    per_seed = [m for r in records for m in r["per_seed"]]
    return {
        **first,
        "seeds": seeds,
        "metrics": summarise(per_seed),
        "per_seed": per_seed,
        "command": " ; ".join(r["command"] for r in records),
    }


def _config_without_seed(config: str) -> str:
    """A resolved config with the seed and every checkpoint path (what a prerequisite chain
    passes on, different per seed) left out."""

    def without_seed(node: Any) -> Any:
        if isinstance(node, dict):  # at any depth: a dump may nest it under the subcommand
            return {k: without_seed(v) for k, v in node.items() if k != "seed_everything"}
        if isinstance(node, list):
            return [without_seed(v) for v in node]
        return node

    text = json.dumps(without_seed(yaml.safe_load(config)), sort_keys=True)
    return re.sub(r'"[^"]*\.ckpt"', '"<checkpoint>"', text)


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


def is_result(metric: str) -> bool:
    """Whether ``metric`` is a result (the probe's chosen regularisation ``*_C`` is a setting)."""
    return not metric.endswith("_C")


def _entry(
    record: dict[str, Any], metric: str, stats: dict[str, Any], config_sha256: str
) -> dict[str, Any]:
    return {
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
        "config_sha256": config_sha256,
        # settings changed on the command line (after `--`): part of what was run
        **({"overrides": record["overrides"]} if record.get("overrides") else {}),
    }


def metafile_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``reproduced`` entries of a record: one per metric, or for a shots sweep one per
    (shot count, metric) with ``shots`` set and that shot count's config hash."""
    if "sweep" not in record:
        return [
            _entry(record, metric, stats, record["config_sha256"])
            for metric, stats in record["metrics"].items()
            if is_result(metric)
        ]
    entries = []
    for run in record["sweep"]:
        for metric, stats in run["metrics"].items():
            if is_result(metric):
                entry = _entry(record, metric, stats, run["config_sha256"])
                entries.append({**entry, "shots": run["shots"]})
    return entries


def append_to_metafile(record: dict[str, Any], metafile: Path) -> None:
    text = metafile.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    meta = yaml.safe_load(text) or {}
    entries = meta.setdefault("reproduced", []) or []
    entries.extend(metafile_entries(record))
    meta["reproduced"] = entries
    from zoo.ledger import validate_metafile

    validate_metafile(meta)  # never write an entry the ledger schema would reject
    metafile.write_text(
        header + yaml.safe_dump(meta, sort_keys=False, width=100, allow_unicode=True)
    )


# --- the few-shot sweep: shots x seeds -------------------------------------------------------
def parse_per_shot(items: Sequence[str], shots: Sequence[int]) -> dict[int, list[str]]:
    """``["1:trainer.max_epochs=50", "2,4:trainer.max_epochs=100"]`` -> the ``zoo fit``
    overrides of each shot count (``{1: ["--trainer.max_epochs", "50"], ...}``); a shot count
    not in ``shots`` or a malformed item is an error naming it."""
    out: dict[int, list[str]] = {k: [] for k in shots}
    for item in items:
        counts, sep, setting = item.partition(":")
        key, eq, value = setting.partition("=")
        try:
            ks = [int(k) for k in counts.split(",")]
        except ValueError:
            ks = []
        if not sep or not eq or not key.strip() or not ks:
            raise ValueError(
                f"--per-shot {item!r}: expected K[,K...]:KEY=VALUE, "
                "e.g. 1:trainer.max_epochs=50 or 2,4:trainer.max_epochs=100"
            )
        for k in ks:
            if k not in out:
                raise ValueError(f"--per-shot {item!r}: {k} is not one of --shots {list(shots)}")
            out[k] += [f"--{key.strip().removeprefix('--')}", value]
    return out


def shot_overrides(shots: int, seed: int, per_shot: Sequence[str]) -> list[str]:
    """What one run of the sweep adds to the recipe (after the command's own overrides):
    the datamodule's shot count and few-shot seed, then the shot count's ``--per-shot``."""
    return [
        "--data.init_args.shots",
        str(shots),
        "--data.init_args.fewshot_seed",
        str(seed),
        *per_shot,
    ]


def sweep(
    recipe: str,
    shots: Sequence[int],
    seeds: Sequence[int],
    overrides: Sequence[str],
    per_shot: dict[int, list[str]],
) -> list[dict[str, Any]]:
    """Fit ``recipe`` for every (shot count, seed); per shot count: the per-seed metrics,
    their summary and the resolved config of its first run (with its sha256)."""
    runs = []
    total, done = len(shots) * len(seeds), 0
    for k in shots:
        per_seed, configs = [], []
        for seed in seeds:
            done += 1
            print(f"[zoo reproduce] {recipe} shots {k} seed {seed} ({done}/{total})", flush=True)
            extra = shot_overrides(k, seed, per_shot.get(k, []))
            metrics, config = run_seed(recipe, seed, [*overrides, *extra])
            per_seed.append(metrics)
            configs.append(config)
        runs.append(
            {
                "shots": k,
                "per_seed": per_seed,
                "metrics": summarise(per_seed),
                "config": configs[0],
                "config_sha256": hashlib.sha256(configs[0].encode()).hexdigest(),
            }
        )
    return runs


def sweep_table(runs: list[dict[str, Any]], seeds: Sequence[int]) -> str:
    """Mean ± std per shot count (rows) and metric (columns), as printed by the sweep."""
    metrics = sorted({m for run in runs for m in run["metrics"] if is_result(m)})
    rows = [["shots", *metrics]]
    for run in runs:
        cells = [run["metrics"].get(m) for m in metrics]
        rows.append(
            [str(run["shots"])] + [f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return f"mean ± std over seeds {list(seeds)}\n" + "\n".join(lines)


def write_sweep_csv(runs: list[dict[str, Any]], seeds: Sequence[int], path: Path) -> None:
    """One row per (shot count, seed) with every metric, then a ``mean`` and a ``std`` row
    per shot count (the ``seed`` column says which)."""
    metrics = sorted({m for run in runs for m in run["metrics"]})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["shots", "seed", *metrics])
        for run in runs:
            for seed, values in zip(seeds, run["per_seed"]):
                cells = [round(values[m], 4) if m in values else "" for m in metrics]
                writer.writerow([run["shots"], seed, *cells])
            for stat in ("mean", "std"):
                cells = [run["metrics"][m][stat] if m in run["metrics"] else "" for m in metrics]
                writer.writerow([run["shots"], stat, *cells])


def reproduce_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/slip/tiny.yaml")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument(
        "--seed-list", type=int, nargs="*", help="explicit seeds instead of --seeds"
    )
    parser.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=None,
        help="few-shot sweep: run every seed at each shot count K (data.init_args.shots = K, "
        "data.init_args.fewshot_seed = seed_everything = the seed; seeds default to 1..--seeds)",
    )
    parser.add_argument(
        "--per-shot",
        nargs="+",
        default=[],
        metavar="K:KEY=VALUE",
        help="with --shots: a zoo fit override for some shot counts, e.g. "
        "1:trainer.max_epochs=50 2,4:trainer.max_epochs=100 8,16:trainer.max_epochs=200",
    )
    parser.add_argument(
        "--reuse-prerequisites",
        action="store_true",
        help="reuse '# after:' prerequisites fitted earlier from the same recipe text, seed, "
        "inputs and code (kept under runs/reproduce/prerequisites/)",
    )
    parser.add_argument("--scale", default=None, help="what was run, e.g. 'tiny: digits 16px, CPU'")
    parser.add_argument("--out", default=None, help="JSON record path (default runs/reproduce/...)")
    parser.add_argument("--append", action="store_true", help="append the result to the metafile")
    parser.add_argument(
        "--from-record",
        nargs="+",
        default=None,
        help="append existing JSON records (written by earlier `zoo reproduce` runs) instead of "
        "running; several records of the same recipe, code and settings with different seeds "
        "(e.g. one process per seed) are merged into one record first",
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
        records = [json.loads(Path(p).read_text()) for p in args.from_record]
        for path, record in zip(args.from_record, records):
            if Path(record["recipe"]).name != recipe.name or record["paper"] != recipe.parent.name:
                parser.error(f"{path} is a record of {record['recipe']}, not {recipe}")
        try:
            record = records[0] if len(records) == 1 else merge_records(records)
        except ValueError as err:
            parser.error(str(err))
        if len(records) > 1:
            out = Path(args.out or f"runs/reproduce/{recipe.parent.name}-{recipe.stem}.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2))
            print(f"[zoo reproduce] merged {len(records)} records into {out}")
        append_to_metafile(record, recipe.parent / "metafile.yaml")
        print(
            f"[zoo reproduce] appended {' '.join(args.from_record)} to {recipe.parent / 'metafile.yaml'}"
        )
        return 0
    if args.per_shot and not args.shots:
        parser.error("--per-shot needs --shots")
    if args.shots:
        return _sweep_command(args, parser, recipe, argv, overrides)
    seeds = args.seed_list if args.seed_list else list(range(args.seeds))
    paper = recipe.parent.name
    started = provenance()  # before the runs: the code that produced the numbers
    per_seed, configs = [], []
    for seed in seeds:
        print(
            f"[zoo reproduce] {recipe} seed {seed} ({len(per_seed) + 1}/{len(seeds)})", flush=True
        )
        metrics, config = run_seed(str(recipe), seed, overrides, args.reuse_prerequisites)
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
        "overrides": overrides,
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


def _sweep_command(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    recipe: Path,
    argv: list[str],
    overrides: list[str],
) -> int:
    """``--shots``: every (shot count, seed), a table on stdout, a CSV and a JSON record
    under ``runs/reproduce/``, and with ``--append`` one metafile entry per (shots, metric)."""
    shots = list(dict.fromkeys(args.shots))  # in the given order, without repeats
    if any(k == 0 for k in shots):
        parser.error("--shots: 0 is not a shot count (a negative K takes every image)")
    seeds = args.seed_list if args.seed_list else list(range(1, args.seeds + 1))
    try:
        per_shot = parse_per_shot(args.per_shot, shots)
    except ValueError as err:
        parser.error(str(err))
    paper = recipe.parent.name
    started = provenance()  # before the runs: the code that produced the numbers
    runs = sweep(str(recipe), shots, seeds, overrides, per_shot)
    record = {
        "recipe": recipe.as_posix(),
        "paper": paper,
        "seeds": seeds,
        "shots": shots,
        "sweep": runs,
        "scale": args.scale or f"recipe {recipe.stem}, shots {', '.join(map(str, shots))}",
        "command": "python -m zoo reproduce " + shlex.join(argv),
        "overrides": overrides,
        **started,
    }
    out = Path(args.out or f"runs/reproduce/{paper}-{recipe.stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    table = out.with_suffix(".csv")
    write_sweep_csv(runs, seeds, table)
    print(f"[zoo reproduce] wrote {out} and {table}")
    print(sweep_table(runs, seeds))
    if args.append:
        metafile = recipe.parent / "metafile.yaml"
        append_to_metafile(record, metafile)
        print(f"[zoo reproduce] appended to {metafile}")
    return 0


if __name__ == "__main__":
    sys.exit(reproduce_command(sys.argv[1:]))
