"""COCO readers (instances and captions JSON, through pycocotools) and the detection builder.

Readers (:class:`~zoo.data.samples.SkipReplaceDataset` subclasses: bad images skipped and
counted, per-sample seeding, exact resume):

- :class:`CocoInstances` over ``instances_*.json``: ``{"image": PIL, "boxes": (N, 4)
  float32 x1 y1 x2 y2 pixels, "labels": (N,) int64, "masks": (N, H, W) uint8, "image_id",
  "source"}``. Labels are contiguous: the category ids sorted ascending map to 0..C-1
  (:attr:`CocoInstances.category_ids` maps back, :attr:`CocoInstances.classnames` names
  them), the convention of detectron2 / Mask2Former; DETR's own code keeps the raw ids
  (91 classes for COCO), recoverable through ``category_ids``. As DETR's
  ``ConvertCocoPolysToMask`` (``datasets/coco.py``) does, crowd annotations are left out,
  ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]`` clamped to the image, and boxes of zero
  width or height are dropped with their masks. Masks are decoded from RLE (compressed or
  not) or polygons with pycocotools. Images without annotations are kept, with empty
  tensors, unless ``drop_empty``.
- :class:`CocoCaptions` over ``captions_*.json``: ``{"image", "captions": list[str],
  "caption", "image_id", "source"}``, where ``caption`` is one of the captions drawn at
  random (seeded per sample in training, as :func:`~zoo.data.samples.pick_caption`), so an
  :class:`~zoo.data.builders.ImageTextBuilder` reads it too.

Builders: :class:`DetectionBuilder` (DETR / Mask2Former targets: boxes as normalised
``cx, cy, w, h`` in [0, 1], labels, masks; flip / resize / random-resized crop with
torchvision ``transforms.v2``, moving ``tv_tensors.BoundingBoxes`` and ``tv_tensors.Mask``
with the pixels) and :class:`CaptionsBuilder` (image + every caption).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data.builders import Builder, _image_tensor, _image_tv
from zoo.data.collate import COUNT, LIST, FieldSpec, scalar, stacked
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    SkipReplaceDataset,
    check_max_pixels,
    decode_image,
    pick_caption,
)
from zoo.data.transforms import ImageTransform, to_rgb_tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CaptionsBuilder",
    "CocoCaptions",
    "CocoInstances",
    "DetectionBuilder",
    "load_coco",
]

#: The normalisation of DETR's ``make_coco_transforms`` (``datasets/coco.py``): ImageNet's.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_coco(annotation_file: str | Path, required: Sequence[str] = ("images",)) -> Any:
    """A ``pycocotools.coco.COCO`` index of ``annotation_file`` (its progress prints
    silenced); a missing file, invalid JSON or a missing top-level key is an error naming
    the file."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise ValueError(f"{path}: not a COCO annotation file ({exn})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO annotation file (top level is not an object)")
    for key in required:
        if key not in data:
            raise ValueError(f"{path}: COCO key {key!r} missing (keys: {sorted(data)})")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class _CocoReader(SkipReplaceDataset):
    """Shared part: the annotation index, the image folder, image ids, image decoding."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        builder: Builder,
        required: Sequence[str],
        max_pixels: int | None,
    ):
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.coco = load_coco(self.annotation_file, required)
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"COCO image folder not found: {self.image_root} (images of {self.annotation_file})"
            )
        self.max_pixels = check_max_pixels(max_pixels)
        super().__init__(str(self.annotation_file), builder)
        #: image ids in ascending order (torchvision's ``CocoDetection`` order)
        self.ids: list[int] = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.ids)

    def _image(self, image_id: int) -> tuple[Any, dict[str, Any], str]:
        info = self.coco.imgs[image_id]
        path = self.image_root / info["file_name"]
        image = decode_image(path, max_pixels=self.max_pixels)
        expected = (info.get("width"), info.get("height"))
        if None not in expected and image.size != expected:
            raise BadSample(
                str(path),
                f"image is {image.size[0]}x{image.size[1]}, annotations say "
                f"{expected[0]}x{expected[1]}",
            )
        return image, info, str(path)


class CocoInstances(_CocoReader):
    """COCO instances (``instances_<split>.json`` + its image folder) as detection /
    instance-segmentation records (see the module docstring).

    ``masks=False`` skips decoding the masks (detection only). ``drop_empty`` leaves out
    the images with no usable annotation (Mask2Former's training filter); by default they
    are kept with empty ``boxes`` (0, 4), ``labels`` (0,) and ``masks`` (0, H, W).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        builder: Builder | None = None,
        masks: bool = True,
        drop_empty: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(
            annotation_file,
            image_root,
            builder or DetectionBuilder(masks=masks),
            ("images", "annotations", "categories"),
            max_pixels,
        )
        self.masks = masks
        categories = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        #: COCO category id of each contiguous label 0..C-1
        self.category_ids: list[int] = [int(c["id"]) for c in categories]
        #: category name of each label
        self.classnames: list[str] = [str(c.get("name", c["id"])) for c in categories]
        #: COCO category id → contiguous label
        self.label_of: dict[int, int] = {cid: k for k, cid in enumerate(self.category_ids)}
        if drop_empty:
            self.ids = [i for i in self.ids if self._annotations(i)]

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The image's annotations that are not crowds (DETR drops ``iscrowd=1``)."""
        return [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]

    def read(self, index: int) -> dict[str, Any]:
        from torchvision.ops import box_convert

        image_id = self.ids[index]
        image, info, source = self._image(image_id)
        width, height = image.size
        anns = self._annotations(image_id)
        unknown = {a["category_id"] for a in anns} - self.label_of.keys()
        if unknown:
            raise BadSample(
                source,
                f"annotations use category ids {sorted(unknown)} that "
                f"{self.annotation_file} does not list",
            )
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = box_convert(xywh, "xywh", "xyxy")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.long)
        record: dict[str, Any] = {
            "image": image,
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": int(image_id),
            "source": source,
        }
        if self.masks:
            record["masks"] = self._decode_masks(anns, height, width, source)[keep]
        return record

    def _decode_masks(
        self, anns: list[dict[str, Any]], height: int, width: int, source: str
    ) -> torch.Tensor:
        from pycocotools import mask as mask_utils

        if not anns:
            return torch.zeros((0, height, width), dtype=torch.uint8)
        try:
            rles = [self.coco.annToRLE(a) for a in anns]  # polygons / RLE → compressed RLE
            decoded = mask_utils.decode(rles)  # (H, W, N) uint8
        except Exception as exn:  # pycocotools raises TypeError / KeyError / ValueError
            reason = f"cannot decode a segmentation: {type(exn).__name__}: {exn}"
            raise BadSample(source, reason) from None
        masks = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
        if tuple(masks.shape[1:]) != (height, width):
            raise BadSample(source, f"masks are {tuple(masks.shape[1:])}, image {(height, width)}")
        return masks


