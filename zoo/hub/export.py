"""``zoo export``: write a model folder (inside a pip-installable source tree) and a wheel.

Layout written to ``out`` (see :mod:`zoo.hub.package`)::

    out/pyproject.toml, out/README.md, out/.gitignore
    out/zoo_model_<name>/{__init__.py, config.json, model.safetensors,
                          model.safetensors.sha256, README.md, [recipe.yaml], [tokenizer/]}
    out/dist/zoo_model_<name>-<version>-py3-none-any.whl      (with wheel=True)
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.hub.architectures import architecture_entry, get_architecture
from zoo.hub.card import render_card
from zoo.hub.config import (
    CARD_FILE,
    CLIP_BPE,
    CONFIG_FILE,
    RECIPE_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    validate_config,
    write_json,
)
from zoo.hub.heads import describe_head
from zoo.hub.package import build_wheel, import_name, write_package_files
from zoo.hub.security import check_name, sha256_file
from zoo.hub.sources import ExportSource, SourceFormat, read_source
from zoo.hub.weights import as_dtype, cast_state, dtype_name, prefixed_state, save_weights


@dataclass
class ExportResult:
    root: Path  # the package source tree (``out``)
    model_dir: Path  # the model folder inside it
    config: dict[str, Any]
    wheel: Path | None = None


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (no home folders leak into
    released cards), else absolute."""
    path = Path(path).expanduser().resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _git_commit() -> dict[str, Any]:
    """Commit (and dirtiness) of the vl-zoo source tree doing the export, when it is a repo."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        except OSError:
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def normalise_metrics(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{name: value}`` or ``{name: {"value": v, "dataset": ..., ...}}`` → the latter form."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (metrics or {}).items():
        entry = dict(entry) if isinstance(entry, Mapping) else {"value": entry}
        if isinstance(entry.get("value"), bool) or not isinstance(entry.get("value"), int | float):
            raise ValueError(f"metric {name!r} needs a numeric value, got {entry.get('value')!r}")
        out[str(name)] = entry
    return out


def _copy_tokenizer(src: ExportSource, model_dir: Path) -> str | None:
    """The ``tokenizer.name_or_path`` to write: ``clip-bpe``, ``None`` or the copied folder."""
    name = src.preprocess.tokenizer
    if name is None or name == CLIP_BPE:
        return name
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    target = model_dir / TOKENIZER_DIR
    target.mkdir()
    files = src.tokenizer_files or tuple(p.name for p in folder.iterdir() if p.is_file())
    for file in files:  # contents only: new files get the umask mode like the rest
        shutil.copyfile(folder / file, target / file)
    return TOKENIZER_DIR


def _recipe_entry(recipe: Path | None, model_dir: Path) -> dict[str, Any] | None:
    if recipe is None:
        return None
    recipe = Path(recipe).expanduser()
    if not recipe.is_file():
        raise FileNotFoundError(f"recipe not found: {recipe}")
    shutil.copyfile(recipe, model_dir / RECIPE_FILE)
    return {"path": display_path(recipe), "sha256": sha256_file(recipe), "file": RECIPE_FILE}


def _num_parameters(src: ExportSource) -> dict[str, int]:
    backbone = sum(p.numel() for p in src.model.parameters())
    heads = sum(p.numel() for h in src.heads.values() for p in h.parameters())
    return {"backbone": backbone, "heads": heads, "total": backbone + heads}


def write_model_folder(
    src: ExportSource,
    model_dir: Path,
    name: str,
    dtype: str = "float32",
    metrics: Mapping[str, Any] | None = None,
    source_path: Path | None = None,
) -> dict[str, Any]:
    """Write ``config.json``, ``model.safetensors`` (+ ``.sha256``), ``README.md`` and the
    tokenizer / recipe copies of ``src`` into ``model_dir``; returns the config."""
    from zoo import __version__

    arch = get_architecture(src.architecture)
    entry = architecture_entry(arch, src.model)  # verified: it rebuilds this model exactly
    torch_dtype = as_dtype(dtype)
    state = cast_state(prefixed_state(src.model, src.heads), torch_dtype)
    version = arch.format_version
    metadata = {"format": "pt", "zoo_name": name, "zoo_format_version": str(version)}
    metadata |= {"dtype": dtype_name(torch_dtype), "zoo_version": __version__}
    digest = save_weights(model_dir / WEIGHTS_FILE, state, metadata)
    provenance: dict[str, Any] = {"source": display_path(source_path) if source_path else None}
    if source_path is not None and source_path.is_file():
        provenance["source_sha256"] = sha256_file(source_path)
    provenance |= src.provenance | _git_commit()
    provenance["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    provenance["exported_by"] = f"vl-zoo {__version__}"
    preprocess = src.preprocess.to_config()
    tokenizer = _copy_tokenizer(src, model_dir)
    if tokenizer is not None:
        preprocess["tokenizer"]["name_or_path"] = tokenizer
    config = {
        "format_version": version,
        "name": name,
        "zoo_version": __version__,
        "paper": src.paper,
        "recipe": _recipe_entry(src.recipe, model_dir),
        "architecture": {**entry, "num_parameters": _num_parameters(src)},
        "heads": {n: describe_head(n, h) for n, h in src.heads.items()},
        "preprocess": preprocess["preprocess"],
        "tokenizer": preprocess.get("tokenizer"),
        "weights": {"file": WEIGHTS_FILE, "sha256": digest, "dtype": dtype_name(torch_dtype)},
        "metrics": normalise_metrics(metrics),
        "provenance": provenance,
    }
    validate_config(json.loads(json.dumps(config)), model_dir)
    write_json(model_dir / CONFIG_FILE, config)
    (model_dir / CARD_FILE).write_text(render_card(config), encoding="utf-8")
    return config


def _prepare_out(out: Path, name: str, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite)")
        shutil.rmtree(out / import_name(name), ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def export_model(
    source: str | Path,
    name: str,
    out: str | Path,
    *,
    fmt: SourceFormat = "auto",
    dtype: str = "float32",
    recipe: str | Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    wheel: bool = False,
    wheel_dir: str | Path | None = None,
    version: str = "1.0.0",
    overwrite: bool = False,
    class_path: str | None = None,
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    adapter_only: bool = False,
) -> ExportResult:
    """Export ``source`` (Lightning checkpoint, HF CLIP folder or OpenAI state dict) as model
    ``name`` into the package source tree ``out``; with ``wheel``, also build its wheel
    (into ``wheel_dir``, default ``out/dist``).

    ``adapter_only`` (``--adapter-only``): a checkpoint of a module with a peft-wrapped
    backbone (ViSFT stage 2) is exported as its LoRA adapter alone, a ``lora_adapter``
    package that ``zoo.load(NAME, base=BASE)`` merges into its base (:mod:`zoo.hub.adapter`);
    a module without an adapter is refused."""
    check_name(name)
    out = Path(out).expanduser()
    src = read_source(
        source, fmt, trust_pickle, class_path, quick_gelu, vision_heads, text_heads, adapter_only
    )
    if recipe is not None:
        src.recipe = Path(recipe)
    _prepare_out(out, name, overwrite)
    model_dir = out / import_name(name)
    model_dir.mkdir()
    config = write_model_folder(
        src, model_dir, name, dtype, metrics, Path(source).expanduser().resolve()
    )
    write_package_files(out, name, version, (model_dir / CARD_FILE).read_text(encoding="utf-8"))
    built = build_wheel(out, Path(wheel_dir) if wheel_dir else out / "dist") if wheel else None
    return ExportResult(out, model_dir, config, built)
