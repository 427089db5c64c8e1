"""``FewShotDataModule``: the few-shot CLIP protocol (CoOp, CoCoOp, CLIP-Adapter,
Tip-Adapter(-F), SgVA-CLIP) as a datamodule.

A dataset is a CoOp split file (train / val / test lists of ``[relpath, label, classname]``,
:mod:`zoo.fewshot.splits`) over an image folder: one of the registered datasets
(:mod:`zoo.fewshot.datasets`: the 11 of the protocol and the generated ``shifted_digits``)
under ``root``, or a ``custom`` ``split_file`` + ``image_dir``. From it:

- ``train``: ``shots`` images per class drawn from the split's train list; ``val``:
  ``min(shots, 4)`` per class from its val list (CoOp); both drawn by the seeded sampler of
  :func:`zoo.fewshot.splits.sample_indices` for ``fewshot_seed`` and written by
  ``prepare_data`` to ``shot_{K}-seed_{seed}.json`` with the split file's sha256, so a changed
  split file is refused rather than silently re-sampled; ``shots <= 0`` takes every image;
- ``test``: the whole test list (the evaluation callbacks read it; model selection only
  ever sees ``val``);
- ``subsample_classes``: CoCoOp's base-to-new protocol, ``base`` (first half of the sorted
  labels) or ``new`` (the rest), relabelled from 0, applied after the shots are drawn, as
  in CoOp's ``datasets/*.py``;
- ``classnames``: the split's class names in label order with ``_`` → space (CoOp's prompt
  cleaning); ``templates``: the dataset's CoOp prompt, ``"ensemble"`` for Tip-Adapter's
  7 ImageNet templates, or a list / file of your own;
- transforms: ``train`` uses ``train_transform`` (``"coop"``: Dassl's
  ``RandomResizedCrop(scale=(0.08, 1))`` + flip; ``"tip"``: Tip-Adapter's scale 0.5-1 +
  flip; ``"sgva"``: SgVA-CLIP's resize + random crop + colour jitter + flip), ``val`` and
  ``test`` ``preprocess.eval_transform()`` (resize, centre crop; bicubic, CLIP mean / std by
  default, as CoOp's configs).

Bad input: a missing root, dataset folder or split file fails at construction; a malformed
split file, or an image it lists that is not on disk, fails in ``setup`` naming the file and
the entry; an unreadable image is replaced by a readable neighbour and counted (``skipped``)
in training and validation, dropped and counted (``dropped``) in evaluation.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from zoo.data.builders import Builder
from zoo.data.labelled import _LabelledImages
from zoo.data.samples import DEFAULT_MAX_PIXELS, decode_image
from zoo.data.transforms import ImageTransform
from zoo.datamodule import ZooDataModule
from zoo.preprocess import PreprocessSpec

log = logging.getLogger("zoo.data")

FEWSHOT_SPLITS = ("train", "val", "test")
#: The text context of the tiny digits CLIP (``zoo/backbones/presets/vit-tiny-digits.yaml``),
#: the model the shifted digits are made for.
_DIGITS_CONTEXT = 16


class SplitImages(_LabelledImages):
    """Images listed by a split file (paths relative to ``image_dir``) with their labels:
    the zoo's labelled-image reader (skip-and-count, per-sample seeding, exact resume)."""

    def __init__(
        self,
        name: str,
        image_dir: Path,
        paths: list[str],
        labels: list[int],
        classnames: list[str],
        image_transform: ImageTransform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        builder: Builder | None = None,
    ):
        from zoo.data.columns import PackedStrings

        super().__init__(name, image_transform, (), max_pixels, builder)
        self.image_dir = Path(image_dir)
        self.paths = PackedStrings.from_values(paths)  # shared by workers without copies
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classnames = list(classnames)

    def read(self, index: int) -> dict[str, Any]:
        path = self.image_dir / self.paths[index]
        image = decode_image(path, max_pixels=self.max_pixels)
        return {"image": image, "label": int(self.labels[index]), "source": str(path)}


