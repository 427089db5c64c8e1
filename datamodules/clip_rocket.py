"""CLIP-rocket data (Fini et al., TMLR 2023; official ``datasets.py`` ``ImageCaptionDatasetCL2L``
and ``tokenizer.py``): each training sample is one weak pair and K strong pairs.

- weak image x⁰: the ``clip`` view, ``RandomResizedCrop(scale=(0.5, 1))`` (official
  ``--weak-min-scale 0.5``);
- strong images xᵏ: the ``ssl`` view (SimCLR / MoCo-v3 stack: crop 0.08–1, colour jitter
  (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5, flip; solarisation p 0 by
  default, ``solarize_p``), at ``multicrop_size`` when set (official ``--multicrop-resize``,
  192 in the 29M run), else at ``image_size``;
- weak caption t⁰ and strong captions tᵏ: :class:`zoo.data.text_augment.TextAugmenter`
  (stop-word removal; EDA swap / deletion / synonym replacement on the strong ones).

Batches hold ``image`` (B, 3, H, W), ``text`` (B, L) (the weak caption), ``views`` (K
tensors (B, 3, H', W')), ``text_views`` (K tensors (B, L)), ``caption`` (the caption as
read) and ``label``. K is ``num_views`` (official ``--num-augs``, default 2); K = 0 gives
CLIP's samples (with the weak caption's stop-word removal, as the official code does).
Evaluation splits are unchanged (eval transform, raw caption).

Not supported: the official ``caption_sampling='multi'`` (each view drawing its own caption
of a multi-caption image, used in the 29M run): the readers draw one caption per access
(``pick_caption``), which every view of the sample then uses.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from zoo.data.builders import ImageTextBuilder
from zoo.data.collate import DEFAULT_FIELDS, VIEWS, Collator, FieldSpec
from zoo.data.image_text_datamodule import ImageTextDataModule
from zoo.data.samples import SkipReplaceDataset
from zoo.data.text_augment import TextAugmenter, TextAugmentSpec
from zoo.data.tokenizers import TextTokenizer
from zoo.data.transforms import ImageTransform

#: Batches carry the strong captions as a list of K (B, L) token tensors.
CLIP_ROCKET_FIELDS: dict[str, FieldSpec] = {**DEFAULT_FIELDS, "text_views": VIEWS}


class CLIPRocketBuilder(ImageTextBuilder):
    """``{"image", "caption", "label"}`` → ``image`` (weak view), ``text`` (weak caption
    tokens), ``views`` (K strong images), ``text_views`` (K strong caption tokens),
    ``caption``, ``label``, ``skipped``.

    Random draws, in order: the image transform, each view transform, then the captions
    from a ``random.Random`` seeded from Python's ``random`` (which the readers seed per
    sample from (seed, epoch, index), so a sample's captions are reproducible and a resumed
    run is exact).
    """

    def __init__(
        self,
        image_transform: ImageTransform | None = None,
        tokenizer: TextTokenizer | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        augmenter: TextAugmenter | None = None,
    ):
        super().__init__(image_transform, tokenizer, view_transforms)
        self.augmenter = augmenter or TextAugmenter()

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = super().fields
        return {**fields, "text_views": VIEWS} if self.view_transforms else fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        image, caption = record["image"], record.get("caption", "")
        sample: dict[str, Any] = {
            "image": self.image_transform(image),
            "caption": caption,
            "label": int(record.get("label", -1)),
            "skipped": int(skipped),
        }
        if self.view_transforms:
            sample["views"] = [view(image) for view in self.view_transforms]
        rng = random.Random(random.getrandbits(64))
        texts = self.augmenter.views(caption, len(self.view_transforms), rng)
        tokens = self.tokenizer(texts)
        sample["text"] = tokens[0]
        if self.view_transforms:
            sample["text_views"] = list(tokens[1:])
        return sample


def as_text_augment(value: TextAugmentSpec | Mapping[str, Any] | Any | None) -> TextAugmentSpec:
    """The ``text_augment:`` argument as a :class:`TextAugmentSpec` (a mapping, or a
    jsonargparse Namespace from the command line)."""
    if value is None:
        return TextAugmentSpec()
    if isinstance(value, TextAugmentSpec):
        return value
    mapping = dict(value) if isinstance(value, Mapping) else dict(vars(value))
    known = set(TextAugmentSpec.__dataclass_fields__)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown data.text_augment keys: {unknown}; known: {sorted(known)}")
    return TextAugmentSpec(**mapping)


class CLIPRocketDataModule(ImageTextDataModule):
    """Image–text pairs with one weak and ``num_views`` strong image and caption views.

    Arguments are those of :class:`zoo.data.image_text_datamodule.ImageTextDataModule`,
    plus ``text_augment`` (:class:`zoo.data.text_augment.TextAugmentSpec`; defaults are the
    official code's) and ``multicrop_size`` (the strong views' crop size; ``None``: the
    ``image_size``).
    """

    default_train_transform = "clip"
    default_view_transform = "ssl"
    default_num_views = 2
    collate_fn = Collator(CLIP_ROCKET_FIELDS)

    def __init__(
        self,
        *,
        text_augment: TextAugmentSpec | None = None,
        multicrop_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.text_augment = as_text_augment(text_augment)
        if multicrop_size is not None and multicrop_size <= 0:
            raise ValueError(f"data.multicrop_size must be > 0, got {multicrop_size}")
        self.multicrop_size = multicrop_size

    def transform(self, name: str):
        """The strong views at ``multicrop_size`` (when set); everything else as the base."""
        if self.multicrop_size and name == self.view_transform_name and name != "eval":
            from zoo.data.transforms import build_transform

            spec = self.preprocess
            return build_transform(
                name,
                self.multicrop_size,
                spec.mean,
                spec.std,
                solarize_p=self.solarize_p,
                interpolation=spec.interpolation,
            )
        return super().transform(name)

    def _reader(self, spec, train: bool, common: dict[str, Any]):
        """Training readers make CLIP-rocket samples (:class:`CLIPRocketBuilder`); every
        reader takes a ``builder``, and map-style ones get it set as well (the COCO reader
        builds its own)."""
        if not train:
            return super()._reader(spec, train, common)
        builder = CLIPRocketBuilder(
            common["image_transform"],
            common["tokenizer"],
            common["view_transforms"],
            TextAugmenter(self.text_augment),
        )
        dataset = super()._reader(spec, train, {**common, "builder": builder})
        if isinstance(dataset, SkipReplaceDataset):
            dataset.builder = builder
        return dataset
