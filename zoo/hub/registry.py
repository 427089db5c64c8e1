"""Where models come from: installed packages, ``local-dir:`` and ``hf-hub:`` (no torch import).

:func:`resolve_model_dir` turns a name or URI into a model folder (the folder holding
``config.json``), in this order:

1. a bare name: an installed model package (entry-point group ``zoo.models``);
2. ``local-dir:PATH``: a model folder, or an export / package source tree holding one
   ``zoo_model_*/`` model folder;
3. ``hf-hub:ORG/NAME[@REV]``: ``huggingface_hub.snapshot_download`` into
   ``$VL_ZOO_CACHE/hf-hub/ORG/NAME/REV`` (online only; safe file types only, never pickles).
"""

from __future__ import annotations

import os
import re
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from zoo.hub.config import CONFIG_FILE
from zoo.hub.security import UnsafePathError, check_name

ENTRY_POINT_GROUP = "zoo.models"
PACKAGE_PREFIX = "zoo_model_"
LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"
# Files fetched from the Hub: configs, safetensors, digests, cards and tokenizer files.
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.sha256", "*.md", "*.txt", "*.yaml", "*.model"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


class ModelNotFoundError(LookupError):
    """No installed model package has this name."""


class HubOfflineError(RuntimeError):
    """An ``hf-hub:`` model was requested while the Hub is unreachable or disabled."""


def installed_models() -> dict[str, EntryPoint]:
    """Installed model packages by name (entry points of group ``zoo.models``); invalid
    names are skipped, and the first distribution providing a name wins."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            check_name(ep.name)
        except UnsafePathError:
            continue
        found.setdefault(ep.name, ep)
    return found


def list_models() -> list[str]:
    """Names of the installed model packages, sorted."""
    return sorted(installed_models())


def installed_model_dir(name: str) -> Path:
    """The model folder of the installed package registering ``name``."""
    check_name(name)
    models = installed_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelNotFoundError(
            f"no installed zoo model named {name!r} (installed: {known}). Install its package "
            f"(pip install zoo-model-{name}), or load 'local-dir:PATH' or 'hf-hub:ORG/NAME'."
        )
    folder = Path(models[name].load()())
    if not folder.is_dir():
        raise FileNotFoundError(f"model package {name!r} points to a missing folder {folder}")
    return find_model_folder(folder)


def find_model_folder(path: str | Path) -> Path:
    """``path`` if it holds ``config.json``, else its single ``zoo_model_*/`` model folder
    (the layout ``zoo export`` writes, which is also a pip-installable source tree)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model folder does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"not a model folder: {path}")
    if (path / CONFIG_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"{PACKAGE_PREFIX}*/{CONFIG_FILE}"))
    if len(found) != 1:
        detail = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(
            f"{path} is not a model folder: no {CONFIG_FILE}, and {detail} {PACKAGE_PREFIX}*/ "
            "model folders inside (exactly one is needed)"
        )
    return found[0]


def parse_hf_uri(spec: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REV]`` → (repo id, revision), validated."""
    repo_id, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UnsafePathError(f"invalid Hugging Face repo id {repo_id!r} (expected ORG/NAME)")
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise UnsafePathError(f"invalid revision {revision!r}")
    return repo_id, revision or None


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on")


def hf_hub_model_dir(spec: str) -> Path:
    """Download (online only) the safe files of ``ORG/NAME[@REV]`` and return its model folder."""
    repo_id, revision = parse_hf_uri(spec)
    if _hub_offline():
        raise HubOfflineError(
            f"hf-hub:{spec} needs the network, but HF_HUB_OFFLINE is set. Install the model "
            "package (zoo.load(NAME)) or download the folder and use 'local-dir:PATH'."
        )
    from huggingface_hub import snapshot_download

    from zoo.data.cache import cache_root

    # A plain local copy: the Hub cache's snapshot folders hold symlinks into blobs/, which
    # the inside-the-folder path checks would (rightly) refuse.
    local = cache_root() / "hf-hub" / repo_id / (revision or "main").replace("/", "--")
    try:
        folder = snapshot_download(
            repo_id, revision=revision, local_dir=local, allow_patterns=HF_ALLOW_PATTERNS
        )
    except Exception as err:  # network, auth and not-found errors all land here
        raise HubOfflineError(f"could not download hf-hub:{spec}: {err}") from err
    return find_model_folder(folder)


def resolve_model_dir(name_or_uri: str) -> Path:
    """The model folder for a name (installed package), ``local-dir:PATH`` or ``hf-hub:...``."""
    if not isinstance(name_or_uri, str):
        raise TypeError(f"expected a model name or URI string, got {type(name_or_uri).__name__}")
    if name_or_uri.startswith(LOCAL_DIR):
        path = Path(name_or_uri[len(LOCAL_DIR) :]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"local-dir: path does not exist: {path}")
        return find_model_folder(path)
    if name_or_uri.startswith(HF_HUB):
        return hf_hub_model_dir(name_or_uri[len(HF_HUB) :])
    if ":" in name_or_uri:
        raise ValueError(
            f"unknown model URI {name_or_uri!r}: use an installed name, 'local-dir:PATH' or "
            "'hf-hub:ORG/NAME[@REV]'"
        )
    return installed_model_dir(name_or_uri)