class CocoCaptions(_CocoReader):
    """COCO captions (``captions_<split>.json`` + its image folder): ``{"image",
    "captions", "caption", "image_id", "source"}``; ``drop_empty`` leaves out images with
    no caption (kept with ``[]`` by default)."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        builder: Builder | None = None,
        drop_empty: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(
            annotation_file,
            image_root,
            builder or CaptionsBuilder(),
            ("images", "annotations"),
            max_pixels,
        )
        if drop_empty:
            self.ids = [i for i in self.ids if self.captions(i)]

    def captions(self, image_id: int) -> list[str]:
        """The image's captions in annotation-id order."""
        anns = sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
        return [str(a["caption"]).strip() for a in anns if "caption" in a]

    def read(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image, _, source = self._image(image_id)
        captions = self.captions(image_id)
        return {
            "image": image,
            "captions": captions,
            "caption": pick_caption(captions),
            "image_id": int(image_id),
            "source": source,
        }


class CaptionsBuilder(Builder):
    """``{"image", "captions", "image_id"}`` → ``image`` (``image_transform``, default RGB
    tensor in [0, 1]), ``captions`` (list of str, a list field), ``image_id``, ``skipped``.
    Tokenising is the captioner's business (its own vocabulary)."""

    def __init__(self, image_transform: ImageTransform | None = None):
        self.image_transform = image_transform or to_rgb_tensor()

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"image": stacked(), "captions": LIST, "image_id": scalar(), "skipped": COUNT}

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        return {
            "image": self.image_transform(record["image"]),
            "captions": list(record.get("captions", [])),
            "image_id": int(record.get("image_id", -1)),
            "skipped": int(skipped),
        }


