"""ViSFT data (Jiang et al., 2024, "Supervised Fine-tuning *in turn* Improves Visual Foundation
Models", arXiv 2401.10222): COCO detection, instance segmentation and captions, one task's
batch per step.

**Sources.** ``source: coco`` reads a COCO 2017 folder (``root``): ``train2017/``,
``val2017/``, ``annotations/instances_<folder>.json`` and ``captions_<folder>.json``, where
split ``s`` lives in folder ``s + "2017"`` unless ``split_folders`` says otherwise; a
missing file or folder is an error naming its path. ``source: clevr`` reads the generated
CLEVR-like scenes (:class:`zoo.data.clevr_scenes.ClevrScenes`, the same COCO files), written
by ``prepare_data`` under ``root`` (default: the zoo cache) with the options of ``clevr``
(``splits``, ``seed``, ``num_objects``, ``categories``, ...; ``image_size`` defaults to the
datamodule's), never by ``__init__``.

**Training** (:meth:`ViSFTDataModule.train_dataloader`): a
:class:`zoo.data.task_mix.TaskMixLoader` over one loader per task of ``tasks`` (stage 1:
one task; stage 2: all three), drawing the task of every step with ``task_ratios``
renormalised over ``tasks`` (default caption 0.4 / segmentation 0.3 / detection 0.3, the
``multitasking.sampling_ratios`` of the official stage-2 config). A batch is one task's:

- ``detection``: ``image`` (B, 3, H, W), ``boxes`` list of (N_i, 4) normalised cx cy w h,
  ``labels`` list of (N_i,) (categories sorted by id → 0..C-1), read with
  :class:`~zoo.data.coco.CocoInstances` (crowds and empty boxes dropped, images without
  objects kept, as DETR's ``CocoDetection``) and built by
  :class:`~zoo.data.coco.DetectionBuilder`;
- ``segmentation``: ``image``, ``masks`` list of (N_i, H, W) uint8 at the image size,
  ``labels``; images without objects are left out (Mask2Former's training filter);
- ``caption``: ``image``, ``tokens`` (B, L) (``<start> … <end>``, padded with 0),
  ``lengths`` (B,), encoded with :attr:`vocab`;

plus ``task``, ``image_id`` and ``skipped`` (bad images replaced, counted). Each task's
loader resumes exactly (its own seed, pass and position; see :mod:`zoo.data.task_mix`).

**Vocabulary.** :meth:`setup` builds :attr:`vocab` from the *train* captions only
(:meth:`zoo.heads.captioner.CaptionVocab.from_captions`: words seen more than
``min_word_freq`` times; default 5, the official Karpathy-split preprocessing that gives
the 9,490-word COCO map, and 1 for the generated scenes' template captions), captions of
at most ``max_caption_length`` words (50, official).

**Evaluation.** :meth:`task_dataloader` (``task``, ``split``): the same fields without
augmentation or shuffling, plus ``image_id`` and, for captions, ``captions`` (every raw
reference of the image); :meth:`question_dataloader` (``split``, ``question``): ``image``
and ``label`` of the out-of-domain probe questions in ``annotations/questions_<split>.json``
(``count``: the number of objects; ``left_right``: the ``left_of`` question whose
``query`` is ``left_right_query``, one fixed pair of shapes, so the label is a property of
the image a linear probe can learn); :attr:`question_splits` are the (probe-fit,
probe-test) splits and :meth:`num_answers` the probe's class count. ``val_dataloader`` is
every task's ``val_split`` loader in turn (each batch tagged with its task), for the
module's validation loss. There is no labelled classification split, so
``eval_dataloader`` is not offered (a clear error names the methods to use instead).

**Differences from the official code** (TencentARC/ViSFT, ``mmf/configs/datasets/coco/``
and ``mmf/datasets/builders/coco/``):

- images are resized to one square ``image_size`` (the ViT's input; 224 for EVA-ViT-G)
  with a horizontal flip (``hflip``, DETR's 0.5) for detection and segmentation and an
  optional random-resized crop (``crop_scale``), instead of DETR's multi-scale resize and
  crop (detection, shorter side 480-672) and Mask2Former's large-scale jitter (scale
  0.1-2.0 at 1024 px, segmentation), which produce images the fixed-size ViT cannot take
  unchanged. Captions get no augmentation (the official caption dataset only
  normalises; a flip would also falsify "left of" captions). Pixels are normalised with
  ImageNet's mean / std in every task, as the official datasets do;
- the official captioner reads the Karpathy-split HDF5 files and visits every (image,
  caption) pair once per pass (5 per image); ``caption_sampling: random`` (default, as
  the other zoo image-text data) draws one of the image's captions per pass instead,
  seeded per sample, and ``caption_sampling: all`` visits every pair as the official
  loader does. The split is COCO 2017's (train2017 / val2017), not Karpathy's;
- mmf draws the task with ``np.random`` on rank 0 and broadcasts it; the draw here is a
  seeded pure function of (seed, epoch, step), the same on every rank.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.builders import Builder, LabelledImageBuilder
from zoo.data.collate import COUNT, LIST, Collator, FieldSpec, padded, scalar, stacked
from zoo.data.samples import DEFAULT_MAX_PIXELS, SkipCounter, SkipReplaceDataset, decode_image
from zoo.datamodule import ZooDataModule

log = logging.getLogger("zoo.data")

Task = Literal["detection", "segmentation", "caption"]
TASKS: tuple[str, ...] = ("detection", "segmentation", "caption")
#: ViSFT's stage-2 ``multitasking.sampling_ratios`` (``configs/stage2/eva_g/stage2.yaml``).
VISFT_TASK_RATIOS: dict[str, float] = {"caption": 0.4, "segmentation": 0.3, "detection": 0.3}
#: Probe question name → the ``task`` of its records in ``questions_<split>.json``.
QUESTIONS: dict[str, str] = {"count": "count", "left_right": "left_of"}
#: The fields of each task's training batch (besides ``task``, ``image_id``, ``skipped``).
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "detection": ("image", "boxes", "labels"),
    "segmentation": ("image", "masks", "labels"),
    "caption": ("image", "tokens", "lengths"),
}
_BOOKKEEPING = ("image_id", "skipped")
#: ImageNet's mean / std: the official detection, segmentation and caption datasets'.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Words must occur more than this often to enter the vocabulary, per source.
_MIN_WORD_FREQ = {"coco": 5, "clevr": 1}


# --- builders -----------------------------------------------------------------------------------
class SquareImage:
    """PIL → normalised float (3, size, size): RGB, resized (bilinear, antialiased) to a
    square, scaled to [0, 1], normalised. The same arithmetic as
    :class:`~zoo.data.coco.DetectionBuilder`'s plain resize, so every task sees an image
    the same way. Picklable (DataLoader workers)."""

    def __init__(
        self, size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ):
        self.size = int(size)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        rgb = image.convert("RGB") if image.mode != "RGB" else image
        pixels = F.resize(F.pil_to_tensor(rgb), [self.size, self.size], antialias=True)
        pixels = pixels.float().div(255)
        return F.normalize(pixels, self.mean, self.std) if self.mean is not None else pixels


class CaptionTokensBuilder(Builder):
    """``{"image", "caption", "captions", "image_id"}`` → ``image``, ``tokens`` (the
    caption encoded with ``vocab``: ``<start> … <end>``, padded with ``<pad>`` = 0 in the
    batch), ``lengths``, ``image_id``, ``skipped`` and, with ``references``, ``captions``
    (every raw caption of the image).

    ``first_caption``: encode the image's first caption (evaluation: deterministic)
    instead of the one the reader drew (training: seeded per sample)."""

    def __init__(
        self,
        vocab: Any,
        image_transform: Any,
        references: bool = False,
        first_caption: bool = False,
    ):
        self.vocab = vocab
        self.image_transform = image_transform
        self.references = references
        self.first_caption = first_caption

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = {
            "image": stacked(),
            "tokens": padded(self.vocab.pad_id),
            "lengths": scalar(),
            "image_id": scalar(),
            "skipped": COUNT,
        }
        return fields | {"captions": LIST} if self.references else fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        captions = list(record.get("captions", []))
        caption = captions[0] if self.first_caption and captions else record.get("caption", "")
        ids = self.vocab.encode(caption)
        sample: dict[str, Any] = {
            "image": self.image_transform(record["image"]),
            "tokens": torch.tensor(ids, dtype=torch.long),
            "lengths": len(ids),
            "image_id": int(record.get("image_id", -1)),
            "skipped": int(skipped),
        }
        if self.references:
            sample["captions"] = captions
        return sample


class TaskFieldsBuilder(Builder):
    """``inner`` restricted to the fields ``keep`` (a segmentation batch carries no boxes,
    a detection batch no masks)."""

    def __init__(self, inner: Builder, keep: Sequence[str]):
        self.inner = inner
        self.keep = tuple(keep)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {k: v for k, v in self.inner.fields.items() if k in self.keep}

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        sample = self.inner(record, skipped=skipped)
        return {k: v for k, v in sample.items() if k in self.keep}


class TaskCollator(Collator):
    """A :class:`~zoo.data.collate.Collator` that tags each batch with its ``task``."""

    def __init__(self, fields: Mapping[str, FieldSpec], task: str):
        super().__init__(fields)
        self.task = task

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(samples)
        batch["task"] = self.task
        return batch


# --- readers ------------------------------------------------------------------------------------
class CaptionPairs(SkipReplaceDataset):
    """Every (image, caption) pair of a :class:`~zoo.data.coco.CocoCaptions` reader, images
    in id order and captions in annotation order (the official loader's pass over the
    Karpathy HDF5 captions)."""

    def __init__(self, reader: Any):
        super().__init__(f"{reader.name} (pairs)", reader.builder)
        self.reader = reader
        self.max_pixels = reader.max_pixels
        self.pairs = [
            (index, k)
            for index, image_id in enumerate(reader.ids)
            for k in range(len(reader.captions(image_id)))
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> dict[str, Any]:
        image_index, k = self.pairs[index]
        record = self.reader.read(image_index)
        record["caption"] = record["captions"][k]
        return record


class QuestionImages(SkipReplaceDataset):
    """The images of one probe question: ``{"image", "label", "image_id", "source"}``
    records for ``(image_id, label)`` pairs, images read from ``image_root`` /
    ``file_names[image_id]``."""

    def __init__(
        self,
        name: str,
        image_root: Path,
        file_names: Mapping[int, str],
        questions: Sequence[tuple[int, int]],
        builder: Builder,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(name, builder)
        self.image_root = Path(image_root)
        self.file_names = dict(file_names)
        self.image_ids = [int(i) for i, _ in questions]
        self.labels = torch.tensor([int(y) for _, y in questions], dtype=torch.long)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        path = self.image_root / self.file_names[image_id]
        image = decode_image(path, max_pixels=self.max_pixels)
        return {
            "image": image,
            "label": int(self.labels[index]),
            "image_id": image_id,
            "source": str(path),
        }


# --- where the files are -----------------------------------------------------------------------
class _CocoFiles:
    """The COCO 2017 layout under ``root``: split ``s`` in folder ``folders.get(s, s + "2017")``."""

    def __init__(self, root: Path, folders: Mapping[str, str]):
        self.root = root
        self.folders = dict(folders)

    def folder(self, split: str) -> str:
        return self.folders.get(split, f"{split}2017")

    def images(self, split: str) -> Path:
        return self.root / self.folder(split)

    def _annotation(self, kind: str, split: str) -> Path:
        return self.root / "annotations" / f"{kind}_{self.folder(split)}.json"

    def instances(self, split: str) -> Path:
        return self._annotation("instances", split)

    def captions(self, split: str) -> Path:
        return self._annotation("captions", split)

    def questions(self, split: str) -> Path:
        return self._annotation("questions", split)


def _require(*paths: Path, why: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{why}: not found: {', '.join(missing)}")


class ViSFTDataModule(ZooDataModule):
    """COCO (or generated CLEVR-like) detection, segmentation and captions for ViSFT
    (module docstring).

    Args:
        source: ``coco`` (a COCO 2017 folder at ``root``) or ``clevr`` (generated scenes).
        root: the COCO folder; for ``clevr``, where the scenes are written (default: the
            zoo cache, a folder named after the generator's parameters).
        clevr: options of :class:`~zoo.data.clevr_scenes.ClevrScenes` (``splits``,
            ``seed``, ``num_objects``, ``categories``, ``styles``, ...).
        tasks: the tasks this run trains (stage 1: one, stage 2: all three; default all).
        task_ratios: task → sampling weight, renormalised over ``tasks`` (default ViSFT's
            caption 0.4, segmentation 0.3, detection 0.3); naming a task outside
            ``tasks`` is an error.
        image_size: the square side of every image (the ViT's input).
        batch_size: per task, an int for all or ``{task: size}``.
        eval_batch_size: evaluation batch size (default: the task's ``batch_size``).
        hflip: horizontal-flip probability for detection and segmentation (DETR: 0.5).
        crop_scale: a random-resized crop's area range for detection and segmentation
            (``None``: plain resize).
        min_word_freq: words seen more than this often enter the vocabulary (default 5 for
            ``coco``, the official value; 1 for ``clevr``).
        max_caption_length: the most words of an encoded caption (official: 50).
        caption_sampling: ``random``, one caption per image per pass; ``all``, every pair.
        steps_per_epoch: the mix's epoch (default: the sum of the task loaders' lengths).
        train_split: the training split.
        val_split: the split of the validation loss (``None``: no validation loop).
        question_splits: (probe-fit, probe-test) splits of the probe questions.
        left_right_query: the ``query`` (``"A|B"`` shapes) of the ``left_right`` probe.
        split_folders: ``coco``: split → folder name (default ``<split>2017``).
        mean: pixel normalisation mean (default ImageNet's, the official code's).
        std: pixel normalisation std (default ImageNet's).
        num_workers: DataLoader workers of each task's loader.
        pin_memory: pin batches in page-locked memory.
        drop_last: drop each task's last incomplete batch in training.
        max_pixels: the decoding budget of one image (:func:`zoo.data.samples.decode_image`).
        tokenizer: the text tokenizer of caption retrieval (``clip-bpe`` or a local
            tokenizer folder), for a backbone that comes with a text tower
            (``model.base``); ``None``: no retrieval.
        context_length: the tokenizer's context length (the base's text tower's).
    """

    def __init__(
        self,
        source: Literal["clevr", "coco"] = "clevr",
        root: str | None = None,
        clevr: dict[str, Any] | None = None,
        tasks: list[Task] | None = None,
        task_ratios: dict[str, float] | None = None,
        image_size: int = 64,
        batch_size: int | dict[str, int] = 8,
        eval_batch_size: int | None = None,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] | None = None,
        min_word_freq: int | None = None,
        max_caption_length: int = 50,
        caption_sampling: Literal["random", "all"] = "random",
        steps_per_epoch: int | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        question_splits: tuple[str, str] = ("train", "test_ood"),
        left_right_query: str = "circle|square",
        split_folders: dict[str, str] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        tokenizer: str | None = None,
        context_length: int = 77,
    ):
        from zoo.data.task_mix import normalise_ratios

        self.tasks: list[str] = list(tasks) if tasks is not None else list(TASKS)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"data.tasks must be distinct tasks of {list(TASKS)}, got {tasks}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"data.tasks: unknown tasks {unknown}; known: {list(TASKS)}")
        self.batch_sizes = self._batch_sizes(batch_size)
        super().__init__(
            max(self.batch_sizes.values()), num_workers, pin_memory, drop_last, eval_batch_size
        )
        self.save_hyperparameters()
        self._eval_batch_size = eval_batch_size
        if source not in ("clevr", "coco"):
            raise ValueError(f"data.source must be 'clevr' or 'coco', got {source!r}")
        if task_ratios is None:
            task_ratios = {t: VISFT_TASK_RATIOS[t] for t in self.tasks}
        self.task_ratios = normalise_ratios(task_ratios, self.tasks, "data.task_ratios")
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"data.hflip is a probability, got {hflip}")
        if min_word_freq is not None and min_word_freq < 0:
            raise ValueError(f"data.min_word_freq must be >= 0, got {min_word_freq}")
        if caption_sampling not in ("random", "all"):
            raise ValueError(
                f"data.caption_sampling must be 'random' or 'all', got {caption_sampling!r}"
            )
        for name in question_splits:
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"data.question_splits must be two split names, got {question_splits}"
                )
        if len(question_splits) != 2:
            raise ValueError(f"data.question_splits must be two split names, got {question_splits}")
        self.source = source
        self.image_size = int(image_size)
        self.hflip = float(hflip)
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.min_word_freq = (
            int(min_word_freq) if min_word_freq is not None else _MIN_WORD_FREQ[source]
        )
        self.max_caption_length = int(max_caption_length)
        self.caption_sampling = caption_sampling
        self.steps_per_epoch = steps_per_epoch
        self.train_split, self.val_split = train_split, val_split
        self.question_splits: tuple[str, str] = (question_splits[0], question_splits[1])
        self.left_right_query = left_right_query
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_pixels = max_pixels
        self.tokenizer_name = tokenizer
        self.context_length = int(context_length)
        # what setup() fills
        self.vocab: Any = None
        self.num_classes: dict[str, int] = {}
        self.classnames: list[str] | None = None
        self._ready = False
        self._train_sets: dict[str, Dataset] = {}
        self._task_sets: dict[tuple[str, str], Dataset] = {}
        self._question_sets: dict[tuple[str, str], QuestionImages] = {}
        self._instances: dict[tuple[str, bool], Any] = {}  # (split, train) → COCO index owner
        self._located: Any = None  # the generated scenes' files, once located
        if source == "clevr":
            from zoo.data.clevr_scenes import ClevrScenes

            options = {"image_size": self.image_size, **(clevr or {})}
            if "root" in options:
                raise ValueError("data.clevr: give the folder as data.root, not clevr.root")
            try:
                self.scenes: Any = ClevrScenes(root=root, **options)
            except TypeError as err:
                raise ValueError(f"data.clevr: {err} (options of ClevrScenes)") from None
            # written by prepare_data, located by setup: nothing is read or written here
            self.generated.append(self.scenes)
            self._coco: _CocoFiles | None = None
        else:
            if clevr:
                raise ValueError("data.clevr is only read with data.source: clevr")
            if not root:
                raise ValueError("data.source coco needs data.root, the COCO 2017 folder")
            self.scenes = None
            self._coco = _CocoFiles(Path(root).expanduser(), split_folders or {})

    def _batch_sizes(self, batch_size: int | Mapping[str, int]) -> dict[str, int]:
        if isinstance(batch_size, Mapping):
            extra = [t for t in batch_size if t not in self.tasks]
            missing = [t for t in self.tasks if t not in batch_size]
            if extra or missing:
                raise ValueError(
                    f"data.batch_size must give exactly the tasks {self.tasks}; "
                    f"extra {extra}, missing {missing}"
                )
            sizes = {t: int(batch_size[t]) for t in self.tasks}
        else:
            sizes = {t: int(batch_size) for t in self.tasks}
        if any(v < 1 for v in sizes.values()):
            raise ValueError(f"data.batch_size must be >= 1, got {sizes}")
        return sizes

    # --- files --------------------------------------------------------------------------------
    def _files(self) -> Any:
        """Where each split's images and annotation files are (``images(split)``,
        ``instances(split)``, ``captions(split)``, ``questions(split)``)."""
        if self._coco is not None:
            return self._coco
        if self._located is None:  # FileNotFoundError naming prepare_data when unwritten
            self._located = self.scenes.locate()
        return self._located

    def _split_files(self, split: str) -> Any:
        files = self._files()
        if self._coco is None and split not in files.splits:
            raise ValueError(
                f"split {split!r} is not in the generated scenes (data.clevr.splits: "
                f"{list(files.splits)})"
            )
        return files

    @property
    def preprocess(self) -> Any:
        from zoo.preprocess import PreprocessSpec

        return PreprocessSpec(
            image_size=self.image_size,
            mean=self.mean,  # type: ignore[arg-type]
            std=self.std,  # type: ignore[arg-type]
            interpolation="bilinear",
            tokenizer=self.tokenizer_name,
            context_length=self.context_length,
        )

    def _image_transform(self) -> SquareImage:
        return SquareImage(self.image_size, self.mean, self.std)

    # --- readers ------------------------------------------------------------------------------
    def _instances_reader(self, task: str, split: str, train: bool) -> Any:
        """A :class:`~zoo.data.coco.CocoInstances` for ``task``: detection and segmentation
        readers of one split share one parsed annotation index (COCO's train file is
        ~450 MB of JSON)."""
        from zoo.data.coco import CocoInstances, DetectionBuilder

        files = self._split_files(split)
        annotation, images = files.instances(split), files.images(split)
        _require(annotation, images, why=f"{task} data of split {split!r}")
        masks = task == "segmentation"
        builder = TaskFieldsBuilder(
            DetectionBuilder(
                size=self.image_size,
                hflip=self.hflip if train else 0.0,
                crop_scale=self.crop_scale if train else None,
                mean=self.mean,
                std=self.std,
                masks=masks,
            ),
            TASK_FIELDS[task] + _BOOKKEEPING,
        )
        drop_empty = masks and train  # Mask2Former's training filter; DETR keeps them
        owner = self._instances.get((split, train))
        if owner is None:
            reader = CocoInstances(
                annotation, images, builder, masks, drop_empty, max_pixels=self.max_pixels
            )
            self._instances[(split, train)] = reader
            return reader
        # the same parsed index, another builder / mask setting / image filter
        reader = copy.copy(owner)
        reader.builder, reader.masks = builder, masks
        reader.skips = SkipCounter(owner.name)
        ids = sorted(owner.coco.imgs)
        reader.ids = [i for i in ids if reader._annotations(i)] if drop_empty else ids
        return reader

    def _captions_reader(self, split: str, train: bool) -> Any:
        from zoo.data.coco import CocoCaptions

        files = self._split_files(split)
        annotation, images = files.captions(split), files.images(split)
        _require(annotation, images, why=f"caption data of split {split!r}")
        builder = CaptionTokensBuilder(
            self.vocab, self._image_transform(), references=not train, first_caption=not train
        )
        reader = CocoCaptions(
            annotation, images, builder, drop_empty=True, max_pixels=self.max_pixels
        )
        if train and self.caption_sampling == "all":
            return CaptionPairs(reader)
        return reader

    def _task_dataset(self, task: str, split: str, train: bool) -> Dataset:
        if task == "caption":
            if self.vocab is None:
                raise ValueError(
                    "caption data needs the vocabulary: 'caption' must be in data.tasks "
                    "(it is built from the train captions in setup)"
                )
            return self._captions_reader(split, train)
        return self._instances_reader(task, split, train)

    # --- setup ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Read what exists (``prepare_data`` wrote the generated scenes): the vocabulary
        from the train captions, the categories from the train instances, and the
        training readers of every task."""
        if self._ready:
            return
        from zoo.heads.captioner import CaptionVocab

        split = self.train_split
        files = self._split_files(split)
        if "caption" in self.tasks:
            _require(files.captions(split), why="the caption vocabulary (train captions)")
            from zoo.data.coco import load_coco

            coco = load_coco(files.captions(split), ("images", "annotations"))
            anns = sorted(coco.dataset["annotations"], key=lambda a: (a["image_id"], a["id"]))
            self.vocab = CaptionVocab.from_captions(
                (str(a.get("caption", "")) for a in anns),
                min_word_freq=self.min_word_freq,
                max_length=self.max_caption_length,
            )
        for task in self.tasks:
            self._train_sets[task] = self._task_dataset(task, split, train=True)
        instances = next((r for (s, t), r in self._instances.items() if t and s == split), None)
        if instances is not None:
            self.classnames = list(instances.classnames)
            count = len(instances.classnames)
            self.num_classes = {t: count for t in ("detection", "segmentation") if t in self.tasks}
        self._ready = True
        if self.val_split is not None and (stage in (None, "fit", "validate")):
            for task in self.tasks:  # fail now, naming the file, not after an epoch
                self._eval_dataset(task, self.val_split)

    # --- training -------------------------------------------------------------------------
    def _shard(self) -> dict[str, int]:
        trainer = self.trainer
        return dict((trainer.distributed_sampler_kwargs if trainer is not None else None) or {})

    def train_dataloader(self) -> Any:
        """A :class:`~zoo.data.task_mix.TaskMixLoader` over one resumable loader per task."""
        from zoo.data.resumable import global_seed
        from zoo.data.task_mix import TaskMixLoader, task_loader, task_seed

        self.setup("fit")
        seed, shard = global_seed(), self._shard()
        world = shard.get("num_replicas", 1)
        loaders = {}
        for task in self.tasks:
            dataset = self._train_sets[task]
            batch = self.batch_sizes[task]
            needed = batch * world if self.drop_last else world
            if len(dataset) < needed:  # type: ignore[arg-type]
                raise ValueError(
                    f"{task} training data ({self._where_task(task, self.train_split)}) holds "
                    f"{len(dataset)} samples; training needs at least {needed} (batch_size "  # type: ignore[arg-type]
                    f"{batch} x {world} ranks)"
                )
            loaders[task] = task_loader(
                dataset,
                batch,
                seed=task_seed(seed, task),
                collate_fn=TaskCollator(dataset.builder.fields, task),  # type: ignore[attr-defined]
                drop_last=self.drop_last,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                **shard,
            )
        mix = TaskMixLoader(loaders, self.task_ratios, seed, self.steps_per_epoch)
        if self._train_loader_state is not None:
            mix.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = mix
        return mix

    def _where_task(self, task: str, split: str) -> str:
        files = self._files()
        path = files.captions(split) if task == "caption" else files.instances(split)
        return str(path)

    # --- evaluation -----------------------------------------------------------------------
    def _eval_dataset(self, task: str, split: str) -> Dataset:
        key = (task, split)
        dataset = self._task_sets.get(key)
        if dataset is None:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
            self.setup()
            dataset = self._task_dataset(task, split, train=False)
            dataset.on_bad = "drop"  # type: ignore[attr-defined]  # never score stand-ins
            if len(dataset) == 0:  # type: ignore[arg-type]
                raise ValueError(f"{task} data of split {split!r} holds no samples")
            self._task_sets[key] = dataset
        return dataset

    def _eval_loader(self, dataset: Dataset, batch_size: int, collate_fn: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_fn,
        )

    def task_dataloader(self, task: str, split: str) -> DataLoader:
        """``task``'s batches of ``split`` in the training format plus ``image_id`` (and
        ``captions`` for captions): no augmentation, dataset order (images by id)."""
        dataset = self._eval_dataset(task, split)
        batch = self._eval_batch_size or self.batch_sizes.get(task, self.batch_size)
        collate = TaskCollator(dataset.builder.fields, task)  # type: ignore[attr-defined]
        return self._eval_loader(dataset, batch, collate)

    def val_dataloader(self) -> Any:
        """Every task's ``val_split`` batches in turn (the module's validation loss)."""
        from zoo.data.task_mix import TaskSequenceLoader

        if self.val_split is None:
            return []
        return TaskSequenceLoader({t: self.task_dataloader(t, self.val_split) for t in self.tasks})

    def test_dataloader(self) -> list:
        return []

    # --- probe questions ------------------------------------------------------------------
    def _questions(self, split: str, question: str) -> list[tuple[int, int]]:
        """``(image_id, label)`` of ``question`` in ``questions_<split>.json``, by record id."""
        if question not in QUESTIONS:
            raise ValueError(f"unknown probe question {question!r}; known: {list(QUESTIONS)}")
        path = self._split_files(split).questions(split)
        _require(path, why=f"the {question!r} probe of split {split!r} (probe questions)")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))["questions"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: not a questions file ({type(err).__name__}: {err})"
            ) from None
        kind = QUESTIONS[question]
        chosen = [
            r
            for r in sorted(records, key=lambda r: r["id"])
            if r.get("task") == kind
            and (question != "left_right" or r.get("query") == self.left_right_query)
        ]
        if not chosen:
            what = f" with query {self.left_right_query!r}" if question == "left_right" else ""
            raise ValueError(f"{path} holds no {kind!r} question{what}")
        return [(int(r["image_id"]), int(r["label"])) for r in chosen]

    def _file_names(self, split: str) -> dict[int, str]:
        """Image id → file name, from the split's instances (or captions) file."""
        files = self._split_files(split)
        for path in (files.instances(split), files.captions(split)):
            if path.is_file():
                images = json.loads(path.read_text(encoding="utf-8")).get("images", [])
                return {int(im["id"]): str(im["file_name"]) for im in images}
        raise FileNotFoundError(
            f"no image list for split {split!r}: neither {files.instances(split)} nor "
            f"{files.captions(split)} exists"
        )

    def question_dataloader(self, split: str, question: str) -> DataLoader:
        """``{"image", "label"}`` batches of the images that have ``question``
        (``count`` / ``left_right``) in ``questions_<split>.json``, in record order."""
        key = (split, question)
        dataset = self._question_sets.get(key)
        if dataset is None:
            pairs = self._questions(split, question)
            names = self._file_names(split)
            unknown = sorted({i for i, _ in pairs} - names.keys())
            if unknown:
                raise ValueError(
                    f"{self._split_files(split).questions(split)}: image ids {unknown[:5]} "
                    "are not in the split's image list"
                )
            dataset = QuestionImages(
                f"{question} questions of {split}",
                self._split_files(split).images(split),
                names,
                pairs,
                LabelledImageBuilder(self._image_transform()),
                self.max_pixels,
            )
            dataset.on_bad = "drop"
            self._question_sets[key] = dataset
        batch = self._eval_batch_size or max(self.batch_sizes.values())
        return self._eval_loader(dataset, batch, dataset.builder.collator())

    def num_answers(self, question: str) -> int:
        """The probe's class count: 2 for ``left_right``; for ``count``, the generator's
        most objects + 1 (``clevr``), else the largest label of the question splits + 1."""
        if question not in QUESTIONS:
            raise ValueError(f"unknown probe question {question!r}; known: {list(QUESTIONS)}")
        if question == "left_right":
            return 2
        if self.scenes is not None:
            return int(self.scenes.num_objects[1]) + 1
        return 1 + max(y for s in self.question_splits for _, y in self._questions(s, question))

    # --- the classification-split protocol: not offered -------------------------------------
    def has_eval_split(self, split: str) -> bool:
        return False

    def check_eval_split(
        self, split: str, who: str, labels: bool = True, captions: bool = False
    ) -> None:
        _no_classification_split(who)

    def eval_dataloader(self, split: str) -> DataLoader:
        _no_classification_split(f"eval_dataloader({split!r})")


def _no_classification_split(who: str) -> NoReturn:
    raise ValueError(
        f"{who} needs a labelled classification split, which the ViSFT data does not have: "
        "its evaluations read task_dataloader(task, split) and question_dataloader(split, "
        "question)"
    )
