"""Training that survives faults: exact mid-epoch resume, a non-finite loss guard, and
pre-flight checks of the output directories (all on by default in ``zoo fit``).

**Exact resume.** A run killed mid-epoch and resumed with ``--ckpt_path last`` ends with the
weights of an uninterrupted run because everything random or positional is a function of
state the checkpoint already holds, never of process history:

- data order: :class:`EpochSampler` permutes with ``(seed, epoch)`` only. It *is* a
  ``DistributedSampler``, so under DDP Lightning keeps it (no wrapper) and calls
  ``set_epoch``; the datamodule gives it the trainer's ``num_replicas`` / ``rank``.
- sample randomness: it yields :class:`~zoo.data.samples.SampleKey` indices; the dataset
  seeds each sample's augmentations and caption choice from ``(seed, epoch, index)``,
  so worker count, persistent workers and restarts do not matter.
- position in the epoch: Lightning 2.6 skips nothing by itself. It restores its loop
  counters, and for a *stateful* train loader (``state_dict`` / ``load_state_dict``) it
  saves the loader state in the checkpoint (``loops.fit_loop.state_dict.combined_loader``)
  and is meant to load it before iterating again; a plain ``DataLoader`` restarts the
  epoch at batch 0 (with a warning) and re-trains batches. But when
  ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (ZooModule does,
  for its schedule) the loader is built before the loop state is restored, and that
  state is silently never loaded (Lightning issue #20550). So :class:`ResumableDataLoader`
  counts the batches it hands out, and ``ZooDataModule`` also keeps that count in its own
  checkpoint state (restored before the loader is built) and applies it; the loader then
  skips those batches. Lightning does not fetch ahead on a sized loader, so handed out =
  trained on; :class:`ExactResume` checks this every step.
- step randomness (dropout, masking): :class:`ExactResume` reseeds torch / ``random`` /
  numpy before each training batch from ``(seed, epoch, batch, rank)``.
- the LR schedule and optimizer are in the checkpoint; the schedule's length comes from
  ``len(loader)``, which a resumed loader keeps.

``--ckpt_path last`` is resolved by :func:`find_last_checkpoint` across all logger version
directories (Lightning itself only looks in the new run's empty ``version_N+1``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Sized
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from zoo.data.samples import SampleKey

log = logging.getLogger("zoo.faults")


def _global_seed() -> int:
    """The seed ``seed_everything`` exported (LightningCLI's ``seed_everything:``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


# --- data order and position ----------------------------------------------------------------
class EpochSampler(DistributedSampler):
    """A shuffling sampler whose order is a function of ``(seed, epoch)`` only, yielding
    :class:`SampleKey` indices (index + seed + epoch) so the dataset can seed each sample.

    ``num_replicas`` / ``rank`` shard it like Lightning's own DDP sampler (same
    permutation, padded to equal length); no process group is needed when they are given.
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """Start the next pass ``n`` positions in (mid-epoch resume); later passes start at 0."""
        self._skip = int(n)

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        indices = list(super().__iter__())[skip:]
        return iter([SampleKey(i, self.seed, epoch) for i in indices])


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochSampler` that Lightning checkpoints.

    ``state_dict()`` records the epoch and the batches handed out in it; after
    ``load_state_dict()`` the next pass of that same epoch skips them (other epochs start
    at 0, e.g. when the checkpoint was written after an epoch's last batch). Iteration is
    lazy: the epoch is read at the first ``next()``, after Lightning's ``set_epoch``, even
    though Lightning calls ``iter()`` earlier when (re)starting a fit. With another
    sampler (Lightning swaps in a ``SequentialSampler`` for ``overfit_batches``) it is a
    plain ``DataLoader`` that cannot resume mid-epoch.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, **kwargs: Any):
        if kwargs.get("batch_size", 1) is None:
            raise ValueError("ResumableDataLoader needs a batch_size (it skips whole batches)")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch = getattr(sampler, "epoch", 0)
        self._position = 0
        self._resume: dict[str, int] | None = None

    @property
    def position(self) -> int:
        """Batches of the current epoch handed out so far (skipped ones included)."""
        return self._position

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        sampler = self.sampler
        epoch, start = getattr(sampler, "epoch", 0), 0
        if self._resume is not None:
            saved, self._resume = self._resume, None
            if saved["epoch"] == epoch and isinstance(sampler, EpochSampler):
                start = min(saved["batches"], len(self))
        if isinstance(sampler, EpochSampler):
            sampler.skip_next(start * int(self.batch_size))
        self._epoch, self._position = epoch, start
        for batch in super().__iter__():
            self._position += 1  # before yielding: a checkpoint taken now counts this batch
            yield batch

    def _identity(self) -> dict[str, Any]:
        return {
            "seed": getattr(self.sampler, "seed", None),
            "samples": len(self.sampler),  # type: ignore[arg-type]
            "batch_size": int(self.batch_size),  # type: ignore[arg-type]
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches": self._position, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        now = self._identity()
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            log.warning(
                "not resuming the data loader mid-epoch: the data changed (%s); the epoch "
                "restarts from its first batch, so the run is no longer exact",
                detail,
            )
            return
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def _step_seed(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(map(str, ("step", *parts))).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class ExactResume(Callback):
    """Makes each training step's randomness a function of ``(seed, epoch, batch, rank)``
    (reseeds torch, ``random`` and numpy before every batch: microseconds), and checks
    that the resumable loader's count of handed-out batches matches the loop's batch index
    (if a Lightning version ever fetched ahead, resume would silently be off by a batch)."""

    def __init__(self) -> None:
        self._warned = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = _step_seed(_global_seed(), trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        loader = trainer.train_dataloader
        if (
            isinstance(loader, ResumableDataLoader)
            and loader.position != batch_idx + 1
            and not self._warned
        ):
            self._warned = True
            log.warning(
                "data loader position %d != batch %d + 1: a mid-epoch resume would repeat "
                "or skip batches (did Lightning start fetching ahead?)",
                loader.position,
                batch_idx,
            )


# --- non-finite loss / weights ---------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or ±Inf; training stopped before using it."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with NaN / Inf weights; it was not written."""


def _describe(value: torch.Tensor) -> str:
    value = value.detach()
    if value.numel() == 1:
        return f"{value.item():g}"
    bad = int((~torch.isfinite(value)).sum())
    return f"tensor with {bad}/{value.numel()} non-finite values"


def non_finite_names(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or Inf."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
    ]


class NonFiniteGuard(Callback):
    """Stops training at the first non-finite loss, before its backward pass, so no
    optimizer step ever uses it and the last checkpoint stays the last good one; and
    refuses to write a checkpoint whose weights are not finite.

    Cost: reading the loss's finiteness is a host sync (a GPU pipeline stall) and, under
    DDP, one all-reduce of a flag per checked step. ``check_every_n_steps=k`` checks every
    k-th step only (0: never); steps in between may then update the weights with a NaN,
    which the checkpoint check still catches before anything non-finite is saved.
    """

    def __init__(self, check_every_n_steps: int = 1, check_checkpoints: bool = True):
        self.check_every_n_steps = check_every_n_steps
        self.check_checkpoints = check_checkpoints

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        n = self.check_every_n_steps
        if n <= 0 or trainer.global_step % n:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        # every rank must stop together, or the others would hang in the gradient all-reduce
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(self._loss_message(trainer, pl_module, loss))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.check_checkpoints:
            return
        bad = non_finite_names(checkpoint.get("state_dict", {}))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteWeightsError(
                f"refusing to write a checkpoint at global step {trainer.global_step}: "
                f"non-finite weights in {shown}. {self._last_good(trainer)}"
            )

    @staticmethod
    def _last_good(trainer: L.Trainer) -> str:
        cb = trainer.checkpoint_callback
        path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if path:
            return f"The last good checkpoint is {path}."
        return "No checkpoint had been written yet."

    def _loss_message(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> str:
        where = (
            f"global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        msg = f"non-finite training loss at {where}: loss = {_describe(loss)}"
        terms = getattr(pl_module, "last_loss_terms", None) or {}
        bad = [k for k in non_finite_names(terms) if k != "loss"]  # loss: shown already
        if bad:
            msg += "; non-finite loss terms: " + ", ".join(
                f"{k} = {_describe(terms[k])}" for k in bad
            )
        return (
            f"{msg}. Training stopped before this step's backward pass, so no weights were "
            f"updated with it. {self._last_good(trainer)} Lower the learning rate or check "
            "the data / precision, then resume with --ckpt_path last."
        )


# --- pre-flight checks -----------------------------------------------------------------------
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
    """Add :class:`NonFiniteGuard` and :class:`ExactResume` unless the recipe already has
    them (e.g. a guard with ``check_every_n_steps``), before the checkpoint callbacks
    (Lightning runs those last)."""
    missing = [cls() for cls in (NonFiniteGuard, ExactResume) if not trainer_has(trainer, cls)]
    at = next(
        (i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)),
        len(trainer.callbacks),
    )
    trainer.callbacks[at:at] = missing


def trainer_has(trainer: L.Trainer, cls: type[Callback]) -> bool:
    return any(isinstance(cb, cls) for cb in trainer.callbacks)
