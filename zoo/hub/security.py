"""Safety checks for model folders: names, paths, digests and pickle refusal (no torch import).

- A model name matches :data:`NAME_PATTERN` and has no ``..``.
- Every path read from a ``config.json`` is relative and stays inside the model folder.
- Weights load only after their sha256 matches both ``config.json`` and the ``.sha256`` file.
- Pickle formats (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused unless ``trust_pickle``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "NAME_PATTERN",
    "PICKLE_SUFFIXES",
    "TamperedWeightsError",
    "UnsafeConfigError",
    "UnsafePathError",
    "check_name",
    "check_spec_is_inert",
    "check_weights_format",
    "safe_child",
    "sha256_file",
    "verify_digest",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# timm.create_model keyword arguments that read files or download weights.
_LOADING_KWARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")


class UnsafePathError(ValueError):
    """A name or a path escapes its model folder (``..``, absolute paths, bad characters)."""


class UnsafeConfigError(ValueError):
    """A ``config.json`` asks for something a model folder may not do (e.g. load another file)."""


class TamperedWeightsError(ValueError):
    """The weights' sha256 differs from the recorded digest."""


class UntrustedCheckpointError(ValueError):
    """A checkpoint needs unpickling (arbitrary code execution) and ``trust_pickle`` is False."""


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (``^[a-z0-9][a-z0-9._-]{0,99}$``, no ``..``)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise UnsafePathError(
            f"invalid model name {name!r}: use 1-100 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def safe_child(root: str | Path, relative: str, what: str = "path") -> Path:
    """``root / relative`` resolved, refusing absolute paths and anything outside ``root``."""
    if not isinstance(relative, str) or not relative:
        raise UnsafePathError(f"{what} must be a non-empty relative path, got {relative!r}")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or Path(relative).is_absolute() or re.match(r"^[A-Za-z]:", relative):
        raise UnsafePathError(f"{what} {relative!r} is absolute; it must be relative to {root}")
    if ".." in pure.parts:
        raise UnsafePathError(f"{what} {relative!r} contains '..'; it must stay inside {root}")
    base = Path(root).resolve()
    target = (base / pure).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"{what} {relative!r} resolves to {target}, outside {base}")
    return target


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _recorded_digest(text: str) -> str:
    """The hex digest of a ``.sha256`` file (``sha256sum`` format or a bare digest)."""
    token = text.strip().split()[0] if text.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", token):
        raise TamperedWeightsError(f"not a sha256 hex digest: {token!r}")
    return token


def verify_digest(
    path: Path, expected: str, sidecar: Path | None = None, actual: str | None = None
) -> str:
    """Check ``path``'s sha256 (``actual``, computed when not given) against ``expected``
    (from ``config.json``) and the ``sidecar`` ``.sha256`` file.

    Raises :class:`TamperedWeightsError` naming the file and both digests on any mismatch,
    or when the sidecar file is missing. Returns the digest.
    """
    actual = actual or sha256_file(path)
    if not isinstance(expected, str) or actual != expected.lower():
        raise TamperedWeightsError(
            f"sha256 mismatch for {path}: config.json records {expected}, the file has {actual}. "
            "The weights were modified or corrupted; refusing to load them."
        )
    if sidecar is not None:
        if not sidecar.is_file():
            raise TamperedWeightsError(f"missing digest file {sidecar} for {path}; refusing")
        recorded = _recorded_digest(sidecar.read_text())
        if recorded != actual:
            raise TamperedWeightsError(
                f"sha256 mismatch for {path}: {sidecar.name} records {recorded}, the file has "
                f"{actual}. The weights were modified or corrupted; refusing to load them."
            )
    return actual


def check_weights_format(path: Path, trust_pickle: bool) -> None:
    """Allow ``.safetensors``; pickle formats only with ``trust_pickle``; nothing else."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"{path} is a pickle ({suffix}): unpickling can run arbitrary code, so it is "
                "refused. Pass trust_pickle=True only if you trust its source."
            )
        return
    raise UnsafeConfigError(f"unsupported weights format {suffix!r} for {path}")


def check_spec_is_inert(spec: Mapping[str, Any]) -> None:
    """Refuse architecture specs that would read another file while building the model
    (``vision.checkpoint`` or timm's ``checkpoint_path`` / ``pretrained*`` kwargs)."""
    vision = spec.get("vision") or {}
    if vision.get("checkpoint"):
        raise UnsafeConfigError(
            "config.json sets architecture.spec.vision.checkpoint; a model folder's weights "
            "come only from its verified weights file"
        )
    bad = sorted(k for k in (vision.get("kwargs") or {}) if k in _LOADING_KWARGS)
    if bad:
        raise UnsafeConfigError(f"config.json vision kwargs may not load weights: {bad}")
