"""Training data that resumes exactly: the epoch sampler and the resumable loader.

The non-finite guard and :class:`zoo.callbacks.ExactResume` are in :mod:`zoo.callbacks`, the
pre-flight checks of output directories in :mod:`zoo.preflight` (all on by default in
``zoo fit``).

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
  trained on; :class:`zoo.callbacks.ExactResume` checks this every step.
- step randomness (dropout, masking): :class:`zoo.callbacks.ExactResume` reseeds torch / ``random`` /
  numpy before each training batch from ``(seed, epoch, batch, rank)``.
- the LR schedule and optimizer are in the checkpoint; the schedule's length comes from
  ``len(loader)``, which a resumed loader keeps.

``--ckpt_path last`` is resolved by :func:`zoo.preflight.find_last_checkpoint` across all logger version
directories (Lightning itself only looks in the new run's empty ``version_N+1``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sized
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from zoo.data.samples import SampleKey

log = logging.getLogger("zoo.data")


def global_seed() -> int:
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


def identity_changes(state: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """What differs between a saved loader state's identity (seed, dataset size, ...) and the
    loader's now, as ``"key old -> new, ..."``; ``None`` when the state fits (resume exactly)."""
    changed = [(k, state.get(k), v) for k, v in now.items() if state.get(k) != v]
    return ", ".join(f"{k} {old} -> {new}" for k, old, new in changed) or None


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
        detail = identity_changes(state, self._identity())
        if detail:
            log.warning(
                "not resuming the data loader mid-epoch: the data changed (%s); the epoch "
                "restarts from its first batch, so the run is no longer exact",
                detail,
            )
            return
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
