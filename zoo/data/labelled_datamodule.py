"""Class-labelled images (fine-tuning, linear probes, few-shot adaptation, zero-shot
transfer): ``train`` / ``val`` / ``test`` splits in one of three layouts.

- ``imagefolder``: torchvision's layout, one sub-folder per class (``train/cat/1.jpg``);
  the class names are the sorted folder names, as in ``torchvision.datasets.ImageFolder``;
- ``csv`` / ``jsonl``: an ``image,label`` table (integer labels; image paths relative to the
  table's folder or ``image_root``);
- ``hf``: a Hugging Face ``imagefolder`` directory (``datasets.load_dataset("imagefolder")``);
- ``digits``: scikit-learn's embedded handwritten digits (no download), written by
  ``prepare_data`` as an ``image,label`` table (``digits.format``: ``csv`` or ``jsonl``) by
  the writer the image–text datamodule uses (:class:`zoo.data.embedded.DigitsSpec`) and read
  back through the table reader above: ``train`` and ``test`` splits, the ten digit names as
  ``classnames`` and the digits' zero-shot ``templates`` (tiny self-supervised recipes,
  linear probes and kNN on embedded data).

Each split is a path relative to ``root`` or a :class:`zoo.data.splits.LabelledSplitSpec`
mapping with its own ``source``, columns and transform, as in the image–text datamodule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from zoo.data.embedded import CLASSNAMES, ZERO_SHOT_TEMPLATES, DigitsSpec
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
#: The digits formats the labelled readers take (an ``image,label`` table).
DIGITS_FORMATS = ("csv", "jsonl")


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
        source: LabelledSource | Literal["digits"] = "imagefolder",
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
        digits: DigitsSpec | None = None,
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
        self.digits: DigitsSpec | None = None
        self._preprocess = preprocess or PreprocessSpec()
        self.train_transform_name = train_transform or self.default_train_transform
        self.view_transform_name = view_transform
        self.num_views = num_views
        self.max_pixels = check_max_pixels(max_pixels)
        self.bad_rows = bad_rows
        self._tokenizer = None
        self.image_key, self.label_key = image_key, label_key
        if source == "digits":
            self._init_digits(digits, {"root": root, "train": train, "val": val, "test": test})
            self._classnames = load_list(classnames, None) or list(CLASSNAMES)
            self.templates = load_list(templates, None) or list(ZERO_SHOT_TEMPLATES)
            self.image_root = None
            return
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

    def _init_digits(self, digits: DigitsSpec | dict | None, given: dict[str, Any]) -> None:
        """``source: digits``: remember what ``prepare_data`` writes; nothing is read or
        written here (``setup`` locates the written tables on every rank)."""
        from zoo.data.image_text_datamodule import as_digits

        clashing = [f"data.{name}" for name, value in given.items() if value is not None]
        if clashing:
            raise ValueError(
                f"data.source digits writes its own train and test splits; remove "
                f"{', '.join(clashing)} (or choose another data.source)"
            )
        self.digits = as_digits(digits)
        if self.digits.format not in DIGITS_FORMATS:
            raise ValueError(
                f"data.digits.format {self.digits.format!r}: the labelled datamodule reads the "
                f"digits as an image,label table; choose one of {list(DIGITS_FORMATS)}"
            )
        self.generated.append(self.digits)
        self.splits = {}  # filled by _ensure_splits once prepare_data has written them

    def _ensure_splits(self) -> None:
        """Resolve the digits tables ``prepare_data`` wrote (read-only; every rank computes
        the same folder from the arguments); a no-op for the other sources."""
        if self.digits is None or self.splits:
            return
        built = self.digits.locate()
        paths = {"train": built.train, "val": None, "test": built.test}
        self.splits = {
            name: None
            if path is None
            else self._resolve(name, LabelledSplitSpec(path=str(path)), None)
            for name, path in paths.items()
        }

    def _resolve(
        self, name: str, spec: LabelledSplitSpec, root: Path | None
    ) -> ResolvedLabelledSplit:
        if not spec.path:
            raise ValueError(f"data.{name}: no path given")
        return ResolvedLabelledSplit(
            name=name,
            path=resolve_path(root, spec.path),  # type: ignore[arg-type]
            source=spec.source or (self.digits.format if self.digits else self.source),
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
            self._ensure_splits()
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
        self._ensure_splits()
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
        self._ensure_splits()
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
                self._check_given_classnames(name, list(found))
            elif list(found) != first[1]:
                raise ValueError(
                    f"{self.splits[name].where}: classes {list(found)} differ from "
                    f"data.{first[0]}'s {first[1]}; labels would not match across splits"
                )

    def _check_given_classnames(self, split: str, folders: list[str]) -> None:
        """``data.classnames`` given next to class folders: the folders define the labels
        (sorted, torchvision's ``find_classes``), so a list of a different length, or the
        folder names in another order, would name every label wrongly. (Other names of the
        same count are display names, e.g. ImageNet's words for its wnid folders.)"""
        given = self._classnames
        if given is None:
            return
        where = self.splits[split].where
        if len(given) != len(folders):
            raise ValueError(
                f"data.classnames has {len(given)} names but {where} has {len(folders)} class "
                "folders; the folders define the labels"
            )
        if sorted(given) == sorted(folders) and list(given) != folders:
            raise ValueError(
                f"data.classnames lists the class folders of {where} in another order "
                f"({list(given)[:4]}… vs {folders[:4]}…); labels follow the sorted folder "
                "names: give them in that order, or leave data.classnames unset"
            )

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

    def require_labels(self, split: str, who: str) -> None:
        spec = self.splits[split]
        columns = peek_columns(spec.source, spec.path) if spec.source != "imagefolder" else None
        if columns is not None and spec.label_key not in columns:
            raise ValueError(
                f"{spec.where} has no label column {spec.label_key!r}; its columns: "
                f"{columns}; {who} needs labels there: set data.{split}.label_key"
            )
