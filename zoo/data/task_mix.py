"""Multi-task training data: one task's batch per step, the task drawn with fixed ratios.

ViSFT's stage 2 (and mmf's multi-task training, which its official code runs on) trains on
several datasets at once by drawing, before every iteration, which dataset the next batch
comes from: mmf's ``RatiosIterationStrategy`` (``mmf/datasets/iteration_strategies.py``)
calls ``np.random.choice(len(loaders), p=sampling_ratios)`` on the main rank and
broadcasts the choice (``MultiDatasetLoader.change_dataloader``); a loader that runs out is
restarted (``__next__``, the non-exhausting strategies). ViSFT's stage-2 config
(``projects/visft/configs/stage2/eva_g/stage2.yaml``, ``multitasking``) sets the ratios to
caption 0.4, segmentation 0.3, detection 0.3, normalised to sum to 1.

:class:`TaskMixLoader` does the same with two changes that make a run reproducible and
resumable, and need no broadcast:

- **The draw is a pure function.** The task of step ``s`` of epoch ``e`` is
  ``searchsorted(cumsum(p), u)`` of a uniform ``u`` drawn by a ``torch.Generator`` seeded
  from ``(seed, e, s // 1024)`` (:class:`TaskSchedule`: blocks of 1,024 draws, so the task
  of a step does not even depend on the epoch length). Every rank uses the same seed (the
  one ``seed_everything`` exported), so under DDP every rank trains the same task at the
  same step and the ranks stay in lock-step (their collective calls match), while each
  task's own sampler is sharded by rank.
- **Positions are checkpointed.** ``state_dict()`` holds the epoch, the step within it,
  and for each task its pass (how many times its loader ran out) and the batches handed
  out in that pass; after ``load_state_dict()`` the next epoch of the same number resumes
  at the saved step, and each task's loader at its saved batch (a
  :class:`~zoo.data.resumable.ResumableDataLoader` skips them without reading; any other
  loader is replayed). A resumed run thus trains on exactly the batches an uninterrupted
  one would.

Each task's stream continues across epochs: a task loader that runs out starts its next
pass (``sampler.set_epoch(pass)``, a new permutation) wherever it is; an epoch of the mix
is ``steps_per_epoch`` steps (default: the sum of the task loaders' lengths), so every
sample is seen about as often as the ratios say, whatever the dataset sizes.

Lightning: the loader is sized (``len`` is the epoch's steps, which ``max_steps`` /
schedules read), Lightning's per-epoch ``set_epoch`` reaches :attr:`TaskMixLoader.sampler`
(the :class:`TaskSchedule`), and ``state_dict`` / ``load_state_dict`` make it a stateful
loader. Lightning does not wrap it (it is not a ``DataLoader``), so the task loaders get
their rank's shard from whoever builds them (:func:`task_loader`).

:class:`TaskSequenceLoader` is the evaluation counterpart: every task's loader in turn,
each batch tagged with its task.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import Dataset

from zoo.data.resumable import EpochSampler, ResumableDataLoader, identity_changes

log = logging.getLogger("zoo.data")

__all__ = [
    "TaskMixLoader",
    "TaskSchedule",
    "TaskSequenceLoader",
    "normalise_ratios",
    "task_loader",
    "task_seed",
]

#: Uniform draws per generator seed: the task of step ``s`` depends on ``(seed, epoch, s)`` only.
DRAW_BLOCK = 1024


def normalise_ratios(
    ratios: Mapping[str, float], tasks: Sequence[str], where: str = "task_ratios"
) -> dict[str, float]:
    """``ratios`` restricted to ``tasks`` and divided by their sum (mmf's
    ``RatiosIterationStrategy``). A ratio for a task not in ``tasks``, a task without a
    ratio, a negative ratio or an all-zero set is an error naming ``where``."""
    unknown = [t for t in ratios if t not in tasks]
    if unknown:
        raise ValueError(f"{where} names {unknown}, which are not trained tasks ({list(tasks)})")
    missing = [t for t in tasks if t not in ratios]
    if missing:
        raise ValueError(f"{where} gives no ratio for the tasks {missing} (tasks: {list(tasks)})")
    values = {t: float(ratios[t]) for t in tasks}
    if any(not v >= 0 for v in values.values()):  # also catches NaN
        raise ValueError(f"{where} must be >= 0, got {values}")
    total = sum(values.values())
    if total <= 0:
        raise ValueError(f"{where} must have a positive ratio, got {values}")
    return {t: v / total for t, v in values.items()}


def _mix(*parts: Any) -> int:
    """A well-mixed 63-bit seed from ``parts`` (neighbouring inputs give unrelated streams)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def task_seed(seed: int, task: str) -> int:
    """The data-order seed of one task's sampler: distinct per task (detection and
    segmentation read the same images; one seed would give them the same permutations),
    31 bits (``torch.Generator.manual_seed(seed + epoch)`` in the sampler stays in range)."""
    return _mix("task", seed, task) >> 32


