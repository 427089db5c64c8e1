"""Sample builders: a reader's raw record → the sample dict, one small builder per kind.

Each builder declares ``fields`` (name → :class:`~zoo.data.collate.FieldSpec`, how the field
is batched) and is called as ``builder(record, skipped=0)``. Readers
(:class:`~zoo.data.samples.SkipReplaceDataset` subclasses, the WebDataset pipeline) own
decoding, skip-and-count and per-sample seeding, so every builder gets them for free; a
builder may raise :class:`~zoo.data.samples.BadSample` for a malformed record, which is
then skipped and counted like an unreadable image.

- :class:`ImageTextBuilder` (alias :data:`SampleBuilder`): CLIP / SLIP samples, unchanged;
- :class:`LabelledImageBuilder`: image + class label (linear probe, fine-tuning, SSL);
- :class:`ImageMaskBuilder`: image + segmentation / instance masks, transformed jointly;
- :class:`DocumentBuilder`: page image + word boxes + OCR words (LayoutLM-style);
- :class:`ConversationBuilder`: optional image + chat turns → ``input_ids`` / ``labels``.

Joint image / mask / box transforms use torchvision ``transforms.v2``: the mask is a
``tv_tensors.Mask`` and the boxes ``tv_tensors.BoundingBoxes``, so a flip or crop moves
them with the pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.data.collate import COUNT, LIST, VIEWS, Collator, FieldSpec, padded, scalar, stacked
from zoo.data.samples import BadSample
from zoo.data.tokenizers import TextTokenizer
from zoo.data.transforms import ImageTransform, to_rgb_tensor

#: Label value of the tokens a language-model loss ignores (``torch.nn.CrossEntropyLoss``'s
#: and Hugging Face's default ``ignore_index``).
IGNORE_INDEX = -100


class Builder:
    """Base of the sample builders: ``fields`` plus ``__call__(record, skipped)``."""

    @property
    def fields(self) -> dict[str, FieldSpec]:
        raise NotImplementedError

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def collator(self) -> Collator:
        """A ``collate_fn`` for this builder's samples."""
        return Collator(self.fields)


def _views(views: Sequence[ImageTransform], image: Image.Image) -> list[torch.Tensor]:
    return [view(image) for view in views]


class ImageTextBuilder(Builder):
    """``{"image", "caption", "label"}`` → ``image``, ``text`` tokens, ``caption``,
    ``label``, ``skipped`` (+ ``views``): CLIP / SLIP samples.

    The order of the random draws is fixed (CLIP / SLIP reproductions depend on it): the
    caption was chosen by the reader, then ``image_transform``, then each view transform
    in order.
    """

    def __init__(
        self,
        image_transform: ImageTransform | None = None,
        tokenizer: TextTokenizer | None = None,
        view_transforms: Sequence[ImageTransform] = (),
    ):
        self.image_transform = image_transform or to_rgb_tensor()
        self.tokenizer = tokenizer or TextTokenizer()
        self.view_transforms = list(view_transforms)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = {
            "image": stacked(),
            "text": stacked(),
            "caption": LIST,
            "label": scalar(),
            "skipped": COUNT,
        }
        return {**fields, "views": VIEWS} if self.view_transforms else fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        image, caption = record["image"], record.get("caption", "")
        sample: dict[str, Any] = {
            "image": self.image_transform(image),
            "text": self.tokenizer(caption),
            "caption": caption,
            "label": int(record.get("label", -1)),
            "skipped": int(skipped),
        }
        if self.view_transforms:
            sample["views"] = _views(self.view_transforms, image)
        return sample


class SampleBuilder(ImageTextBuilder):
    """:class:`ImageTextBuilder` that is also callable the pre-record way,
    ``builder(image, caption, label, skipped=0)``."""

    def __call__(  # type: ignore[override]
        self,
        record: Mapping[str, Any] | Image.Image,
        caption: str | None = None,
        label: int = -1,
        skipped: int = 0,
    ) -> dict[str, Any]:
        if not isinstance(record, Mapping):
            record = {"image": record, "caption": caption or "", "label": label}
        return super().__call__(record, skipped=skipped)


class LabelledImageBuilder(Builder):
    """``{"image", "label"}`` → ``image``, ``label``, ``skipped`` (+ ``views``)."""

    def __init__(
        self,
        image_transform: ImageTransform | None = None,
        view_transforms: Sequence[ImageTransform] = (),
    ):
        self.image_transform = image_transform or to_rgb_tensor()
        self.view_transforms = list(view_transforms)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = {"image": stacked(), "label": scalar(), "skipped": COUNT}
        return {**fields, "views": VIEWS} if self.view_transforms else fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        image = record["image"]
        sample: dict[str, Any] = {
            "image": self.image_transform(image),
            "label": int(record.get("label", -1)),
            "skipped": int(skipped),
        }
        if self.view_transforms:
            sample["views"] = _views(self.view_transforms, image)
        return sample


