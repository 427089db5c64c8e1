"""The zoo's local cache folder and crash/concurrency-safe writes into it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$VL_ZOO_CACHE``, else ``~/.cache/vl-zoo``."""
    env = os.environ.get("VL_ZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vl-zoo"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so concurrent writers and readers never see a partial
    file (the last complete write wins)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