class TaskSchedule:
    """The task index of every step: step ``s`` of epoch ``e`` draws task ``k`` with
    probability ``probabilities[k]`` from ``(seed, e, s)`` alone (module docstring).

    It plays the sampler of :class:`TaskMixLoader`: Lightning calls :meth:`set_epoch`
    before each training epoch."""

    def __init__(self, probabilities: Sequence[float], seed: int = 0):
        p = torch.tensor([float(x) for x in probabilities], dtype=torch.float64)
        if p.numel() == 0 or bool((p < 0).any()) or not torch.isclose(p.sum(), p.new_tensor(1.0)):
            raise ValueError(f"task probabilities must be >= 0 and sum to 1, got {p.tolist()}")
        self.probabilities = p
        cdf = torch.cumsum(p, 0)
        cdf[-1] = 1.0  # no u in [0, 1) may fall past the last task through rounding
        self._cdf = cdf
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _uniforms(self, epoch: int, block: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_mix("taskmix", self.seed, epoch, block))
        return torch.rand(DRAW_BLOCK, generator=generator, dtype=torch.float64)

    def draw(self, epoch: int, steps: int) -> torch.Tensor:
        """(steps,) long: the task index of steps ``0 .. steps - 1`` of ``epoch``."""
        blocks = -(-int(steps) // DRAW_BLOCK)
        if blocks == 0:
            return torch.zeros(0, dtype=torch.long)
        u = torch.cat([self._uniforms(epoch, b) for b in range(blocks)])[:steps]
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=len(self._cdf) - 1)


class _TaskStream:
    """One task's loader as an endless stream of batches: a pass that runs out starts the
    next (``sampler.set_epoch(pass)``); ``position`` counts the pass's batches handed out."""

    def __init__(self, name: str, loader: Iterable[Any]):
        if not isinstance(loader, Sized):
            raise TypeError(f"task {name!r}: its loader must have a length (a sized loader)")
        self.name, self.loader = name, loader
        self.pass_ = 0
        self.position = 0
        self._skip = 0
        self._iterator: Iterator[Any] | None = None

    def restore(self, pass_: int, batches: int) -> None:
        """Continue at batch ``batches`` of pass ``pass_`` (read at the next batch)."""
        self.pass_, self.position, self._skip = int(pass_), int(batches), int(batches)
        self._iterator = None

    def _open(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self.pass_)
        skip, self._skip = min(self._skip, len(self.loader)), 0
        if skip and isinstance(self.loader, ResumableDataLoader):
            if not isinstance(sampler, EpochSampler):
                raise TypeError(f"task {self.name!r}: a ResumableDataLoader needs an EpochSampler")
            # its own identity, so it accepts the position: it skips the batches unread
            state = self.loader.state_dict() | {"epoch": self.pass_, "batches": skip}
            self.loader.load_state_dict(state)
            self._iterator = iter(self.loader)
        else:
            self._iterator = iter(self.loader)
            for _ in range(skip):  # a plain loader can only replay its batches
                next(self._iterator)
        self.position = skip

    def next(self) -> Any:
        if self._iterator is None:
            self._open()
        try:
            batch = next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self.pass_ += 1
            self._open()
            try:
                batch = next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                raise RuntimeError(
                    f"task {self.name!r}: its loader yields no batch (fewer samples than one "
                    "batch with drop_last?)"
                ) from None
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_, "batches": self.position, "length": len(self.loader)}


