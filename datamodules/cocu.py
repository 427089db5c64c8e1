"""CoCu data (Xing et al., NeurIPS 2023; official ``datasets/builder.py``
``WordAugTokenizeWrapper``): image–text pairs whose text is ``[caption, prompt(c1),
prompt(c2), prompt(c3)]``, plus the label-mask data zero-shot segmentation is scored on.

**Text rows** (:class:`WordAugTokenizer`, the tokenizer of the training readers):

- ``concepts: curated`` (CoCu): the caption field is the curated one, ``caption \\n
  json(scored) \\n json(kmeans)`` (:mod:`zoo.cocu.curation`); c1..c3 are the top-3 scored
  concepts (``kmeans_sampling: false``, the official default), or sampled through the k-means
  clusters (``kmeans_sampling: true``);
- ``concepts: caption`` (the GroupViT baseline): c1..c3 are the caption's words that are in
  the concept ``gallery`` (GroupViT tags nouns with NLTK, which needs downloaded models; a
  gallery lookup stands in: for the digit mosaics the gallery is the ten digit names);
- each prompt is a random template of the 80 ImageNet templates (``template_set: full``);
  missing prompts are padded with the caption; every row is tokenised (``(1 + K, L)``).

**Curation in prepare_data** (the tiny setting): with ``source: mosaics`` and
``curation.teacher`` (a ``zoo fit`` checkpoint of a CLIP: ``recipes/cocu/tiny_teacher.yaml``,
passed by ``zoo reproduce`` through the recipe's ``# after:`` line), ``prepare_data`` writes
the mosaics, embeds their training images with the teacher, curates
(:func:`zoo.cocu.rewrite.curate_captions`) and writes ``train.jsonl`` (image, curated
caption) under the cache, keyed by the teacher's sha256 and the parameters
(:class:`CuratedMosaics`); ``setup`` reads it as the training split. Paper scale reads
pre-curated WebDataset shards (``zoo curate``).

**Segmentation data** (``segmentation``: :class:`SegmentationSpec`): a VOC-layout folder
(``layout: voc``, relative to ``data.root``) or, with ``source: mosaics`` and no ``root``,
the generated mosaics' ``test`` masks; served by ``task_dataloader("segmentation", split)``
with ``segmentation_classnames`` (default: the digit names, or the 20 VOC classes).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from zoo.cocu.curation import (
    MAX_NGRAM,
    CurationConfig,
    build_gallery,
    extract_concepts,
    parse_rewritten,
    sample_concepts,
)
from zoo.data.image_text_datamodule import ImageTextDataModule
from zoo.data.splits import SplitSpec

#: PASCAL VOC 2012's 20 object classes (mmsegmentation's ``PascalVOCDataset`` order; mask
#: value c + 1 is class c, 0 background, 255 ignored).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip


#: GroupViT's segmentation prompt set (``template: simple``).
SIMPLE_TEMPLATES = ["a photo of a {}."]


class WordAugTokenizer:
    """``text -> (1 + num_prompts, L)`` tokens: ``[caption, prompt(c1), ..., prompt(cK)]``
    (module docstring). Randomness (templates, k-means draws) comes from Python's ``random``,
    which the readers seed per sample from (seed, epoch, index)."""

    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        templates: Sequence[str],
        concepts: Literal["curated", "caption"] = "curated",
        gallery: Sequence[str] = (),
        num_prompts: int = 3,
        kmeans_sampling: bool = False,
    ):
        if concepts not in ("curated", "caption"):
            raise ValueError(f"data.concepts must be 'curated' or 'caption', got {concepts!r}")
        if concepts == "caption" and not gallery:
            raise ValueError("data.concepts: caption needs a concept gallery (data.gallery)")
        self.tokenizer = tokenizer
        self.templates = list(templates)
        self.concepts = concepts
        self.gallery = dict.fromkeys(gallery)
        self.num_prompts = num_prompts
        self.kmeans_sampling = kmeans_sampling
        self._cache: dict[str, torch.Tensor] = {}

    #: Most distinct strings kept tokenised (a few MB at context 16-77).
    cache_size = 200_000

    def texts(self, text: str) -> list[str]:
        """The 1 + K strings of one sample."""
        if self.concepts == "curated":
            caption, scored, kmeans = parse_rewritten(text)
            rng = np.random.default_rng(random.getrandbits(64)) if self.kmeans_sampling else None
            nouns = sample_concepts(scored, kmeans, self.num_prompts, self.kmeans_sampling, rng)
        else:
            caption = text
            nouns = extract_concepts(caption, self.gallery, MAX_NGRAM)[: self.num_prompts]
        prompts = [random.choice(self.templates).format(noun) for noun in nouns]
        prompts += [caption] * (self.num_prompts - len(prompts))
        return [caption, *prompts]

    def __call__(self, text: str | list[str]) -> torch.Tensor:
        if isinstance(text, list):  # a plain batch of strings (zero-shot prompts)
            return self.tokenizer(text)
        return self.tokenize_rows(self.texts(text))

    def tokenize_rows(self, rows: list[str]) -> torch.Tensor:
        """Token ids (len(rows), L) through a per-string cache: the prompts are drawn from
        templates × concepts and each caption recurs every epoch, so after the first epoch
        the BPE tokenizer (about 3 ms a sample otherwise, a quarter of a tiny step) is
        rarely called. The cache is bounded and dropped on pickling (one per worker)."""
        missing = [t for t in dict.fromkeys(rows) if t not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            ids = torch.as_tensor(self.tokenizer(missing))
            self._cache.update(zip(missing, ids))
        return torch.stack([self._cache[t] for t in rows])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}


@dataclass
class CurationSpec:
    """Curation run by ``prepare_data`` (tiny setting): ``teacher`` (a ``zoo fit``
    checkpoint of a CLIP, or any :class:`~zoo.fewshot.clip_source.CLIPSource` path with
    ``teacher_format``) and the fields of :class:`zoo.cocu.curation.CurationConfig`."""

    teacher: str | None = None
    teacher_format: str = "auto"
    size: int = 8
    membership: str = "exact"
    exclude_self: bool = False
    enable_kmeans: bool = False
    backend: str = "auto"
    batch_size: int = 1024
    block_size: int = 65536

    def config(self) -> CurationConfig:
        return CurationConfig(
            size=self.size,
            membership=self.membership,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            block_size=self.block_size,
            backend=self.backend,  # type: ignore[arg-type]
            exclude_self=self.exclude_self,
            enable_kmeans=self.enable_kmeans,
        )


@dataclass
class SegmentationSpec:
    """Zero-shot segmentation data: ``root`` (relative to ``data.root``; ``None`` with
    ``source: mosaics``: the generated mosaics), ``layout`` (``voc`` / ``mosaics``),
    ``split``, ``size`` (resize the shorter side; ``None``: as stored), ``classnames``
    (default: VOC's 20 or the digit names)."""

    root: str | None = None
    layout: str = "mosaics"
    split: str = "test"
    size: int | None = None
    classnames: list[str] | None = None


@dataclass
class CuratedMosaics:
    """The mosaics' training captions curated with a teacher CLIP (``GeneratedData``):
    ``write`` curates once into ``<cache>/cocu-curated/<key>/train.jsonl``, where the key
    hashes the teacher's sha256 and every parameter; ``locate`` returns that file."""

    mosaics: Any
    curation: CurationSpec
    gallery: list[str] = field(default_factory=list)

    def _teacher_sha256(self) -> str:
        from zoo.hub.security import sha256_file

        path = Path(str(self.curation.teacher)).expanduser()
        if path.is_file():
            return sha256_file(path)
        return hashlib.sha256(str(self.curation.teacher).encode()).hexdigest()

    def params(self) -> dict[str, Any]:
        return {
            "teacher_sha256": self._teacher_sha256(),
            "mosaics": self.mosaics.params(),
            "curation": {k: v for k, v in asdict(self.curation).items() if k != "teacher"},
            "gallery": self.gallery,
        }

    def folder(self, params: dict[str, Any]) -> Path:
        from zoo.data.cache import cache_root

        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        return cache_root() / "cocu-curated" / key

    def locate(self) -> Path:
        from zoo.data.generated import locate_written

        params = self.params()
        folder = locate_written(self.folder(params), "manifest.json", params, "curated mosaics")
        return folder / "train.jsonl"

    def write(self) -> Path:
        from zoo.cocu.rewrite import curate_captions, embed_images, load_teacher
        from zoo.data.generated import write_atomically

        files = self.mosaics.write()
        params = self.params()
        folder = self.folder(params)
        if (folder / "manifest.json").is_file():
            return self.locate()
        coco = json.loads(Path(files.captions("train")).read_text())
        names = {img["id"]: img["file_name"] for img in coco["images"]}
        rows = [(names[a["image_id"]], a["caption"]) for a in coco["annotations"]]
        images = Path(files.images("train"))
        # the checkpoint is the recipe's own earlier stage (tiny_teacher.yaml), so its pickle
        # is trusted as ViSFT trusts its stage-1 checkpoints
        teacher = load_teacher(
            str(self.curation.teacher), trust_pickle=True, format=self.curation.teacher_format
        )
        emb = embed_images(teacher, [images / f for f, _ in rows], total=len(rows), progress=False)
        curated = curate_captions(
            emb, [c for _, c in rows], teacher, self.gallery, self.curation.config(), progress=False
        )

        quality = self._quality(files, [f for f, _ in rows], curated)
        print(
            f"[cocu] curated concepts present in the mosaic: top-1 {quality['top1_precision']:.1f} "
            f"%, top-3 {quality['top3_precision']:.1f} % (chance {quality['chance']:.1f} %; "
            f"{len(rows)} training mosaics)",
            flush=True,
        )

        def fill(tmp: Path) -> str:
            lines = [
                json.dumps({"image": str(images / f), "caption": text})
                for (f, _), text in zip(rows, curated)
            ]
            (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
            (tmp / "quality.json").write_text(json.dumps(quality, indent=2))
            return json.dumps(params)

        write_atomically(folder, "manifest.json", fill)
        return self.locate()

    def _quality(self, files: Any, names: list[str], curated: list[str]) -> dict[str, float]:
        """How often the curated concepts are right: the mosaics know which digits each image
        holds (COCO instances), so the top-1 and top-3 concepts are checked against them."""
        from zoo.cocu.curation import concept_precision, parse_rewritten
        from zoo.data.digit_mosaics import DIGIT_NAMES

        files_in_order, labels = files.tile_labels("train", self.mosaics.grid)
        row_of = {name: n for n, name in enumerate(files_in_order)}
        truth = [{DIGIT_NAMES[d] for d in labels[row_of[n]].ravel() if d >= 0} for n in names]
        archives = [parse_rewritten(text)[1] for text in curated]
        chance = 100.0 * sum(map(len, truth)) / (len(truth) * len(DIGIT_NAMES))
        return {
            "top1_precision": concept_precision(archives, truth, 1),
            "top3_precision": concept_precision(archives, truth, 3),
            "chance": chance,
        }


class CoCuDataModule(ImageTextDataModule):
    """Image–text pairs with CoCu's prompt rows and zero-shot segmentation data (module
    docstring). Arguments are those of
    :class:`zoo.data.image_text_datamodule.ImageTextDataModule` plus ``concepts``,
    ``num_prompts`` (3), ``template_set`` (``full``: the 80 ImageNet templates; ``simple``),
    ``kmeans_sampling`` (off), ``gallery`` (concept names for ``concepts: caption`` and the
    tiny curation; default with the mosaics: the digit names; plurals are added),
    ``curation`` (:class:`CurationSpec`) and ``segmentation`` (:class:`SegmentationSpec`).
    """

    default_train_transform = "clip"

    def __init__(
        self,
        *,
        concepts: Literal["curated", "caption"] = "curated",
        num_prompts: int = 3,
        template_set: Literal["full", "simple"] = "full",
        kmeans_sampling: bool = False,
        gallery: list[str] | str | None = None,
        curation: CurationSpec | None = None,
        segmentation: SegmentationSpec | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_prompts < 0:
            raise ValueError(f"data.num_prompts must be >= 0, got {num_prompts}")
        self.concepts, self.num_prompts = concepts, num_prompts
        self.template_set, self.kmeans_sampling = template_set, kmeans_sampling
        root = kwargs.get("root")
        self.data_root = Path(root).expanduser() if root else None
        names = self._gallery_names(gallery)
        self.gallery = build_gallery(names) if names else []
        self.curation = _as(CurationSpec, curation)
        self.segmentation = _as(SegmentationSpec, segmentation)
        if self.templates is None or not self.templates:
            self.templates = list(SIMPLE_TEMPLATES)
        self.curated: CuratedMosaics | None = None
        if self.curation is not None and self.curation.teacher:
            if self.mosaics is None:
                raise ValueError(
                    "data.curation runs in prepare_data for source: mosaics only; curate other "
                    "data with `python -m zoo curate` and read the curated shards or table"
                )
            if concepts != "curated":
                raise ValueError("data.curation is set but data.concepts is not 'curated'")
            self.curated = CuratedMosaics(self.mosaics, self.curation, self.gallery)
            self.generated.append(self.curated)

    def _gallery_names(self, gallery: list[str] | str | None) -> list[str]:
        if isinstance(gallery, str):
            from zoo.cocu.curation import load_gallery

            path = Path(gallery).expanduser()
            if not path.is_absolute() and self.data_root is not None:
                path = self.data_root / path
            return load_gallery(str(path))
        if gallery is not None:
            return list(gallery)
        if self.mosaics is not None:
            from zoo.data.digit_mosaics import DIGIT_NAMES

            return list(DIGIT_NAMES)
        return []

    # --- splits ------------------------------------------------------------------------------
    def _ensure_splits(self) -> None:
        fresh = not self.splits
        super()._ensure_splits()
        if fresh and self.curated is not None and self.splits:
            self.splits["train"] = self._resolve_split(
                "train",
                SplitSpec(
                    path=str(self.curated.locate()),
                    source="jsonl",
                    image_key="image",
                    caption_keys=["caption"],
                    label_key="",
                ),
                None,
            )

    def word_aug_tokenizer(self) -> WordAugTokenizer:
        from zoo.data.lists import builtin_list

        templates = (
            builtin_list("openai_imagenet")
            if self.template_set == "full"
            else list(SIMPLE_TEMPLATES)
        )
        return WordAugTokenizer(
            self.tokenizer,
            templates,
            self.concepts,
            self.gallery,
            self.num_prompts,
            self.kmeans_sampling,
        )

    def _reader(self, spec, train: bool, common: dict[str, Any]):
        """Training readers tokenise through :class:`WordAugTokenizer`."""
        if train:
            common = {**common, "tokenizer": self.word_aug_tokenizer()}
        return super()._reader(spec, train, common)

    # --- segmentation --------------------------------------------------------------------------
    @property
    def segmentation_classnames(self) -> list[str]:
        spec = self.segmentation or SegmentationSpec()
        if spec.classnames:
            return list(spec.classnames)
        if spec.layout == "voc":
            return list(VOC_CLASSES)
        from zoo.data.digit_mosaics import DIGIT_NAMES

        return list(DIGIT_NAMES)

    def segmentation_dataset(self, split: str | None = None):
        from torchvision.transforms import v2

        from zoo.eval.segmentation import SegmentationFolder

        spec = self.segmentation or SegmentationSpec()
        if spec.root is None:
            if self.mosaics is None:
                raise ValueError("data.segmentation.root is needed unless source: mosaics")
            root, layout = self.mosaics.locate().root, "mosaics"
        else:
            root = Path(spec.root).expanduser()
            if not root.is_absolute() and self.data_root is not None:
                root = self.data_root / root
            layout = spec.layout
        pre = self.preprocess
        transform = v2.Compose(
            [
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(pre.mean, pre.std),
            ]
        )
        return SegmentationFolder(root, split or spec.split, layout, transform, spec.size)

    def task_dataloader(self, task: str, split: str) -> DataLoader:
        """``task_dataloader("segmentation", split)``: image / mask batches (one image per
        batch when sizes vary, i.e. the VOC layout)."""
        if task != "segmentation":
            raise ValueError(f"CoCu's datamodule serves the 'segmentation' task, not {task!r}")
        spec = self.segmentation or SegmentationSpec()
        dataset = self.segmentation_dataset(split if split != "default" else None)
        batch = 1 if (spec.layout == "voc" and spec.root is not None) else self.eval_batch_size
        return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=self.num_workers)


def _as(cls: type, value: Any) -> Any:
    """A dataclass argument given as the dataclass, a mapping or a jsonargparse Namespace."""
    if value is None or isinstance(value, cls):
        return value
    mapping = dict(value) if isinstance(value, Mapping) else dict(vars(value))
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(known)}")
    return cls(**mapping)
