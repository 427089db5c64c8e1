"""``ZooDataModule``: what every family's datamodule shares.

- loaders: the training loader resumes exactly (:mod:`zoo.data.resumable`), evaluation
  loaders keep the dataset order; per-split batch sizes (``batch_size`` for training,
  ``eval_batch_size`` for validation, test and the evaluation splits);
- ``collate_fn``: a class attribute a family overrides (default
  :func:`zoo.data.collate_samples`);
- ``prepare_data``: writes embedded or generated data (:attr:`generated`), once per node
  on local rank 0; ``setup`` then only reads it, from deterministic paths, so the other
  ranks find what local rank 0 wrote. ``__init__`` validates arguments and writes nothing;
- the evaluation-split protocol the evaluation callbacks call, over the ``splits`` dict
  (name → split config with a ``where``, or ``None``): :meth:`has_eval_split`,
  :meth:`check_eval_split`, :meth:`eval_dataloader`, ``classnames`` and ``templates``;
- ``preprocess``: the :class:`zoo.preprocess.PreprocessSpec` its evaluation pixels come from.

The datamodules themselves: :class:`zoo.data.image_text_datamodule.ImageTextDataModule`
(image–caption pairs, CLIP / SLIP) and
:class:`zoo.data.labelled_datamodule.LabelledImageDataModule` (class-labelled images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from zoo.data.collate import collate_samples

if TYPE_CHECKING:
    from zoo.preprocess import PreprocessSpec

log = logging.getLogger("zoo.data")


class GeneratedData(Protocol):
    """Data a datamodule writes itself (embedded digits, a family's generator).

    ``write`` is idempotent and atomic (a temp folder renamed into place), called by
    ``prepare_data``; ``locate`` finds the written copy without writing, called by
    ``setup`` on every rank (``FileNotFoundError`` when it was not written).
    """

    def write(self) -> Any: ...

    def locate(self) -> Any: ...


class ZooDataModule(L.LightningDataModule):
    """Loaders, exact resume, per-split batch sizes, ``prepare_data`` and the evaluation-split
    protocol; subclasses fill ``self.splits`` and build ``self.train_set`` / ``self.val_set``
    in ``setup`` and each evaluation split in :meth:`build_eval_dataset`."""

    #: Batches a list of sample dicts. Override with ``staticmethod(fn)`` of a module-level
    #: function, so DataLoader workers can pickle it under ``spawn``.
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] = staticmethod(collate_samples)
    #: Zero-shot class names / prompt templates of the labelled splits (``None``: none).
    classnames: list[str] | None = None
    templates: list[str] | None = None

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1, got {eval_batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        #: split name -> its config (anything with a ``where`` string), None when not set
        self.splits: dict[str, Any] = {}
        #: evaluation datasets built so far (eval transforms), shared by every callback
        self.eval_sets: dict[str, Dataset] = {}
        #: data written by prepare_data
        self.generated: list[GeneratedData] = []
        self._train_loader: Any = None  # the ResumableDataLoader, for state_dict()
        self._train_loader_state: dict[str, Any] | None = None

    @property
    def preprocess(self) -> PreprocessSpec | None:
        """Image size, resize, mean / std, interpolation, tokenizer and context length of
        this data (``None``: a datamodule without images, e.g. a test double)."""
        return None

    # --- prepare_data -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write embedded / generated data (Lightning calls this on local rank 0 of each
        node, before ``setup`` on every rank)."""
        for data in self.generated:
            data.write()

    # --- loaders ----------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, train: bool, batch_size: int | None = None) -> DataLoader:
        """Eval loaders keep the dataset order. Map-style training data goes through
        :class:`zoo.data.resumable.ResumableDataLoader`: order a function of (seed, epoch), sample
        randomness of (seed, epoch, index), position checkpointed, so a resumed run is
        exact. Iterable (WebDataset) training data shuffles in its own buffer."""
        common: dict[str, Any] = {
            "batch_size": batch_size or (self.batch_size if train else self.eval_batch_size),
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0 and train,
            "collate_fn": self.collate_fn,
        }
        if train and not isinstance(dataset, IterableDataset):
            return self._resumable_loader(dataset, common)
        return DataLoader(dataset, shuffle=False, drop_last=train and self.drop_last, **common)

    def _resumable_loader(self, dataset: Dataset, common: dict[str, Any]) -> DataLoader:
        from zoo.data.resumable import EpochSampler, ResumableDataLoader, global_seed

        # the seed seed_everything exported, as Lightning's own DistributedSampler uses
        seed = global_seed()
        trainer = self.trainer
        shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        sampler = EpochSampler(dataset, seed=seed, **shard)
        loader = ResumableDataLoader(
            dataset,
            sampler=sampler,
            drop_last=self.drop_last,
            # a private generator: iter() draws the workers' base seed from it, not from
            # the global RNG the training step uses
            generator=torch.Generator().manual_seed(seed),
            **common,
        )
        if self._train_loader_state is not None:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    # The training loader's position travels in the datamodule's checkpoint state, not only
    # in Lightning's own stateful-loader slot: Lightning 2.6 never loads the latter when
    # configure_optimizers reads trainer.estimated_stepping_batches, as ZooModule does (the
    # loader is built before the loop state is restored; Lightning issue #20550).
    def state_dict(self) -> dict[str, Any]:
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self._train_loader is not None:  # strategies that restore after setup
            self._train_loader.load_state_dict(state)
        else:
            self._train_loader_state = state

    def check_train_size(self, dataset: Dataset, where: str = "data.train") -> None:
        """Fail, naming ``where``, unless ``dataset`` gives every rank one full batch
        (``drop_last``) or at least one sample: a smaller set would exit 0 with "no training
        batches", leaving no checkpoint and no evaluation. Streamed sets are not sized."""
        if isinstance(dataset, IterableDataset):
            return  # streamed: its size is data.epoch_samples
        world = self.trainer.world_size if self.trainer is not None else 1
        needed = self.batch_size * world if self.drop_last else world
        have = len(dataset)
        if have < needed:
            what = (
                f"one full batch per rank (batch_size {self.batch_size} x {world} ranks)"
                if self.drop_last
                else f"one sample per rank ({world} ranks)"
            )
            raise ValueError(
                f"{where} holds {have} samples; training needs at least {needed}: {what}"
                + ("" if have else " (is the table empty, or only a header?)")
            )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation split; in ``zoo validate`` without one, the labelled test split
        (so the recipe's evaluation callbacks have an epoch to run in)."""
        if self.val_set is not None:
            return self._loader(self.val_set, train=False)
        # state.fn, not trainer.validating: fit also sets ``validating`` when it builds the
        # val loaders (on a resumed fit, which skips the sanity check), and fit must not
        # start validating on the test split
        validate = self.trainer is not None and self.trainer.state.fn == TrainerFn.VALIDATING
        if validate and self.has_eval_split("test"):
            return self.eval_dataloader("test")
        return []

    def test_dataloader(self) -> DataLoader | list:
        return self.eval_dataloader("test") if self.has_eval_split("test") else []

    # --- the evaluation-split protocol ------------------------------------------------------
    def build_eval_dataset(self, split: str) -> Dataset:
        """The dataset of configured split ``split`` with evaluation transforms."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation splits")

    def require_labels(self, split: str, who: str) -> None:
        """Fail, naming the split and its columns, when ``split`` has no label column at
        all (checked before the data is read). Default: nothing to check up front."""

    def split_has_captions(self, split: str) -> bool:
        """Whether ``split`` has caption text (retrieval needs it)."""
        return False

    def eval_split_name(self, split: str) -> str:
        """``"train"`` as an evaluation split is the labelled set probes and kNN are fitted
        on: ``probe_train`` when configured (e.g. ImageNet train for a YFCC15M model), else
        the training data itself (with evaluation transforms)."""
        if split == "train" and self.splits.get("probe_train") is not None:
            return "probe_train"
        return split

    def has_eval_split(self, split: str) -> bool:
        return self.splits.get(self.eval_split_name(split)) is not None

    def _where(self, split: str) -> str:
        spec = self.splits.get(split)
        return getattr(spec, "where", None) or f"data.{split}"

    def eval_set(self, split: str) -> Dataset:
        """The cached evaluation dataset of configured split ``split`` (built once, reused by
        every callback). Bad images are dropped and counted, not replaced."""
        dataset = self.eval_sets.get(split)
        if dataset is None:
            if self.splits.get(split) is None:
                raise ValueError(f"no {split!r} data configured (set data.{split})")
            dataset = self.build_eval_dataset(split)
            if hasattr(dataset, "on_bad"):
                dataset.on_bad = "drop"  # a probe fitted on N images never includes stand-ins
            if not isinstance(dataset, IterableDataset) and len(dataset) == 0:
                raise ValueError(f"{self._where(split)} holds no samples")
            self.eval_sets[split] = dataset
        return dataset

    def open_eval_splits(self, *names: str) -> None:
        """Open every configured split of ``names`` now (``setup("fit")``), so a missing
        column or an empty table fails before the first training step."""
        for name in names:
            if self.splits.get(name) is not None:
                self.eval_set(name)

    def check_eval_split(
        self, split: str, who: str, labels: bool = True, captions: bool = False
    ) -> None:
        """Fail now, naming the split and the problem, if evaluation ``who`` could not run
        on ``split``: not configured, empty, no label column / no labelled sample (with
        ``labels``), no caption column (with ``captions``), or labels outside the class
        list. Called by the evaluation callbacks at fit start."""
        name = self.eval_split_name(split)
        if self.splits.get(name) is None:
            raise ValueError(f"{who} evaluates on the {split!r} split, but data.{name} is not set")
        where = self._where(name)
        if labels:
            self.require_labels(name, who)
        dataset = self.eval_set(name)
        if captions and not self.split_has_captions(name):
            raise ValueError(f"{who} needs captions, but {where} has no caption column")
        values = getattr(dataset, "labels", None)
        if labels and values is not None:
            values = torch.as_tensor(values)
            known = values[values >= 0]
            if len(known) == 0:
                column = getattr(self.splits[name], "label_key", None)
                what = f"column {column!r} has no labels" if column else "has no labels"
                raise ValueError(f"{where}: {what} (all empty); {who} needs labelled samples")
            classes = len(self.classnames or ())
            if classes and int(known.max()) >= classes:
                raise ValueError(
                    f"{where}: label {int(known.max())} is out of range for the "
                    f"{classes} classnames"
                )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Eval-transformed, labelled loader used by the evaluation callbacks (``"train"``:
        see :meth:`eval_split_name`), at ``eval_batch_size``."""
        return self._loader(self.eval_set(self.eval_split_name(split)), train=False)


# The datamodules built on ZooDataModule, importable from here as before (lazily: they
# import this module).
_REEXPORTS = {
    "ImageTextDataModule": "zoo.data.image_text_datamodule",
    "Source": "zoo.data.image_text_datamodule",
    "LabelledImageDataModule": "zoo.data.labelled_datamodule",
    "DigitsSpec": "zoo.data.embedded",
    "resolve_path": "zoo.data.splits",
}


def __getattr__(name: str) -> Any:
    if name in _REEXPORTS:
        import importlib

        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