class TaskMixLoader:
    """Each step, the next batch of ONE task, drawn with probabilities ``ratios``.

    ``loaders``: task name → a sized loader of dict batches (typically
    :func:`task_loader`); ``ratios``: task name → weight, renormalised over the loaders
    (:func:`normalise_ratios`); ``seed``: the draw's seed, the same on every rank;
    ``steps_per_epoch``: the epoch's length (default: the sum of the loaders' lengths).
    Each batch gets ``batch[task_key] = name``. See the module docstring for determinism,
    resume and Lightning.
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable[Any]],
        ratios: Mapping[str, float],
        seed: int = 0,
        steps_per_epoch: int | None = None,
        task_key: str = "task",
    ):
        if not loaders:
            raise ValueError("TaskMixLoader needs at least one task loader")
        self.names: list[str] = list(loaders)
        self.ratios = normalise_ratios(ratios, self.names)
        self._streams = {name: _TaskStream(name, loader) for name, loader in loaders.items()}
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = (
            int(steps_per_epoch)
            if steps_per_epoch is not None
            else sum(len(s.loader) for s in self._streams.values())  # type: ignore[arg-type]
        )
        self.task_key = task_key
        #: the task schedule; Lightning's ``set_epoch`` reaches it through this name
        self.sampler = TaskSchedule([self.ratios[n] for n in self.names], seed)
        self._epoch = 0
        self._step = 0
        self._resume: dict[str, Any] | None = None

    @property
    def loaders(self) -> dict[str, Iterable[Any]]:
        return {name: s.loader for name, s in self._streams.items()}

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def epoch(self) -> int:
        """The epoch being iterated (read when its first batch is drawn)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Steps of the current epoch handed out so far (skipped ones included)."""
        return self._step

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def tasks(self, epoch: int) -> list[str]:
        """The task of every step of ``epoch``."""
        return [self.names[k] for k in self.sampler.draw(epoch, len(self)).tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._steps()

    def _steps(self) -> Iterator[dict[str, Any]]:
        # lazy: the epoch is read at the first next(), after Lightning's set_epoch
        epoch, start = self.sampler.epoch, 0
        if self._resume is not None:
            saved, self._resume = self._resume, None
            for name, stream in saved["streams"].items():
                self._streams[name].restore(stream["pass"], stream["batches"])
            if saved["epoch"] == epoch:
                start = min(saved["step"], len(self))
        order = self.sampler.draw(epoch, len(self)).tolist()
        self._epoch, self._step = epoch, start
        for step in range(start, len(self)):
            name = self.names[order[step]]
            batch = self._streams[name].next()
            if not isinstance(batch, MutableMapping):
                raise TypeError(
                    f"task {name!r}: batches must be dicts to carry {self.task_key!r}, "
                    f"got {type(batch).__name__}"
                )
            batch[self.task_key] = name
            self._step += 1  # before yielding: a checkpoint taken now counts this batch
            yield batch  # type: ignore[misc]

    # --- checkpointing ---------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "tasks": list(self.names),
            "ratios": [self.ratios[n] for n in self.names],
            "steps_per_epoch": self.steps_per_epoch,
            "lengths": [len(s.loader) for s in self._streams.values()],  # type: ignore[arg-type]
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "step": self._step,
            "streams": {name: s.state_dict() for name, s in self._streams.items()},
            **self._identity(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved step and task positions (from the next epoch's first draw;
        a state of another epoch restores only the task positions). A state of other
        data (seed, tasks, ratios, lengths) is refused with a warning: the epoch then
        restarts from its first step."""
        detail = identity_changes(state, self._identity())
        if detail:
            log.warning(
                "not resuming the task mix mid-epoch: the data changed (%s); the epoch "
                "restarts from its first step, so the run is no longer exact",
                detail,
            )
            return
        self._resume = {
            "epoch": int(state["epoch"]),
            "step": int(state["step"]),
            "streams": {n: dict(s) for n, s in state["streams"].items()},
        }


class TaskSequenceLoader:
    """Every task's loader in turn (evaluation, validation loss), each dict batch tagged
    ``batch[task_key] = name``; ``len`` is the sum of the loaders' lengths."""

    def __init__(self, loaders: Mapping[str, Iterable[Any]], task_key: str = "task"):
        self.loaders = dict(loaders)
        self.task_key = task_key

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name, loader in self.loaders.items():
            for batch in loader:
                batch[self.task_key] = name
                yield batch


def task_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    collate_fn: Any = None,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ResumableDataLoader:
    """One task's training loader: a :class:`~zoo.data.resumable.ResumableDataLoader` over
    an :class:`~zoo.data.resumable.EpochSampler` (order a function of ``(seed, pass)``,
    sample randomness of ``(seed, pass, index)``, sharded ``rank`` of ``num_replicas``)."""
    sampler = EpochSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)  # type: ignore[arg-type]
    return ResumableDataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        drop_last=drop_last,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # a private generator: iter() draws the workers' base seed from it, not from the
        # global RNG the training step uses
        generator=torch.Generator().manual_seed(seed),
    )
