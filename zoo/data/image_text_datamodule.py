"""The image–text datamodule CLIP-family papers build on: image–caption pairs for
contrastive pre-training, plus labelled splits for evaluation.

Sources (``source``): ``csv`` / ``jsonl`` tables with an image folder, WebDataset shards
(``wds``), Hugging Face ``datasets`` (``hf``: an imagefolder directory or parquet files),
COCO captions (``coco``: a ``captions_<split>.json`` with its image folder as
``image_root``; one of an image's captions is drawn per access), ``digits``:
scikit-learn's embedded handwritten digits, written by ``prepare_data`` in one of the real
formats (``digits.format``) and read back through the same loader, or ``scenes``: the
generated CLEVR-like scenes (:mod:`zoo.data.clevr_scenes`), written by ``prepare_data`` in
the COCO layout and read back as ``coco``, or ``mosaics``: the generated digit mosaics
(:mod:`zoo.data.digit_mosaics`), written and read the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset, IterableDataset

from zoo.data.embedded import CLASSNAMES, ZERO_SHOT_TEMPLATES, DigitsSpec
from zoo.data.lists import load_list
from zoo.data.samples import DEFAULT_MAX_PIXELS, SkipReplaceDataset, check_max_pixels
from zoo.data.splits import (
    SPLITS,
    ResolvedSplit,
    SplitSpec,
    as_spec,
    check_exists,
    peek_columns,
    resolve_path,
    resolve_split,
)
from zoo.datamodule import ZooDataModule
from zoo.preprocess import PreprocessSpec

log = logging.getLogger("zoo.data")

Source = Literal["csv", "jsonl", "wds", "hf", "coco", "digits", "scenes", "mosaics"]


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
    ``source: digits`` writes the embedded digits in ``prepare_data`` (never in ``__init__``);
    ``source: scenes`` writes the CLEVR-like scenes of ``scenes`` (the fields of
    :class:`zoo.data.clevr_scenes.ClevrScenes`) and reads their ``train`` / ``val`` /
    ``test`` captions (the splits the scenes have); ``source: mosaics`` does the same with
    the digit mosaics of ``mosaics`` (the fields of
    :class:`zoo.data.digit_mosaics.DigitMosaics`).
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
        scenes: dict[str, Any] | None = None,
        mosaics: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__(batch_size, num_workers, pin_memory, drop_last, eval_batch_size)
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
        self.digits: DigitsSpec | None = None
        self.scenes: Any = None
        self.mosaics: Any = None

        if source == "digits":
            # written by prepare_data, located by setup: nothing is read or written here
            self.digits = as_digits(digits)
            self.generated.append(self.digits)
            self.source = self.digits.format
            self.classnames, self.templates = list(CLASSNAMES), list(ZERO_SHOT_TEMPLATES)
            self.image_root = resolve_path(None, image_root)
            self.splits = {}
            return
        if source in ("scenes", "mosaics"):
            # written in the COCO layout by prepare_data, read back as COCO captions
            if source == "scenes":
                from zoo.data.clevr_scenes import ClevrScenes

                self.scenes = ClevrScenes(**_as_mapping(scenes))
            else:
                from zoo.data.digit_mosaics import DigitMosaics

                self.mosaics = DigitMosaics(**_as_mapping(mosaics))
            self.generated.append(self._coco_generated)
            self.source = "coco"
            self.classnames, self.templates = [], []
            self.image_root = None
            self.splits = {}
            return
        if scenes is not None:
            raise ValueError("data.scenes is only read with data.source: scenes")
        if mosaics is not None:
            raise ValueError("data.mosaics is only read with data.source: mosaics")
        root_path = Path(root).expanduser() if root else None
        if root_path is not None and not root_path.exists():
            raise FileNotFoundError(f"data root not found: {root_path}")
        specs = {"train": train, "val": val, "test": test, "probe_train": probe_train}
        self.classnames = load_list(classnames, root_path)
        self.templates = load_list(templates, root_path)
        self.image_root = resolve_path(root_path, image_root)
        if self.image_root is not None:
            check_exists(self.image_root, "image root")
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
        check_exists(resolved.path, f"{name} data")
        if resolved.image_root is not None:
            check_exists(resolved.image_root, f"{name} image root")
        return dataclasses.replace(
            resolved,
            image_root=resolved.image_root or self.image_root,
            image_key=resolved.image_key or self.image_key,
        )

    def _locate_digits(self) -> None:
        """Resolve the splits of the digits ``prepare_data`` wrote (read-only; every rank
        computes the same folder from the arguments)."""
        built = self.digits.locate()
        if self.source == "wds" and not self.epoch_samples:
            self.epoch_samples = built.num_train
        specs = {"train": _as_str(built.train), "test": _as_str(built.test)}
        self.splits = {
            name: None if value is None else self._resolve_split(name, SplitSpec(path=value), None)
            for name, value in {**dict.fromkeys(SPLITS), **specs}.items()
        }

    @property
    def _coco_generated(self) -> Any:
        """The generator of ``source: scenes`` / ``mosaics`` (``None`` for other sources)."""
        return self.scenes if self.scenes is not None else self.mosaics

    def _locate_coco_layout(self, generated: Any) -> None:
        """Resolve the COCO caption files of the generated data (scenes, mosaics)
        ``prepare_data`` wrote: ``generated.locate()`` has ``splits``, ``captions(split)``
        and ``images(split)``."""
        files = generated.locate()
        self.splits = {
            name: (
                self._resolve_split(
                    name,
                    SplitSpec(
                        path=str(files.captions(name)),
                        source="coco",
                        image_root=str(files.images(name)),
                    ),
                    None,
                )
                if name in files.splits
                else None
            )
            for name in SPLITS
        }

    def _ensure_splits(self) -> None:
        if self.digits is not None and not self.splits:
            self._locate_digits()
        if self._coco_generated is not None and not self.splits:
            self._locate_coco_layout(self._coco_generated)

    @property
    def paths(self) -> dict[str, str | None]:
        """Each split's resolved path (``None`` when not configured)."""
        self._ensure_splits()
        return {name: (s.path if s else None) for name, s in self.splits.items()}

    # --- pieces -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from zoo.data import TextTokenizer

            self._tokenizer = TextTokenizer(self.tokenizer_name, self.context_length)
        return self._tokenizer

    @property
    def preprocess(self) -> PreprocessSpec:
        """Image size, mean / std (OpenAI CLIP's when unset), bicubic interpolation, tokenizer
        and context length: what ``zoo export`` writes into ``config.json``."""
        kwargs: dict[str, Any] = {}
        if self.mean is not None:
            kwargs["mean"] = self.mean
        if self.std is not None:
            kwargs["std"] = self.std
        return PreprocessSpec(
            image_size=self.image_size,
            tokenizer=self.tokenizer_name,
            context_length=self.context_length,
            **kwargs,
        )

    def transform(self, name: str):
        """The named transform stack at this data's preprocessing (``"eval"``:
        ``self.preprocess.eval_transform()``)."""
        if name == "eval":
            return self.preprocess.eval_transform()
        return self.preprocess.transform(name, solarize_p=self.solarize_p)

    def build_dataset(self, split: str, train: bool, require_labels: bool = False) -> Dataset:
        """The dataset for ``split`` with training augmentation (``train``: bad images are
        replaced by neighbours) or eval transforms (bad images are dropped and counted).
        ``require_labels``: fail, naming the split and its columns, when it has no labels."""
        self._ensure_splits()
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
            self.require_labels(split, "an evaluation")
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
        if spec.source == "coco":
            from zoo.data.builders import ImageTextBuilder
            from zoo.data.coco import CocoCaptions

            if spec.image_root is None:
                raise ValueError(f"{spec.where}: a COCO captions file needs its image_root")
            return CocoCaptions(
                spec.path,
                spec.image_root,
                builder=ImageTextBuilder(
                    common["image_transform"], common["tokenizer"], common["view_transforms"]
                ),
                drop_empty=True,
                max_pixels=self.max_pixels,
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
        """Build the training / validation sets (reading what ``prepare_data`` wrote). In
        ``fit`` every configured evaluation split is opened too and the training set is
        checked to hold a full batch on every rank, so bad data fails here, before the
        first step, not after training."""
        self._ensure_splits()
        if stage in (None, "fit") and self.train_set is None and self.splits["train"]:
            self.train_set = self.build_dataset("train", train=True)
            self.check_train_size(self.train_set, self.splits["train"].where)
        if stage in (None, "fit", "validate") and self.val_set is None and self.splits["val"]:
            self.val_set = self.build_dataset("val", train=False)
            if isinstance(self.val_set, SkipReplaceDataset):
                # the validation loss runs on full, equal-shaped batches under DDP
                self.val_set.on_bad = "replace"
        if stage in (None, "fit"):
            self.open_eval_splits("test", "probe_train")

    # --- the evaluation-split protocol (ZooDataModule) ----------------------------------------
    def build_eval_dataset(self, split: str) -> Dataset:
        return self.build_dataset(split, train=False)

    def has_eval_split(self, split: str) -> bool:
        self._ensure_splits()
        return super().has_eval_split(split)

    def eval_set(self, split: str) -> Dataset:
        self._ensure_splits()
        return super().eval_set(split)

    def check_eval_split(
        self, split: str, who: str, labels: bool = True, captions: bool = False
    ) -> None:
        self._ensure_splits()
        super().check_eval_split(split, who, labels=labels, captions=captions)

    def caption_relevance(self, split: str) -> Any:
        """``(N_captions, N_images)`` bool tensor, in the evaluation loader's order, of which
        images fit which caption, for data that knows it (``source: mosaics``: a caption
        names some tiles, and every image with those digits there fits it); ``None``
        otherwise. :class:`zoo.eval.RetrievalEval` (``match: true``) scores retrieval by it."""
        if self.mosaics is None:
            return None
        import json

        import torch

        from zoo.data.digit_mosaics import caption_relevance

        files = self.mosaics.files()
        names, labels = files.tile_labels(split, self.mosaics.grid)
        coco = json.loads(Path(files.captions(split)).read_text())
        image_id = {img["file_name"]: img["id"] for img in coco["images"]}
        texts: dict[int, list[tuple[int, str]]] = {}
        for ann in coco["annotations"]:
            texts.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"]))
        captions = [c for name in names for _, c in sorted(texts.get(image_id[name], []))]
        return torch.from_numpy(caption_relevance(captions, labels, self.mosaics.grid))

    def split_has_captions(self, split: str) -> bool:
        return bool(self.splits[split].caption_keys)

    def require_labels(self, split: str, who: str = "an evaluation") -> None:
        spec = self.splits[split]
        if spec is not None and spec.label_key is None:
            columns = peek_columns(spec.source, spec.path)
            found = f"; its columns: {columns}" if columns is not None else ""
            raise ValueError(
                f"{spec.where} has no label column{found}; {who} needs labels there: "
                f"set data.{split}.label_key"
            )


def as_digits(value: DigitsSpec | dict | None) -> DigitsSpec:
    """The ``digits:`` argument as a :class:`DigitsSpec` (a mapping or a jsonargparse
    Namespace from the CLI)."""
    if value is None:
        return DigitsSpec()
    if isinstance(value, DigitsSpec):
        return value
    return DigitsSpec(**(value if isinstance(value, dict) else dict(vars(value))))


def _as_mapping(value: Any) -> dict[str, Any]:
    """A mapping argument that may arrive as a jsonargparse Namespace from the CLI."""
    if value is None:
        return {}
    return dict(value) if isinstance(value, dict) else dict(vars(value))


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if len(value) > 1 else str(value[0])
    return str(value)
