"""Class-labelled images (fine-tuning, linear probes, few-shot adaptation, zero-shot
transfer): ``train`` / ``val`` / ``test`` splits in one of three layouts.

- ``imagefolder``: torchvision's layout, one sub-folder per class (``train/cat/1.jpg``);
  the class names are the sorted folder names, as in ``torchvision.datasets.ImageFolder``;
- ``csv`` / ``jsonl``: an ``image,label`` table (integer labels; image paths relative to the
  table's folder or ``image_root``);
- ``hf``: a Hugging Face ``imagefolder`` directory (``datasets.load_dataset("imagefolder")``).

Each split is a path relative to ``root`` or a :class:`zoo.data.splits.LabelledSplitSpec`
mapping with its own ``source``, columns and transform, as in the image–text datamodule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from zoo.data.lists import load_list
from zoo.data.samples import DEFAULT_MAX_PIXELS, check_max_pixels
from zoo.data.splits import (
    LabelledSource,
    LabelledSplitSpec,
    as_spec,
    check_exists,
    peek_columns,
    resolve_path,
)
from zoo.datamodule import ZooDataModule
from zoo.preprocess import PreprocessSpec

log = logging.getLogger("zoo.data")

LABELLED_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ResolvedLabelledSplit:
    """A labelled split with every field decided (what the reader is built from)."""

    name: str
    path: str
    source: LabelledSource
    image_root: str | None
    image_key: str
    label_key: str
    transform: str | None

    @property
    def where(self) -> str:
        return f"data.{self.name} ({self.path})"


class LabelledImageDataModule(ZooDataModule):
    """Images with integer class labels, for training and for the evaluation callbacks.

    ``classnames``: a list, a JSON / text file, ``builtin:imagenet``, or (unset) the class
    folder names of an ``imagefolder`` / ``hf`` split; ``templates``: optional zero-shot
    prompts (``"a photo of a {}."``). ``preprocess`` sets image size, resize, mean / std,
    interpolation and the tokenizer zero-shot prompts use; the ``train`` split uses the
    ``train_transform`` stack (plus ``num_views`` ``view_transform`` views), the others
    ``preprocess.eval_transform()``.

    Bad input, as in the image–text datamodule: a bad training image is replaced by a
    readable neighbour and counted, a bad evaluation image is dropped and counted, and at
    the start of ``fit`` every configured split is opened and checked (empty split, missing
    label column, labels outside the class list, class folders that differ between splits).
    """

    default_train_transform = "clip"

    def __init__(
        self,
        source: LabelledSource = "imagefolder",
        root: str | None = None,
        train: str | LabelledSplitSpec | None = None,
        val: str | LabelledSplitSpec | None = None,
        test: str | LabelledSplitSpec | None = None,
        image_root: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
        classnames: list[str] | str | None = None,
        templates: list[str] | str | None = None,
        preprocess: PreprocessSpec | None = None,
        train_transform: str | None = None,
        view_transform: str = "ssl",
        num_views: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        bad_rows: Literal["error", "skip"] = "error",
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__(batch_size, num_workers, pin_memory, drop_last, eval_batch_size)
        self.save_hyperparameters()
        if num_views < 0:
            raise ValueError(f"data.num_views must be >= 0, got {num_views}")
        self.source = source
        self._preprocess = preprocess or PreprocessSpec()
        self.train_transform_name = train_transform or self.default_train_transform
        self.view_transform_name = view_transform
        self.num_views = num_views
        self.max_pixels = check_max_pixels(max_pixels)
        self.bad_rows = bad_rows
        self._tokenizer = None
        self.image_key, self.label_key = image_key, label_key
        root_path = Path(root).expanduser() if root else None
        if root_path is not None and not root_path.exists():
            raise FileNotFoundError(f"data root not found: {root_path}")
        self._classnames = load_list(classnames, root_path)
        self.templates = load_list(templates, root_path)
        self.image_root = resolve_path(root_path, image_root)
        if self.image_root is not None:
            check_exists(self.image_root, "image root")
        for name, value in {"train": train, "val": val, "test": test}.items():
            spec = as_spec(value, LabelledSplitSpec)
            self.splits[name] = None if spec is None else self._resolve(name, spec, root_path)
            if spec is not None:
                check_exists(self.splits[name].path, f"{name} data")

    def _resolve(
        self, name: str, spec: LabelledSplitSpec, root: Path | None
    ) -> ResolvedLabelledSplit:
        if not spec.path:
            raise ValueError(f"data.{name}: no path given")
        return ResolvedLabelledSplit(
            name=name,
            path=resolve_path(root, spec.path),  # type: ignore[arg-type]
            source=spec.source or self.source,
            image_root=resolve_path(root, spec.image_root) or self.image_root,
            image_key=spec.image_key or self.image_key,
            label_key=spec.label_key or self.label_key,
            transform=spec.transform,
        )

    # --- pieces -----------------------------------------------------------------------------
    @property
    def preprocess(self) -> PreprocessSpec:
        return self._preprocess

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._preprocess.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self._preprocess.std

    @property
    def tokenizer(self):
        """The prompt tokenizer zero-shot evaluation uses (``preprocess.tokenizer``)."""
        if self._tokenizer is None:
            if self._preprocess.tokenizer is None:
                raise ValueError("data.preprocess.tokenizer is not set (zero-shot needs one)")
            from zoo.data.tokenizers import TextTokenizer

            self._tokenizer = TextTokenizer(
                self._preprocess.tokenizer, self._preprocess.context_length
            )
        return self._tokenizer

    @property
    def classnames(self) -> list[str] | None:  # type: ignore[override]
        """As given, else the class folder names of the first configured split that has
        them (``imagefolder`` / ``hf``), else ``None`` (integer labels only)."""
        if self._classnames is None:
            for name in LABELLED_SPLITS:
                if self.splits.get(name) is not None:
                    found = getattr(self._dataset(name), "classnames", None)
                    if found:
                        self._classnames = list(found)
                        break
        return self._classnames

    def transform(self, name: str):
        """The named transform stack at this data's preprocessing (``"eval"``:
        ``preprocess.eval_transform()``)."""
        return self._preprocess.transform(name)

    def build_dataset(self, split: str, train: bool) -> Dataset:
        """The ``split`` reader with training augmentation (``train``) or eval transforms."""
        spec = self.splits.get(split)
        if spec is None:
            raise ValueError(f"no {split!r} data configured (set data.{split})")
        name = spec.transform or (self.train_transform_name if train else "eval")
        common: dict[str, Any] = {
            "image_transform": self.transform(name),
            "view_transforms": (
                [self.transform(self.view_transform_name) for _ in range(self.num_views)]
                if train
                else []
            ),
            "max_pixels": self.max_pixels,
        }
        from zoo.data import labelled

        if spec.source == "imagefolder":
            dataset = labelled.ImageFolderDataset(spec.path, **common)
        elif spec.source in ("csv", "jsonl"):
            if Path(spec.path).stat().st_size == 0:
                raise ValueError(f"{spec.where} is empty (0 bytes, not even a header)")
            dataset = labelled.ImageLabelTable(
                spec.path,
                image_root=spec.image_root,
                image_key=spec.image_key,
                label_key=spec.label_key,
                bad_rows=self.bad_rows,
                **common,
            )
        elif spec.source == "hf":
            from zoo.data.cache import cache_root

            dataset = labelled.HFImageFolder(
                spec.path, split=split, cache_dir=str(cache_root() / "hf-datasets"), **common
            )
        else:
            raise ValueError(f"{spec.where}: unknown source {spec.source!r}")
        return dataset

    def _dataset(self, split: str) -> Dataset:
        """The split's dataset for class names: the training set when built, else its
        evaluation set (both carry the same ``classnames``)."""
        if split == "train" and self.train_set is not None:
            return self.train_set
        return self.eval_set(split)

    # --- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the training / validation sets; in ``fit`` open the test split too and check
        the class folders of every split agree, so bad data fails before the first step."""
        if stage in (None, "fit") and self.train_set is None and self.splits["train"]:
            self.train_set = self.build_dataset("train", train=True)
            self.check_train_size(self.train_set, self.splits["train"].where)
        if stage in (None, "fit", "validate") and self.val_set is None and self.splits["val"]:
            self.val_set = self.build_dataset("val", train=False)
            if hasattr(self.val_set, "on_bad"):
                self.val_set.on_bad = "replace"  # equal-shaped validation batches under DDP
        if stage in (None, "fit"):
            self.open_eval_splits("test")
            self.check_classes()

    def check_classes(self) -> None:
        """Fail, naming both splits, when the class folders of two splits differ: their
        integer labels would then mean different classes."""
        first: tuple[str, list[str]] | None = None
        for name in LABELLED_SPLITS:
            if self.splits.get(name) is None:
                continue
            found = getattr(self._dataset(name), "classnames", None)
            if not found:
                continue
            if first is None:
                first = (name, list(found))
            elif list(found) != first[1]:
                raise ValueError(
                    f"{self.splits[name].where}: classes {list(found)} differ from "
                    f"data.{first[0]}'s {first[1]}; labels would not match across splits"
                )

    # --- the evaluation-split protocol (ZooDataModule) ----------------------------------------
    def build_eval_dataset(self, split: str) -> Dataset:
        return self.build_dataset(split, train=False)

    def require_labels(self, split: str, who: str) -> None:
        spec = self.splits[split]
        columns = peek_columns(spec.source, spec.path) if spec.source != "imagefolder" else None
        if columns is not None and spec.label_key not in columns:
            raise ValueError(
                f"{spec.where} has no label column {spec.label_key!r}; its columns: "
                f"{columns}; {who} needs labels there: set data.{split}.label_key"
            )
