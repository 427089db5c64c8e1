"""``ZooDataModule`` base and the image–text datamodule CLIP-family papers build on.

Sources (``source``): ``csv`` / ``jsonl`` tables with an image folder, WebDataset shards
(``wds``), Hugging Face ``datasets`` (``hf``: an imagefolder directory or parquet files), or
``digits``: scikit-learn's embedded handwritten digits, written once to disk in one of the
real formats (``digits_format``) and read back through the same loader.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from zoo.data.samples import DEFAULT_MAX_PIXELS, SkipReplaceDataset, check_max_pixels
from zoo.data.splits import ResolvedSplit, SplitSpec, as_spec, peek_columns, resolve_split

log = logging.getLogger("zoo.data")

Source = Literal["csv", "jsonl", "wds", "hf", "digits"]


@dataclass
class DigitsSpec:
    """The embedded digits image–text set (SLIP card, small-scale reproduction)."""

    size: int = 16
    format: Literal["csv", "jsonl", "wds", "hf"] = "csv"
    test_fraction: float = 0.3
    caption_noise: float = 0.3
    seed: int = 0
    cache_dir: str | None = None


class ZooDataModule(L.LightningDataModule):
    """Loader settings shared by every datamodule; subclasses build ``self.train_set``."""

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._train_loader: Any = None  # the ResumableDataLoader, for state_dict()
        self._train_loader_state: dict[str, Any] | None = None

    def _loader(self, dataset: Dataset, train: bool, batch_size: int | None = None) -> DataLoader:
        """Eval loaders keep the dataset order. Map-style training data goes through
        :class:`zoo.data.resumable.ResumableDataLoader`: order a function of (seed, epoch), sample
        randomness of (seed, epoch, index), position checkpointed, so a resumed run is
        exact. Iterable (WebDataset) training data shuffles in its own buffer."""
        from zoo.data import collate_samples

        common: dict[str, Any] = {
            "batch_size": batch_size or self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0 and train,
            "collate_fn": collate_samples,
        }
        if train and not isinstance(dataset, IterableDataset):
            return self._resumable_loader(dataset, common)
        return DataLoader(dataset, shuffle=False, drop_last=train and self.drop_last, **common)

    def _resumable_loader(self, dataset: Dataset, common: dict[str, Any]) -> DataLoader:
        from zoo.data.resumable import EpochSampler, ResumableDataLoader

        # the seed seed_everything exported, as Lightning's own DistributedSampler uses
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
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

    def has_eval_split(self, split: str) -> bool:
        return False

    def eval_dataloader(self, split: str) -> DataLoader:
        raise NotImplementedError(f"{type(self).__name__} has no labelled {split!r} split")


def resolve_path(root: Path | None, path: str | None) -> str | None:
    """``path`` relative to the data root (absolute paths and remote URLs unchanged)."""
    if path is None:
        return None
    if "://" in path:  # remote URL (pipe:, s3:, https:) handled by the reader
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or root is None else root / p)


def _check_exists(path: str, what: str) -> None:
    if "://" in path or path.startswith("pipe:"):
        return
    from braceexpand import braceexpand

    for p in braceexpand(path):
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} not found: {p}")


def _load_list(value: list[str] | str | None, root: Path | None) -> list[str] | None:
    """A list given inline, or a path to a JSON list / text file (one item per line)."""
    if value is None or isinstance(value, list):
        return value
    if value.startswith("builtin:"):
        return _builtin_list(value.removeprefix("builtin:"))
    path = Path(resolve_path(root, value))
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    text = path.read_text()
    return (
        json.loads(text) if path.suffix == ".json" else [s for s in text.splitlines() if s.strip()]
    )


def _builtin_list(name: str) -> list[str]:
    from open_clip import zero_shot_metadata as meta

    lists = {
        "imagenet": meta.IMAGENET_CLASSNAMES,
        "openai_imagenet": [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES],
        "simple_imagenet": [t("{}") for t in meta.SIMPLE_IMAGENET_TEMPLATES],
    }
    if name not in lists:
        raise ValueError(f"unknown builtin list {name!r}; known: {', '.join(lists)}")
    return list(lists[name])


class ImageTextDataModule(ZooDataModule):
    """Image–caption pairs for contrastive pre-training, plus labelled splits for evaluation.

    Splits (``train`` / ``val`` / ``test`` / ``probe_train``) are each a path relative to
    ``root`` (a table, a shard pattern such as ``cc3m-{000000..000575}.tar``, an imagefolder
    directory or a parquet file) or a mapping that also sets that split's own ``source``,
    ``image_root``, ``image_key``, ``caption_keys``, ``label_key`` and ``transform``
    (:class:`zoo.data.splits.SplitSpec`), e.g. WebDataset pre-training data with an ImageNet
    CSV to evaluate on: ``test: {source: csv, path: imagenet/val.csv}``. Datamodule-level
    ``source`` / ``image_root`` / ``image_key`` / ``caption_keys`` / ``label_key`` are the
    defaults of every split.

    ``test`` and ``probe_train`` (default: ``train``) need a label column for zero-shot and
    probe evaluation, with ``classnames`` and zero-shot ``templates``: inline lists, JSON /
    text files, or ``builtin:imagenet`` / ``builtin:openai_imagenet`` (the ImageNet class
    names and OpenAI's 80 prompt templates, as shipped with open_clip).
    ``num_views`` extra views with the ``view_transform`` stack are added to each training
    sample (SLIP: 2 SimCLR views). WebDataset shards that are local files are read by index
    (``wds_access: auto``/``indexed``): one epoch is one globally shuffled pass and a resumed
    run is exact; remote shards (or ``wds_access: stream``) are streamed with a shuffle
    buffer and need ``epoch_samples`` (samples per epoch).

    Bad input: a bad training image is replaced by a readable neighbour and counted; a bad
    evaluation image is dropped and counted (the evaluation prints how many). Images over
    ``max_pixels`` are decoded at reduced size (JPEG) or skipped. ``bad_rows: skip`` skips
    and counts table rows that cannot be decoded as UTF-8 instead of failing. At the start
    of ``fit`` every configured split is opened and checked (see :meth:`check_eval_split`
    and :meth:`setup`), so a missing column or an empty table fails before the first step.
    Paper datamodules subclass this and set the ``default_*`` class attributes.
    """

    default_train_transform = "clip"
    default_view_transform = "ssl"
    default_num_views = 0

    def __init__(
        self,
        source: Source = "csv",
        root: str | None = None,
        train: str | SplitSpec | None = None,
        val: str | SplitSpec | None = None,
        test: str | SplitSpec | None = None,
        probe_train: str | SplitSpec | None = None,
        image_root: str | None = None,
        image_key: str | None = None,
        caption_keys: list[str] | str | None = None,
        label_key: str | None = None,
        classnames: list[str] | str | None = None,
        templates: list[str] | str | None = None,
        tokenizer: str = "clip-bpe",
        context_length: int = 77,
        image_size: int = 224,
        train_transform: str | None = None,
        eval_transform: str = "eval",
        view_transform: str | None = None,
        num_views: int | None = None,
        solarize_p: float = 0.0,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        epoch_samples: int | None = None,
        shuffle_buffer: int = 5000,
        wds_access: Literal["auto", "indexed", "stream"] = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        bad_rows: Literal["error", "skip"] = "error",
        digits: DigitsSpec | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
    ):
        super().__init__(batch_size, num_workers, pin_memory, drop_last)
        # stored in checkpoints (datamodule_hyper_parameters): export reads the preprocessing
        self.save_hyperparameters()
        self.source = source
        self._caption_keys = [caption_keys] if isinstance(caption_keys, str) else caption_keys
        self.label_key = label_key
        self.image_key = image_key
        self.tokenizer_name = tokenizer
        self.context_length = context_length
        self.image_size = image_size
        self.train_transform_name = train_transform or self.default_train_transform
        self.eval_transform_name = eval_transform
        self.view_transform_name = view_transform or self.default_view_transform
        self.num_views = self.default_num_views if num_views is None else num_views
        self.solarize_p = solarize_p
        self.mean, self.std = mean, std
        self.epoch_samples = epoch_samples
        self.shuffle_buffer = shuffle_buffer
        self.wds_access = wds_access
        self.max_pixels = check_max_pixels(max_pixels)
        self.bad_rows = bad_rows
        self._tokenizer = None
        self._eval_sets: dict[str, Dataset] = {}

        if source == "digits":
            specs, root_path = self._init_digits(digits or DigitsSpec()), None
        else:
            root_path = Path(root).expanduser() if root else None
            if root_path is not None and not root_path.exists():
                raise FileNotFoundError(f"data root not found: {root_path}")
            specs = {"train": train, "val": val, "test": test, "probe_train": probe_train}
            self.classnames = _load_list(classnames, root_path)
            self.templates = _load_list(templates, root_path)
        self.image_root = resolve_path(root_path, image_root)
        if self.image_root is not None:
            _check_exists(self.image_root, "image root")
        self.splits: dict[str, ResolvedSplit | None] = {}
        for name, value in specs.items():
            spec = as_spec(value)
            self.splits[name] = None if spec is None else self._resolve_split(name, spec, root_path)
        train_split = self.splits["train"]
        if (
            train_split is not None
            and train_split.source == "wds"
            and not self.epoch_samples
            and not self._indexed(train_split.path)
        ):
            raise ValueError(
                "streamed WebDataset sources need data.epoch_samples (samples per epoch)"
            )

    def _resolve_split(self, name: str, spec: SplitSpec, root: Path | None) -> ResolvedSplit:
        resolved = resolve_split(
            name,
            spec,
            source=self.source,
            image_root=None,  # applied below: a split's own image_root wins
            caption_keys=self._caption_keys,
            label_key=self.label_key,
            root=root,
        )
        _check_exists(resolved.path, f"{name} data")
        if resolved.image_root is not None:
            _check_exists(resolved.image_root, f"{name} image root")
        return dataclasses.replace(
            resolved,
            image_root=resolved.image_root or self.image_root,
            image_key=resolved.image_key or self.image_key,
        )

    def _init_digits(self, spec: DigitsSpec) -> dict[str, SplitSpec | None]:
        from zoo.data import build_digits

        built = build_digits(
            root=spec.cache_dir,
            size=spec.size,
            fmt=spec.format,
            test_fraction=spec.test_fraction,
            caption_noise=spec.caption_noise,
            seed=spec.seed,
        )
        self.source = {"csv": "csv", "jsonl": "jsonl", "wds": "wds", "hf": "hf"}[spec.format]
        self.classnames = list(built.classnames)
        self.templates = list(built.templates)
        if self.source == "wds" and not self.epoch_samples:
            self.epoch_samples = built.num_train
        return {
            "train": _as_str(built.train),
            "val": None,
            "test": _as_str(built.test),
            "probe_train": None,
        }

    @property
    def paths(self) -> dict[str, str | None]:
        """Each split's resolved path (``None`` when not configured)."""
        return {name: (s.path if s else None) for name, s in self.splits.items()}

    # --- pieces -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from zoo.data import TextTokenizer

            self._tokenizer = TextTokenizer(self.tokenizer_name, self.context_length)
        return self._tokenizer

    def transform(self, name: str):
        from zoo.data import build_transform

        kwargs: dict[str, Any] = {"solarize_p": self.solarize_p}
        if self.mean is not None:
            kwargs["mean"] = self.mean
        if self.std is not None:
            kwargs["std"] = self.std
        return build_transform(name, self.image_size, **kwargs)

    def build_dataset(self, split: str, train: bool, require_labels: bool = False) -> Dataset:
        """The dataset for ``split`` with training augmentation (``train``: bad images are
        replaced by neighbours) or eval transforms (bad images are dropped and counted).
        ``require_labels``: fail, naming the split and its columns, when it has no labels."""
        spec = self.splits.get(split)
        if spec is None:
            raise ValueError(f"no {split!r} data configured (set data.{split})")
        tf_name = spec.transform or (
            self.train_transform_name if train else self.eval_transform_name
        )
        views = (
            [self.transform(self.view_transform_name) for _ in range(self.num_views)]
            if train
            else []
        )
        common = {
            "image_transform": self.transform(tf_name),
            "tokenizer": self.tokenizer,
            "view_transforms": views,
            "max_pixels": self.max_pixels,
        }
        if require_labels:
            self._require_labels(split)
        dataset = self._reader(spec, train, common)
        if not train and isinstance(dataset, SkipReplaceDataset):
            dataset.on_bad = "drop"
        return dataset

    def _reader(self, spec: ResolvedSplit, train: bool, common: dict[str, Any]) -> Dataset:
        from zoo.data import HFImageText, ImageTextTable, image_text_webdataset

        captions = list(spec.caption_keys)
        if spec.source in ("csv", "jsonl"):
            if Path(spec.path).stat().st_size == 0:
                raise ValueError(f"{spec.where} is empty (0 bytes, not even a header)")
            return ImageTextTable(
                spec.path,
                image_root=spec.image_root,
                image_key=spec.image_key or "image",
                caption_keys=captions,
                label_key=spec.label_key,
                bad_rows=self.bad_rows,
                **common,
            )
        if spec.source == "hf":
            from zoo.data.cache import cache_root

            return HFImageText(
                spec.path,
                split=spec.name if spec.name != "probe_train" else "train",
                image_key=spec.image_key or "image",
                caption_keys=captions,
                label_key=spec.label_key,
                cache_dir=str(cache_root() / "hf-datasets"),
                **common,
            )
        wds_keys: dict[str, Any] = {
            "caption_key": captions[0] if captions else "txt",
            "label_key": spec.label_key,
        }
        if spec.image_key:
            wds_keys["image_keys"] = spec.image_key
        if self._indexed(spec.path):
            from zoo.data.indexed_shards import IndexedShards

            dataset = IndexedShards(spec.path, **wds_keys, **common)
            if train and self.epoch_samples and self.epoch_samples != len(dataset):
                log.info(
                    "data.epoch_samples=%d ignored: the indexed shards hold %d samples, "
                    "and an epoch is one pass over them",
                    self.epoch_samples,
                    len(dataset),
                )
            return dataset
        dataset = image_text_webdataset(
            spec.path, shuffle=self.shuffle_buffer if train else 0, **wds_keys, **common
        )
        return self._sized(dataset) if train else dataset

    @property
    def caption_keys(self) -> list[str]:
        """The training split's caption columns: as configured, else ``txt`` in WebDataset
        shards, ``caption`` in tables and HF datasets. Several keys: one is drawn per access
        (SLIP's YFCC15M)."""
        train = self.splits.get("train")
        if train is not None:
            return list(train.caption_keys)
        if self._caption_keys:
            return list(self._caption_keys)
        return ["txt"] if self.source == "wds" else ["caption"]

    def _indexed(self, path: str) -> bool:
        """Whether WebDataset shards are read by index (map-style, exactly resumable, global
        shuffle: :mod:`zoo.data.indexed_shards`) or streamed (remote shards, or
        ``wds_access: stream``)."""
        from zoo.data.indexed_shards import is_local

        if self.wds_access == "indexed":
            if not is_local(path):
                raise ValueError(f"wds_access=indexed needs local shard files, got {path!r}")
            return True
        return self.wds_access == "auto" and is_local(path)

    def _sized(self, dataset: IterableDataset) -> IterableDataset:
        """Give a WebDataset pipeline a per-rank epoch length so schedules know the step count."""
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank_batches = max(self.epoch_samples // (world * self.batch_size), 1)
        workers = max(self.num_workers, 1)
        per_worker = -(-per_rank_batches * self.batch_size // workers)
        return dataset.with_epoch(per_worker).with_length(per_rank_batches * self.batch_size)

    # --- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the training / validation sets. In ``fit`` every configured evaluation split
        is opened too and the training set is checked to hold a full batch on every rank,
        so bad data fails here, before the first step, not after training."""
        if stage in (None, "fit") and self.train_set is None and self.splits["train"]:
            self.train_set = self.build_dataset("train", train=True)
            self.check_train_size(self.train_set, self.splits["train"].where)
        if stage in (None, "fit", "validate") and self.val_set is None and self.splits["val"]:
            self.val_set = self.build_dataset("val", train=False)
            if isinstance(self.val_set, SkipReplaceDataset):
                # the validation loss runs on full, equal-shaped batches under DDP
                self.val_set.on_bad = "replace"
        if stage in (None, "fit"):
            for split in ("test", "probe_train"):
                if self.splits[split] is not None:
                    self._eval_set(split)

    def _eval_set(
        self, split: str, require_labels: bool = False, who: str = "an evaluation"
    ) -> Dataset:
        """The cached evaluation dataset of ``split`` (built once, reused by every callback)."""
        if require_labels:
            self._require_labels(split, who)
        dataset = self._eval_sets.get(split)
        if dataset is None:
            dataset = self.build_dataset(split, train=False)
            if not isinstance(dataset, IterableDataset) and len(dataset) == 0:
                raise ValueError(f"{self.splits[split].where} holds no samples")
            self._eval_sets[split] = dataset
        return dataset

    def _require_labels(self, split: str, who: str = "an evaluation") -> None:
        spec = self.splits[split]
        if spec is not None and spec.label_key is None:
            columns = peek_columns(spec.source, spec.path)
            found = f"; its columns: {columns}" if columns is not None else ""
            raise ValueError(
                f"{spec.where} has no label column{found}; {who} needs labels there: "
                f"set data.{split}.label_key"
            )

    def has_eval_split(self, split: str) -> bool:
        return self.splits.get(split) is not None

    def _eval_split_name(self, split: str) -> str:
        """``"train"`` as an evaluation split is the labelled set probes and kNN are fitted
        on: ``probe_train`` when given (e.g. ImageNet train for a YFCC15M model), else the
        training data itself (eval transforms)."""
        if split == "train" and self.splits.get("probe_train") is not None:
            return "probe_train"
        return split

    def check_eval_split(
        self, split: str, who: str, labels: bool = True, captions: bool = False
    ) -> None:
        """Fail now, naming the split and the problem, if evaluation ``who`` could not run
        on ``split``: not configured, empty, no label column / no labelled sample (with
        ``labels``), no caption column (with ``captions``), or labels outside the class
        list. Called by the evaluation callbacks at fit start."""
        name = self._eval_split_name(split)
        spec = self.splits.get(name)
        if spec is None:
            raise ValueError(f"{who} evaluates on the {split!r} split, but data.{name} is not set")
        dataset = self._eval_set(name, require_labels=labels, who=who)
        if captions and not spec.caption_keys:
            raise ValueError(f"{who} needs captions, but {spec.where} has no caption column")
        values = getattr(dataset, "labels", None)
        if labels and values is not None:
            known = values[values >= 0]
            if len(known) == 0:
                raise ValueError(
                    f"{spec.where}: column {spec.label_key!r} has no labels (all empty); "
                    f"{who} needs labelled samples"
                )
            classes = len(self.classnames or ())
            if classes and int(known.max()) >= classes:
                raise ValueError(
                    f"{spec.where}: label {int(known.max())} is out of range for the "
                    f"{classes} classnames"
                )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Eval-transformed, labelled loader used by the evaluation callbacks (``"train"``:
        see :meth:`_eval_split_name`). Bad images are dropped and counted, not replaced."""
        return self._loader(self._eval_set(self._eval_split_name(split)), train=False)


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if len(value) > 1 else str(value[0])
    return str(value)
