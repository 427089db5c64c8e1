"""``GeoFeatureDataModule``: geo-tagged image features for location encoders (CSP).

Reads CSP's layout (:mod:`zoo.data.geo`) or writes the synthetic geo world
(:mod:`zoo.data.geo_world`) in that layout in ``prepare_data`` and reads it back. Training
runs in two stages, as the CSP code's ``train_unsuper.py`` (``--do_unsuper_train T
--do_super_train T``) in one fit; the module says which stage an epoch belongs to
(``training_stage(epoch)``) and the loader of that stage is built at the start of the epoch
(``trainer.reload_dataloaders_every_n_epochs: 1``):

- ``pretrain``: every training image with a location, labels hidden (self-supervised);
- ``finetune``: the labelled subset (``labelled_fraction`` of the training images,
  :func:`zoo.data.geo.labelled_subset`, seeded by ``labelled_seed``), with labels.

``balanced_per_class`` draws at most that many images per class each epoch (the code's
``BalancedSampler``, ``max_num_exs_per_class`` 100) in the fine-tuning stage; with
``balanced_pretrain`` also in pre-training, as the official code does (its pre-training
loader is the same class-balanced training loader, so the labels shape which unlabelled
images an epoch sees); the default keeps pre-training free of labels, as the paper
describes it.

Evaluation splits (``test``) keep images without a location (NaN coordinates); the
evaluation callback (:class:`zoo.eval.geo.GeoPriorEval`) reads them with
:meth:`GeoFeatureDataModule.geo_records`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, default_collate

from zoo.data.geo import (
    GeoFeatureDataset,
    GeoRecords,
    GeoSplitSpec,
    LabelledSampling,
    labelled_subset,
    read_categories,
    read_geo_split,
)
from zoo.data.geo_world import SyntheticGeoWorld
from zoo.datamodule import ZooDataModule
from zoo.specs import to_spec

STAGES = ("pretrain", "finetune")


class GeoFeatureDataModule(ZooDataModule):
    """Pre-extracted image features with (lon, lat) and labels.

    Args:
        root: folder the split paths are relative to (with ``synthetic``: the world's).
        train: the training split, a :class:`zoo.data.geo.GeoSplitSpec` (with
            ``synthetic``: default the world's ``train``).
        test: the evaluation split (with ``synthetic``: default the world's ``test``).
        categories: the class-name file (``categories2018.json``, ``category.json``).
        synthetic: a :class:`zoo.data.geo_world.SyntheticGeoWorld` written by
            ``prepare_data``; its folder becomes ``root``.
        labelled_fraction: the share of training images whose labels the fine-tuning stage
            uses (the code's ``train_sample_ratio``; 0.05 in the run scripts).
        labelled_sampling: ``stratified`` (``stratified-fix``) or ``random``.
        labelled_seed: seed of the labelled subset (fixed, like the code's saved indices).
        balanced_per_class: at most this many images per class per epoch (``None``: all).
        balanced_pretrain: apply ``balanced_per_class`` in pre-training too (official code).
        batch_size: training batch (the code's 1024).
        eval_batch_size: evaluation batch (default ``batch_size``).
        num_workers: loader worker processes.
        pin_memory: pinned host memory for the loaders.
        drop_last: drop the last partial training batch (the code keeps it: False).
    """

    collate_fn = staticmethod(default_collate)

    def __init__(
        self,
        root: str | None = None,
        train: GeoSplitSpec | None = None,
        test: GeoSplitSpec | None = None,
        categories: str | None = None,
        synthetic: SyntheticGeoWorld | None = None,
        labelled_fraction: float = 0.05,
        labelled_sampling: LabelledSampling = "stratified",
        labelled_seed: int = 0,
        balanced_per_class: int | None = None,
        balanced_pretrain: bool = False,
        batch_size: int = 1024,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
    ):
        super().__init__(batch_size, num_workers, pin_memory, drop_last, eval_batch_size)
        if not 0 < labelled_fraction <= 1:
            raise ValueError(f"data.labelled_fraction must be in (0, 1], got {labelled_fraction}")
        if balanced_per_class is not None and balanced_per_class < 1:
            raise ValueError(f"data.balanced_per_class must be >= 1, got {balanced_per_class}")
        self.synthetic = None if synthetic is None else to_spec(SyntheticGeoWorld, synthetic)
        if self.synthetic is not None:
            self.generated.append(self.synthetic)
            train = train or SyntheticGeoWorld.split("train")
            test = test or SyntheticGeoWorld.split("test")
            categories = categories or "categories.json"
        if train is None:
            raise ValueError("data.train is not set: give its features and metadata files")
        self.root = root
        self.categories = categories
        self.splits = {
            "train": to_spec(GeoSplitSpec, train),
            "test": None if test is None else to_spec(GeoSplitSpec, test),
        }
        self.labelled_fraction = labelled_fraction
        self.labelled_sampling = labelled_sampling
        self.labelled_seed = labelled_seed
        self.balanced_per_class = balanced_per_class
        self.balanced_pretrain = balanced_pretrain
        self.classnames: list[str] | None = None
        self.train_records: GeoRecords | None = None
        self.labelled_index: np.ndarray | None = None
        self._records: dict[str, GeoRecords] = {}

    # --- files --------------------------------------------------------------------------------
    def data_root(self) -> Path | None:
        if self.synthetic is not None:
            return self.synthetic.locate()
        return None if self.root is None else Path(self.root).expanduser()

    def setup(self, stage: str | None = None) -> None:
        if self.train_records is not None:
            return
        root = self.data_root()
        if self.categories is not None:
            path = Path(self.categories).expanduser()
            path = path if path.is_absolute() or root is None else root / path
            self.classnames = read_categories(path)
        self.train_records = read_geo_split(self.splits["train"], root, "data.train", "drop")
        labels = self.train_records.labels
        if self.classnames is not None and labels.max(initial=-1) >= len(self.classnames):
            raise ValueError(
                f"data.train: label {int(labels.max())} is out of range for the "
                f"{len(self.classnames)} classes of {self.categories}"
            )
        self.labelled_index = labelled_subset(
            labels, self.labelled_fraction, self.labelled_sampling, self.labelled_seed
        )
        if stage in (None, "fit"):
            self.open_eval_splits("test")

    @property
    def feature_dim(self) -> int:
        self.setup()
        return int(self.train_records.features.shape[1])

    @property
    def num_classes(self) -> int | None:
        self.setup()
        if self.classnames is not None:
            return len(self.classnames)
        return int(self.train_records.labels.max(initial=-1)) + 1 or None

    # --- training -----------------------------------------------------------------------------
    def training_stage(self) -> str:
        """The stage of the epoch about to start, as the module says (``pretrain`` when the
        module does not say: a datamodule used on its own)."""
        trainer = self.trainer
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        stage_at = getattr(module, "training_stage", None)
        stage = stage_at(trainer.current_epoch) if callable(stage_at) else "pretrain"
        if stage not in STAGES:
            raise ValueError(f"training stage {stage!r} is not one of {STAGES}")
        return stage

    def stage_dataset(self, stage: str) -> Dataset:
        self.setup()
        if stage == "pretrain":
            balanced = self.balanced_per_class if self.balanced_pretrain else None
            return GeoFeatureDataset(self.train_records, show_labels=False, max_per_class=balanced)
        labelled = self.train_records.subset(self.labelled_index)
        return GeoFeatureDataset(labelled, max_per_class=self.balanced_per_class)

    def train_dataloader(self) -> Any:
        stage = self.training_stage()
        dataset = self.stage_dataset(stage)
        self.check_train_size(
            dataset, "data.train" if stage == "pretrain" else "data.train (labelled subset)"
        )
        return self._loader(dataset, train=True)

    # --- evaluation ---------------------------------------------------------------------------
    def geo_records(self, split: str) -> GeoRecords:
        """A split's records for evaluation: ``train`` is the labelled subset; other splits
        keep images without a location (NaN)."""
        self.setup()
        if split == "train":
            return self.train_records.subset(self.labelled_index)
        if split not in self._records:
            spec = self.splits.get(split)
            if spec is None:
                raise ValueError(f"no {split!r} data configured (set data.{split})")
            self._records[split] = read_geo_split(spec, self.data_root(), f"data.{split}", "keep")
        return self._records[split]

    def build_eval_dataset(self, split: str) -> Dataset:
        return GeoFeatureDataset(self.geo_records(split))
