"""Pre-flight checks ``zoo fit`` runs before training: writable output folders with room for
the checkpoints, ``--ckpt_path last`` across logger versions, and the default fit callbacks."""

from __future__ import annotations

import re
import shutil
import tempfile
from itertools import chain
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint

from zoo.callbacks import ExactResume, NonFiniteGuard


class PreflightError(RuntimeError):
    """An output directory cannot be written, or its disk is too full for the checkpoints."""


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(directory: str | Path, what: str) -> Path:
    """Raise :class:`PreflightError` unless ``directory`` exists as a writable folder or can
    be created (its nearest existing ancestor is a writable folder). Creates nothing but a
    removed probe file; returns that ancestor. A real write is tried rather than
    ``os.access``, which says yes to root whatever the permission bits."""
    directory = Path(directory).expanduser()
    anchor = _existing_ancestor(directory)
    if not anchor.is_dir():
        raise PreflightError(
            f"cannot create the {what} directory {directory}: {anchor} is a file, not a folder"
        )
    try:
        with tempfile.TemporaryFile(dir=anchor, prefix=".zoo-write-probe-") as probe:
            probe.write(b"0")
            probe.flush()
    except OSError as err:
        raise PreflightError(
            f"the {what} directory {directory} is not writable ({anchor}: {err.strerror or err})"
        ) from None
    return anchor


def checkpoint_bytes(model: torch.nn.Module, optimizer_states: int = 2) -> int:
    """Approximate size of one full checkpoint: weights and buffers, plus
    ``optimizer_states`` tensors per trainable parameter (AdamW: exp_avg, exp_avg_sq)."""
    weights = sum(t.numel() * t.element_size() for t in chain(model.parameters(), model.buffers()))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + optimizer_states * trainable


def checkpoint_dir(trainer: L.Trainer, callback: ModelCheckpoint) -> Path:
    """Where ``callback`` will write (Lightning's rule: its ``dirpath``, else the first
    logger's ``save_dir/name/version/checkpoints``, else ``default_root_dir/checkpoints``)."""
    if callback.dirpath is not None:
        return Path(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        save_dir = logger.save_dir or trainer.default_root_dir
        return Path(save_dir) / str(logger.name) / version / "checkpoints"
    return Path(trainer.default_root_dir) / "checkpoints"


def _files_kept(callback: ModelCheckpoint) -> tuple[int, str]:
    top_k = callback.save_top_k
    kept = (1 if top_k < 0 else top_k) + int(bool(callback.save_last)) + 1
    parts = [f"top-{top_k}" if top_k >= 0 else "every one (counted as 1)"]
    if callback.save_last:
        parts.append("last")
    return kept, ", ".join([*parts, "one being written"])


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def preflight(
    trainer: L.Trainer, model: torch.nn.Module, optimizer_states: int = 2, margin: float = 1.25
) -> None:
    """Before training: every log / checkpoint directory must be writable, and each
    checkpoint folder's disk must hold its checkpoints (see :func:`checkpoint_bytes`,
    times the files a ``ModelCheckpoint`` keeps, times ``margin``). Raises
    :class:`PreflightError` naming the directory and the numbers."""
    dirs: dict[Path, str] = {Path(trainer.default_root_dir): "trainer.default_root_dir"}
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            dirs[Path(log_dir)] = f"{type(logger).__name__} log"
    need: dict[Path, tuple[int, str]] = {}
    if not trainer.fast_dev_run:  # fast_dev_run writes no checkpoints
        per_ckpt = checkpoint_bytes(model, optimizer_states)
        n_params = sum(p.numel() for p in model.parameters())
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                path = checkpoint_dir(trainer, cb)
                dirs[path] = "checkpoint"
                kept, which = _files_kept(cb)
                total = int(per_ckpt * kept * margin)
                how = (
                    f"{n_params:,} parameters, {_mb(per_ckpt)} per checkpoint with "
                    f"{optimizer_states} optimizer states, x {kept} files ({which}) "
                    f"x {margin} margin"
                )
                old = need.get(path, (0, ""))
                need[path] = (old[0] + total, f"{old[1]}; {how}" if old[1] else how)
    anchors = {path: check_writable(path, what) for path, what in dirs.items()}
    for path, (required, how) in need.items():
        free = shutil.disk_usage(anchors[path]).free
        if free < required:
            raise PreflightError(
                f"not enough free disk space for checkpoints in {path}: {_mb(free)} free, "
                f"about {_mb(required)} needed ({how}). Free some space or point "
                "trainer.default_root_dir / the ModelCheckpoint dirpath at a larger disk."
            )


# --- resume -----------------------------------------------------------------------------------
def find_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest ``last*.ckpt`` of the trainer's ``ModelCheckpoint`` callbacks, looking in
    every version directory of the first logger (a resumed run logs to a new one)."""
    found: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.dirpath is None and trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
            folders = list(root.glob("*/checkpoints"))
        else:
            folders = [checkpoint_dir(trainer, cb)]
        pattern = re.compile(rf"{re.escape(cb.CHECKPOINT_NAME_LAST)}(-v\d+)?\.ckpt")
        found += [
            p for d in folders if d.is_dir() for p in d.iterdir() if pattern.fullmatch(p.name)
        ]
    for cb in trainer.callbacks:  # OnExceptionCheckpoint
        path = getattr(cb, "ckpt_path", None)
        if isinstance(cb, Checkpoint) and path and Path(path).is_file():
            found.append(Path(path))
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def add_fit_callbacks(trainer: L.Trainer) -> None:
    """Add :class:`NonFiniteGuard`, :class:`ExactResume` and
    :class:`zoo.freeze.FrozenTowerCheck` (a no-op for modules without frozen towers) unless
    the recipe already has them (e.g. a guard with ``check_every_n_steps``), before the
    checkpoint callbacks (Lightning runs those last)."""
    from zoo.freeze import FrozenTowerCheck

    defaults = (NonFiniteGuard, ExactResume, FrozenTowerCheck)
    missing = [cls() for cls in defaults if not trainer_has(trainer, cls)]
    at = next(
        (i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)),
        len(trainer.callbacks),
    )
    trainer.callbacks[at:at] = missing


def trainer_has(trainer: L.Trainer, cls: type[Callback]) -> bool:
    return any(isinstance(cb, cls) for cb in trainer.callbacks)