def _image_tv(image: Image.Image) -> Any:
    """A PIL image as an RGB uint8 ``tv_tensors.Image``. Joint transforms get tensors, not
    PIL: PIL's and torch's nearest-neighbour resampling pick different source pixels, so
    a PIL image resized next to a tensor mask would drift from it by a pixel."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    rgb = image.convert("RGB") if image.mode != "RGB" else image
    return tv_tensors.Image(F.pil_to_tensor(rgb))


def _image_tensor(image: Any) -> torch.Tensor:
    """A transformed image (PIL or tensor) as a plain float (C, H, W) tensor: uint8 pixels
    divided by 255 (``ToTensor``'s arithmetic, so values equal the other builders'
    default :func:`~zoo.data.transforms.to_rgb_tensor`), floats (e.g. after ``Normalize``)
    kept as they are."""
    from torchvision.transforms.v2 import functional as F

    if isinstance(image, Image.Image):
        image = F.pil_to_tensor(image)
    image = image.as_subclass(torch.Tensor)
    return image if image.is_floating_point() else image.float().div(255)


def _as_long_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, Image.Image):
        value = np.asarray(value)
    return torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value).long()


class ImageMaskBuilder(Builder):
    """``{"image", "mask"}`` → ``image``, ``mask``, ``skipped``: an image with its
    segmentation mask, transformed jointly.

    ``transform`` is a torchvision ``transforms.v2`` callable applied as
    ``transform(image, mask)`` with the RGB image as a uint8 ``tv_tensors.Image`` and the
    mask as a ``tv_tensors.Mask``, so geometric transforms move the mask with the pixels
    (and resize it with nearest-neighbour). The
    image comes back as float (3, H, W) (scaled to [0, 1] unless already float), the mask
    as long. Semantic masks (H, W) are stacked; with ``instance=True`` the record holds
    ``masks`` (N, H, W) and optional ``classes`` (N,), padded over N with ``masks_mask``.
    A mask whose size differs from the image's is a :class:`BadSample`.
    """

    def __init__(self, transform: Callable[..., Any] | None = None, instance: bool = False):
        self.transform = transform
        self.instance = instance
        self.mask_key = "masks" if instance else "mask"

    @property
    def fields(self) -> dict[str, FieldSpec]:
        if self.instance:
            return {
                "image": stacked(),
                "masks": padded(0, mask="masks_mask"),
                "classes": padded(-1),
                "skipped": COUNT,
            }
        return {"image": stacked(), "mask": stacked(), "skipped": COUNT}

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        from torchvision import tv_tensors

        image = _image_tv(record["image"])
        mask = _as_long_tensor(record[self.mask_key])
        if self.instance and mask.dim() == 2:
            mask = mask[None]
        height, width = image.shape[-2:]
        if tuple(mask.shape[-2:]) != (height, width):
            where = record.get("source", "record")
            raise BadSample(str(where), f"mask {tuple(mask.shape)} does not match {width}x{height}")
        mask = tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        sample: dict[str, Any] = {
            "image": _image_tensor(image),
            self.mask_key: mask.as_subclass(torch.Tensor).long(),
        }
        if self.instance:
            classes = record.get("classes")
            n = sample["masks"].shape[0]
            sample["classes"] = (
                _as_long_tensor(classes) if classes is not None else torch.full((n,), -1)
            )
        sample["skipped"] = int(skipped)
        return sample


class DocumentBuilder(Builder):
    """``{"image", "boxes", "words"}`` → ``image``, ``boxes`` (N, 4) float, ``words``,
    ``skipped``: a page with its OCR words, N varying per page.

    ``boxes`` are ``x1, y1, x2, y2`` in pixels. ``transform`` is a torchvision
    ``transforms.v2`` callable applied to ``{"image", "boxes", "labels"}`` with the image a
    uint8 ``tv_tensors.Image``, the boxes ``tv_tensors.BoundingBoxes`` (XYXY) and
    ``labels`` the word indices, so boxes follow flips,
    crops and resizes, and a ``SanitizeBoundingBoxes`` that drops boxes drops their words
    too. With a Hugging Face ``tokenizer`` the words are also tokenized
    (``is_split_into_words``): ``input_ids`` (T,), ``attention_mask`` (T,) and
    ``token_boxes`` (T, 4), each token carrying its word's box (LayoutLM, Xu et al. 2020,
    §2.2; ``LayoutLMTokenizer`` repeats a word's box over its word pieces). Collation pads
    the boxes with a ``boxes_mask``. A record whose words and boxes differ in number is a
    :class:`BadSample`.
    """

    def __init__(
        self,
        transform: Callable[..., Any] | None = None,
        tokenizer: Any = None,
        max_tokens: int | None = None,
    ):
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = {
            "image": stacked(),
            "boxes": padded(0.0, mask="boxes_mask"),
            "words": LIST,
            "skipped": COUNT,
        }
        if self.tokenizer is not None:
            pad = getattr(self.tokenizer, "pad_token_id", None) or 0
            fields |= {
                "input_ids": padded(pad),
                "attention_mask": padded(0),
                "token_boxes": padded(0.0),
            }
        return fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        from torchvision import tv_tensors

        image = _image_tv(record["image"])
        words = [str(w) for w in record.get("words", [])]
        boxes = torch.as_tensor(np.asarray(record.get("boxes", []), dtype=np.float32))
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != len(words):
            where = str(record.get("source", "record"))
            raise BadSample(where, f"{len(words)} words but boxes of shape {tuple(boxes.shape)}")
        height, width = image.shape[-2:]
        data = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.arange(len(words)),
        }
        if self.transform is not None:
            data = self.transform(data)
        kept = data["labels"].tolist()
        sample: dict[str, Any] = {
            "image": _image_tensor(data["image"]),
            "boxes": data["boxes"].as_subclass(torch.Tensor).float(),
            "words": [words[i] for i in kept],
        }
        if self.tokenizer is not None:
            sample |= self._tokens(sample["words"], sample["boxes"])
        sample["skipped"] = int(skipped)
        return sample

    def _tokens(self, words: list[str], boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        if not words:
            ids: list[int] = []
            word_ids: list[int] = []
        else:
            enc = self.tokenizer(
                words,
                is_split_into_words=True,
                add_special_tokens=False,
                truncation=self.max_tokens is not None,
                max_length=self.max_tokens,
            )
            ids, word_ids = enc["input_ids"], enc.word_ids()
        index = torch.tensor(word_ids, dtype=torch.long)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "token_boxes": boxes[index] if len(ids) else boxes.new_zeros(0, 4),
        }


#: LLaVA's conversation JSON (``{"from": "human" | "gpt", "value"}``) in role/content terms.
_LLAVA_ROLES = {"human": "user", "gpt": "assistant"}


class ConversationBuilder(Builder):
    """``{"conversation": [{"role", "content"}, ...], "image"?}`` → ``input_ids``,
    ``labels``, ``attention_mask`` (+ ``image``), for instruction tuning.

    Each turn is ``role_template.format(role=role)`` followed by its content; an
    assistant turn ends with the tokenizer's EOS. ``labels`` copy ``input_ids`` on the
    assistant contents and their EOS and are :data:`IGNORE_INDEX` everywhere else (BOS,
    role headers, user and system turns), as LLaVA's ``preprocess`` masks its targets
    (Liu et al. 2023, §5; ``llava/train/train.py``), so the loss trains only the replies
    and when to stop. Each piece is tokenized on its own without special tokens, so the
    ids are the concatenation of the pieces' ids. ``max_length`` truncates on the right.
    LLaVA's ``{"from": "human" | "gpt", "value"}`` turns are accepted too. A conversation
    without an assistant turn has nothing to learn and is a :class:`BadSample`.

    With an ``image`` in the record it is transformed by ``image_transform`` (default:
    RGB tensor); a batch must then hold an image in every sample.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_transform: ImageTransform | None = None,
        max_length: int | None = None,
        role_template: str = "{role}: ",
        assistant_role: str = "assistant",
        add_bos: bool = True,
        conversation_key: str = "conversation",
    ):
        self.tokenizer = tokenizer
        self.image_transform = image_transform or to_rgb_tensor()
        self.max_length = max_length
        self.role_template = role_template
        self.assistant_role = assistant_role
        self.add_bos = add_bos
        self.conversation_key = conversation_key

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {
            "image": stacked(),
            "input_ids": padded(self.pad_token_id),
            "labels": padded(IGNORE_INDEX),
            "attention_mask": padded(0),
            "skipped": COUNT,
        }

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        turns = [self._turn(t) for t in record.get(self.conversation_key) or []]
        if not any(role == self.assistant_role for role, _ in turns):
            where = str(record.get("source", "record"))
            raise BadSample(where, f"conversation has no {self.assistant_role!r} turn")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        ids: list[int] = [bos] if self.add_bos and bos is not None else []
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        for role, content in turns:
            header = self._ids(self.role_template.format(role=role))
            body = self._ids(content)
            trained = role == self.assistant_role
            if trained and eos is not None:
                body.append(eos)
            ids += header + body
            labels += [IGNORE_INDEX] * len(header) + (
                body if trained else [IGNORE_INDEX] * len(body)
            )
        if self.max_length is not None:
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        sample: dict[str, Any] = {}
        if record.get("image") is not None:
            sample["image"] = self.image_transform(record["image"])
        sample |= {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "skipped": int(skipped),
        }
        return sample

    @staticmethod
    def _turn(turn: Mapping[str, Any]) -> tuple[str, str]:
        if "role" in turn:
            return str(turn["role"]), str(turn.get("content", ""))
        role = str(turn.get("from", ""))
        return _LLAVA_ROLES.get(role, role), str(turn.get("value", ""))