class DetectionBuilder(Builder):
    """A detection / instance-segmentation record → a DETR-style sample.

    In: ``{"image": PIL, "boxes": (N, 4) x1 y1 x2 y2 pixels, "labels": (N,), "masks": (N,
    H, W)?, "image_id"?}`` (what :class:`CocoInstances` reads). Out:

    - ``image``: float (3, H', W'), scaled to [0, 1] then normalised with ``mean`` / ``std``
      (default ImageNet's, as DETR; ``None`` leaves [0, 1]);
    - ``boxes``: (N', 4) float, ``cx, cy, w, h`` divided by the output width / height, the
      targets DETR's ``Normalize`` transform makes (``datasets/transforms.py``);
    - ``labels``: (N',) long; ``masks``: (N', H', W') uint8, moved and resized
      (nearest-neighbour) with the pixels; ``image_id``; ``orig_size``: (2,) long, the
      input's (H, W), to map predictions back for COCO evaluation; ``skipped``.

    The geometric transform is ``transform`` when given (a ``transforms.v2`` callable on
    ``{"image", "boxes", "masks", "labels"}`` with ``tv_tensors``), else, in this order: a
    horizontal flip with probability ``hflip`` (DETR trains with 0.5), a random-resized crop
    to ``size`` with area fraction in ``crop_scale`` followed by torchvision's
    ``SanitizeBoundingBoxes`` (dropping boxes under 1 px with their labels and masks), or
    a plain resize to ``size`` (an int is a square side). Random draws come from torch's
    RNG, which the reader seeds per sample.

    Objects vary in number per image, so ``boxes``, ``labels`` and ``masks`` are list fields
    (a batch holds a list of per-image tensors, DETR's list of targets). A record whose
    boxes, labels and masks disagree in number, or whose masks differ from the image in
    size, is a :class:`~zoo.data.samples.BadSample`.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        hflip: float = 0.0,
        crop_scale: tuple[float, float] | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        masks: bool = True,
        transform: Callable[..., Any] | None = None,
    ):
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"DetectionBuilder: hflip is a probability, got {hflip}")
        if crop_scale is not None and size is None:
            raise ValueError("DetectionBuilder: crop_scale needs an output size")
        if (mean is None) != (std is None):
            raise ValueError("DetectionBuilder: give both mean and std, or neither")
        self.size = (size, size) if isinstance(size, int) else size
        self.hflip = hflip
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.masks = masks
        self.transform = transform if transform is not None else self._default_transform()

    def _default_transform(self) -> Callable[..., Any] | None:
        from torchvision.transforms import v2

        steps: list[Any] = []
        if self.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(self.hflip))
        if self.crop_scale is not None:
            steps.append(v2.RandomResizedCrop(self.size, scale=self.crop_scale, antialias=True))
            steps.append(v2.SanitizeBoundingBoxes())
        elif self.size is not None:
            steps.append(v2.Resize(self.size, antialias=True))
        return v2.Compose(steps) if steps else None

    @property
    def fields(self) -> dict[str, FieldSpec]:
        fields = {
            "image": stacked(),
            "boxes": LIST,
            "labels": LIST,
            "image_id": scalar(),
            "orig_size": stacked(),
            "skipped": COUNT,
        }
        return fields | {"masks": LIST} if self.masks else fields

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.ops import box_convert
        from torchvision.transforms.v2 import functional as F

        where = str(record.get("source", "record"))
        image = _image_tv(record["image"])
        height, width = image.shape[-2:]
        boxes = torch.as_tensor(np.asarray(record.get("boxes", []), dtype=np.float32))
        boxes = boxes.reshape(-1, 4) if boxes.numel() == 0 else boxes
        labels = torch.as_tensor(np.asarray(record.get("labels", []), dtype=np.int64)).reshape(-1)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != len(labels):
            raise BadSample(where, f"{len(labels)} labels but boxes of shape {tuple(boxes.shape)}")
        data: dict[str, Any] = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
        }
        if self.masks:
            if "masks" not in record:
                raise BadSample(where, "the record has no masks (read with masks=True)")
            masks = torch.as_tensor(np.asarray(record["masks"], dtype=np.uint8))
            if masks.numel() == 0:
                masks = masks.reshape(0, height, width)
            if masks.dim() != 3 or tuple(masks.shape) != (len(labels), height, width):
                raise BadSample(
                    where,
                    f"masks of shape {tuple(masks.shape)} for {len(labels)} objects in "
                    f"a {width}x{height} image",
                )
            data["masks"] = tv_tensors.Mask(masks)
        if self.transform is not None:
            data = self.transform(data)
        pixels = _image_tensor(data["image"])
        if self.mean is not None:
            pixels = F.normalize(pixels, list(self.mean), list(self.std))
        out_h, out_w = pixels.shape[-2:]
        xyxy = data["boxes"].as_subclass(torch.Tensor).float()
        scale = torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        sample: dict[str, Any] = {
            "image": pixels,
            "boxes": box_convert(xyxy, "xyxy", "cxcywh") / scale,
            "labels": data["labels"].as_subclass(torch.Tensor).long(),
        }
        if self.masks:
            sample["masks"] = data["masks"].as_subclass(torch.Tensor).to(torch.uint8)
        sample["image_id"] = int(record.get("image_id", -1))
        sample["orig_size"] = torch.tensor([height, width], dtype=torch.long)
        sample["skipped"] = int(skipped)
        return sample