@dataclass(frozen=True)
class FewShotSplit:
    """One split of the protocol: where it comes from (``where``, for messages) and, once
    loaded, its entries (``paths`` relative to the image folder, ``labels`` after class
    subsampling)."""

    name: str
    where: str
    paths: list[str] = field(default_factory=list, repr=False)
    labels: list[int] = field(default_factory=list, repr=False)


@dataclass
class _Loaded:
    split: Any  # zoo.fewshot.splits.SplitData
    indices: Any  # zoo.fewshot.splits.FewShotIndices
    classnames: list[str]
    parts: dict[str, FewShotSplit]


class FewShotDataModule(ZooDataModule):
    """The few-shot protocol over a CoOp split file (see the module docstring).

    Args:
        root: CoOp's ``DATASET.ROOT``, the folder holding the dataset folders (registered
            datasets; ``shifted_digits`` defaults to the zoo cache); for ``custom``, the
            folder ``split_file`` / ``image_dir`` are relative to.
        dataset: a registered name (:data:`zoo.fewshot.datasets.DATASETS`) or ``"custom"``.
        split_file: ``custom``: the split JSON; registered datasets: an override, relative
            to the dataset folder.
        image_dir: the image folder the split's paths start from (``custom`` default: the
            split file's folder; registered datasets: an override, relative to the dataset
            folder).
        shots: K images per class in train (val gets ``min(K, 4)``); ``<= 0``: all.
        fewshot_seed: the protocol's seed (1, 2, 3).
        subsample_classes: ``all``, or CoCoOp's ``base`` / ``new`` half.
        templates: ``None``: the dataset's CoOp prompt; ``"ensemble"``: Tip-Adapter's 7
            ImageNet templates; a template with ``{}``, a list, or a JSON / text file.
        preprocess: image size, resize, mean / std, interpolation, tokenizer (default:
            CoOp's 224 px bicubic CLIP preprocessing; ``shifted_digits``: 16 px and the tiny
            CLIP's 16-token context).
        train_transform: the training view (``coop``, ``tip``, ``sgva`` or any name of
            :data:`zoo.data.transforms.TRANSFORMS`).
        split_cache: the folder of the sampled-index files (default:
            ``<zoo cache>/fewshot-splits/<dataset>-<hash of the split location>``).
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: str = "custom",
        split_file: str | None = None,
        image_dir: str | None = None,
        shots: int = 16,
        fewshot_seed: int = 1,
        subsample_classes: Literal["all", "base", "new"] = "all",
        templates: list[str] | str | None = None,
        preprocess: PreprocessSpec | None = None,
        train_transform: str = "coop",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        split_cache: str | None = None,
    ):
        super().__init__(batch_size, num_workers, pin_memory, drop_last, eval_batch_size)
        self.save_hyperparameters()
        from zoo.data.transforms import TRANSFORMS
        from zoo.fewshot import datasets

        if isinstance(shots, bool) or not isinstance(shots, int):
            raise ValueError(f"data.shots must be an integer, got {shots!r}")
        if isinstance(fewshot_seed, bool) or not isinstance(fewshot_seed, int):
            raise ValueError(f"data.fewshot_seed must be an integer, got {fewshot_seed!r}")
        if subsample_classes not in ("all", "base", "new"):
            raise ValueError(
                f"data.subsample_classes must be 'all', 'base' or 'new', got {subsample_classes!r}"
            )
        if train_transform not in TRANSFORMS:
            raise ValueError(
                f"data.train_transform {train_transform!r} is not a transform; known: "
                f"{sorted(TRANSFORMS)}"
            )
        self.dataset = dataset
        self.shots, self.fewshot_seed = shots, fewshot_seed
        self.subsample = subsample_classes
        self.train_transform_name = train_transform
        self._tokenizer = None
        self._loaded: _Loaded | None = None
        self._files_checked = False
        self.info = None if dataset == "custom" else datasets.get_dataset(dataset)
        generated = self.info is not None and self.info.generated
        self.root = Path(root).expanduser() if root else None
        if self.root is not None and not generated and not self.root.is_dir():
            raise FileNotFoundError(f"data.root not found: {self.root}")  # generated: written there
        if self.info is None:
            self._preprocess = preprocess or PreprocessSpec()
            self._locate_custom(split_file, image_dir)
            default_template = datasets.DEFAULT_TEMPLATE
        else:
            default = PreprocessSpec(image_size=16, context_length=_DIGITS_CONTEXT)
            self._preprocess = preprocess or (default if generated else PreprocessSpec())
            self._locate_registered(split_file, image_dir)
            default_template = self.info.template
        self.templates = self._templates(templates, default_template)
        self.split_cache = (
            Path(split_cache).expanduser() if split_cache else self._default_split_cache()
        )
        where = f"{dataset} ({self.split_path})"
        self._wheres = {s: f"data.{s} [{where}]" for s in FEWSHOT_SPLITS}
        self.splits = {s: FewShotSplit(s, self._wheres[s]) for s in FEWSHOT_SPLITS}

    # --- where the data is ------------------------------------------------------------------
    def _locate_custom(self, split_file: str | None, image_dir: str | None) -> None:
        if not split_file:
            raise ValueError("data.dataset 'custom' needs data.split_file (a CoOp split JSON)")
        base = self.root or Path.cwd()
        self.split_path = base / Path(split_file).expanduser()
        if not self.split_path.is_file():
            raise FileNotFoundError(f"data.split_file not found: {self.split_path}")
        self.image_dir = (
            (base / Path(image_dir).expanduser()) if image_dir else self.split_path.parent
        )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"data.image_dir not found: {self.image_dir}")
        self.layout_reader = False

    def _locate_registered(self, split_file: str | None, image_dir: str | None) -> None:
        info = self.info
        assert info is not None
        self.layout_reader = info.reader is not None and split_file is None
        if info.generated:
            from zoo.fewshot.shifted_digits import ShiftedDigits

            generator = ShiftedDigits(
                root=str(self.root) if self.root else None, size=self._preprocess.image_size
            )
            self.generated.append(generator)
            folder = generator.folder()
        else:
            if self.root is None:
                raise ValueError(
                    f"data.root is required for dataset {info.name!r}: the folder that holds "
                    f"{info.folder}/ (CoOp's DATASET.ROOT)"
                )
            folder = info.dataset_dir(self.root)
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"dataset folder not found: {folder} (data.root/{info.folder} for "
                    f"{info.name}; CoOp's DATASETS.md describes the layout)"
                )
        self.image_dir = folder / (image_dir if image_dir else info.image_dir)
        if self.layout_reader:
            for name in info.required:
                if not (folder / name).exists():
                    raise FileNotFoundError(
                        f"{info.name}: {folder / name} not found (the {info.coop_name} layout "
                        f"needs {', '.join(info.required)} under {folder})"
                    )
            self.split_path = folder  # the layout itself is the split
            return
        self.split_path = folder / (split_file or info.split_file)  # type: ignore[operator]
        if not info.generated and not self.split_path.is_file():
            hint = (
                f"; or write a new random split from the raw download with "
                f"zoo.fewshot.datasets.build_split({info.name!r}, {str(self.root)!r}) "
                "(not comparable with published numbers)"
                if info.builder is not None
                else ""
            )
            raise FileNotFoundError(
                f"split file not found: {self.split_path}; download CoOp's "
                f"{info.split_file} (CoOp's DATASETS.md) into {folder}{hint}"
            )
        if not info.generated and not self.image_dir.is_dir():
            raise FileNotFoundError(f"{info.name}: image folder not found: {self.image_dir}")

    def _default_split_cache(self) -> Path:
        from zoo.data.cache import cache_root

        where = hashlib.sha1(str(self.split_path.resolve()).encode()).hexdigest()[:12]
        return cache_root() / "fewshot-splits" / f"{self.dataset}-{where}"

    def _templates(self, value: list[str] | str | None, default: str) -> list[str]:
        from zoo.fewshot.datasets import TIP_IMAGENET_TEMPLATES

        if value is None:
            return [default]
        if isinstance(value, str):
            if value == "ensemble":
                return list(TIP_IMAGENET_TEMPLATES)
            if "{}" in value:
                return [value]
            from zoo.data.lists import load_list

            value = load_list(value, self.root)  # a file, relative to the root
        templates = [str(t) for t in value or []]
        bad = [t for t in templates if "{}" not in t]
        if not templates or bad:
            raise ValueError(
                f"data.templates: every template needs a '{{}}' slot, got {bad or templates}"
            )
        return templates

    # --- pieces -----------------------------------------------------------------------------
    @property
    def preprocess(self) -> PreprocessSpec:
        return self._preprocess

    @property
    def tokenizer(self):
        """The prompt tokenizer (``preprocess.tokenizer`` at ``preprocess.context_length``)."""
        if self._tokenizer is None:
            if self._preprocess.tokenizer is None:
                raise ValueError("data.preprocess.tokenizer is not set (prompts need one)")
            from zoo.data.tokenizers import TextTokenizer

            self._tokenizer = TextTokenizer(
                self._preprocess.tokenizer, self._preprocess.context_length
            )
        return self._tokenizer

    @property
    def classnames(self) -> list[str]:  # type: ignore[override]
        """Class names in label order (after subsampling), ``_`` → space."""
        return list(self._load().classnames)

    @property
    def fewshot_indices(self) -> dict[str, list[int]]:
        """The sampled entries: indices into the split file's ``train`` and ``val`` lists
        (ImageNet: both into ``train``), before class subsampling."""
        indices = self._load().indices
        return {"train": list(indices.train), "val": list(indices.val)}

    @property
    def split_sha256(self) -> str:
        return self._load().split.sha256

    @property
    def dataset_id(self) -> str:
        """A stable name of exactly these images: dataset, split-file sha256, image folder,
        shots, seed and subsample (the feature cache keys on it)."""
        folder = hashlib.sha1(str(self.image_dir.resolve()).encode()).hexdigest()[:12]
        return (
            f"{self.dataset}:sha256={self.split_sha256}:images={folder}:shots={self.shots}:"
            f"seed={self.fewshot_seed}:classes={self.subsample}"
        )

    def index_file(self) -> Path | None:
        """Where the sampled indices are kept (``None`` when ``shots <= 0``: all images)."""
        from zoo.fewshot.splits import index_file

        return (
            index_file(self.split_cache, self.shots, self.fewshot_seed) if self.shots > 0 else None
        )

    # --- loading the protocol ------------------------------------------------------------------
    def _layout_file(self) -> Path:
        assert self.info is not None
        return self.split_cache / f"split_{self.info.coop_name}.json"

    def _read_split(self, write: bool):
        from zoo.fewshot import splits

        val_from_train = bool(self.info and self.info.val_from_train)
        if self.info is not None and self.info.generated:
            self.generated[0].locate()  # a clear message when prepare_data has not run
        if not self.layout_reader:
            return splits.read_split(self.split_path, self.image_dir, val_from_train)
        # FGVC / ImageNet: the raw layout is the split; prepare_data keeps a CoOp-format copy
        # (CoOp pickles ImageNet's listing the same way), so it is listed once
        cached = self._layout_file()
        if cached.is_file():
            return splits.read_split(cached, self.image_dir, val_from_train)
        from zoo.fewshot.datasets import read_layout

        raw, _ = read_layout(self.info, self.root)  # type: ignore[arg-type]
        if write:
            from zoo.data.cache import atomic_write_bytes

            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, raw)
        return splits.parse_split(raw, cached, self.image_dir, val_from_train)

    def _load(self, write: bool = False) -> _Loaded:
        if self._loaded is not None and not write:
            return self._loaded
        from zoo.fewshot import splits
        from zoo.fewshot.datasets import prompt_classname

        split = self._read_split(write)
        folder = self.split_cache if self.shots > 0 else None
        indices = splits.load_or_sample(split, self.shots, self.fewshot_seed, folder, write=write)
        # CoOp halves the classes of the sampled training set; every class has train shots
        mapping = splits.class_subset(range(len(split.classnames)), self.subsample)
        entries = {
            "train": [split.train[i] for i in indices.train],
            "val": [split.items(indices.val_source)[i] for i in indices.val],
            "test": split.test,
        }
        parts = {}
        for name, items in entries.items():
            kept = [(p, mapping[y]) for p, y, _ in items if y in mapping]
            parts[name] = FewShotSplit(
                name, self._wheres[name], [p for p, _ in kept], [y for _, y in kept]
            )
        by_new = sorted(mapping, key=mapping.__getitem__)
        classnames = [prompt_classname(split.classnames[old]) for old in by_new]
        self._loaded = _Loaded(split, indices, classnames, parts)
        # an empty split (ImageNet's held-out val with shots <= 0) is not configured
        self.splits = {name: part if part.labels else None for name, part in parts.items()}
        return self._loaded

    def _check_files(self) -> None:
        """Fail, naming the split file and the entry, when a listed image is not on disk."""
        from zoo.fewshot.splits import check_files

        loaded = self._load()
        indices = loaded.indices
        which: dict[str, list[int] | range] = {
            "train": list(indices.train),
            "test": range(len(loaded.split.test)),
        }
        if indices.val_source == "train":
            which["train"] = list(indices.train) + list(indices.val)
        else:
            which["val"] = list(indices.val)
        check_files(loaded.split, which)

    # --- datasets -------------------------------------------------------------------------------
    def build_dataset(self, split: str, transform_name: str = "eval") -> Dataset:
        """The ``split`` images with the named transform (``"eval"``:
        ``preprocess.eval_transform()``; ``"coop"`` / ``"tip"`` / ``"sgva"``: training views)."""
        if split not in FEWSHOT_SPLITS:
            raise ValueError(f"unknown few-shot split {split!r}; known: {FEWSHOT_SPLITS}")
        loaded = self._load()
        part = loaded.parts[split]
        transform = (
            self._preprocess.eval_transform()
            if transform_name == "eval"
            else self._preprocess.transform(transform_name)
        )
        return SplitImages(
            part.where, self.image_dir, part.paths, part.labels, loaded.classnames, transform
        )

    def build_eval_dataset(self, split: str) -> Dataset:
        return self.build_dataset(split, "eval")

    # --- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the generated data (shifted digits), ImageNet's / FGVC's split listing and the
        sampled-index file (local rank 0; ``setup`` then reads them)."""
        super().prepare_data()
        self._loaded = None
        self._load(write=True)

    def setup(self, stage: str | None = None) -> None:
        """Read the split and the sampled indices, check the images exist, build the training
        and validation sets; in ``fit`` open the test split too."""
        loaded = self._load()
        if not self._files_checked:
            self._check_files()
            self._files_checked = True
            n = {name: len(part.labels) for name, part in loaded.parts.items()}
            log.info(
                "few-shot data %s: %d classes (%s), %s shots seed %d: %d train / %d val / %d test",
                self.dataset,
                len(loaded.classnames),
                self.subsample,
                self.shots if self.shots > 0 else "all",
                self.fewshot_seed,
                n["train"],
                n["val"],
                n["test"],
            )
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.build_dataset("train", self.train_transform_name)
            self.check_train_size(self.train_set, loaded.parts["train"].where)
        if (
            stage in (None, "fit", "validate")
            and self.val_set is None
            and loaded.parts["val"].labels
        ):
            self.val_set = self.build_dataset("val", "eval")
            self.val_set.on_bad = "replace"  # equal-shaped validation batches under DDP
        if stage in (None, "fit"):
            self.open_eval_splits("test")
