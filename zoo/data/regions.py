"""Region–phrase data: (image, phrase, box) records and the samples TiMix's PTA loss reads.

Readers (:class:`~zoo.data.samples.SkipReplaceDataset`: bad images skipped and counted,
per-sample seeding, exact resume), one record per region ``{"image": PIL, "phrase": str,
"box": (4,) float32 x1 y1 x2 y2 pixels, "image_id", "region_id", "source"}``:

- ``format="vg"``: Visual Genome ``region_descriptions.json``, a list of ``{"id": image id,
  "regions": [{"region_id", "image_id", "phrase", "x", "y", "width", "height"}]}``. Image
  files: ``<image_root>/<image_id>.jpg`` (Visual Genome's ``VG_100K`` naming), or through
  ``images``, a JSON file with the image list: COCO ``{"images": [{"id", "file_name"}]}`` or
  Visual Genome ``image_data.json`` (``[{"image_id", "url"}]``, the url's file name);
- ``format="coco"``: COCO ``instances_<split>.json``: every non-crowd annotation is a region
  whose phrase is its category name (TiMix's "COCO objects").

Boxes that stick out of the image are clipped to it (Visual Genome has some); a box with no
area left inside the image is a bad record (skipped and counted, the message names the file
and the region).

:class:`RegionPhraseBuilder` makes the sample: the image resized to a square of
``image_size`` pixels (bicubic, box scaled with it; a horizontal flip with probability
``hflip``, as the official region loader's), normalised, the phrase tokens, and the
(S·S,) patch labels of the box (:func:`zoo.heads.patch_predictor.box_patch_labels`,
``rule="overlap"`` = the official ``get_image_attns``). Fields ``region_image``,
``region_text``, ``region_labels`` (prefixed, so the sample can ride along an image–text
sample in one batch: :class:`datamodules.timix.TiMixDataModule`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch

from zoo.data.builders import Builder
from zoo.data.collate import COUNT, FieldSpec, stacked
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    SkipReplaceDataset,
    check_max_pixels,
    decode_image,
)
from zoo.data.tokenizers import TextTokenizer
from zoo.heads.patch_predictor import LabelRule, box_patch_labels

RegionFormat = Literal["vg", "coco"]
REGION_FORMATS = ("vg", "coco")


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise ValueError(f"{path}: not a JSON {what} ({exn})") from None


def _file_names(path: Path) -> dict[int, str]:
    """image id → file name from a COCO file (``images``) or VG ``image_data.json``."""
    data = _load_json(path, "image list")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return {int(im["id"]): str(im["file_name"]) for im in data["images"]}
    if isinstance(data, list) and all(isinstance(x, dict) and "url" in x for x in data[:1]):
        return {int(im["image_id"]): PurePosixPath(str(im["url"])).name for im in data}
    raise ValueError(
        f"{path}: an image list is a COCO file with 'images' [{{id, file_name}}] or Visual "
        "Genome image_data.json [{image_id, url}]"
    )


def _vg_regions(path: Path) -> list[dict[str, Any]]:
    data = _load_json(path, "Visual Genome region descriptions")
    if not isinstance(data, list):
        raise ValueError(f"{path}: region descriptions are a list of {{id, regions}} objects")
    regions = []
    for entry in data:
        for region in entry.get("regions", []) if isinstance(entry, dict) else ():
            missing = [
                k
                for k in ("image_id", "phrase", "x", "y", "width", "height")
                if k not in region and not (k == "image_id" and "id" in entry)
            ]
            if missing:
                raise ValueError(
                    f"{path}: region {region.get('region_id', '?')} of image "
                    f"{entry.get('id', '?')} lacks {missing}"
                )
            x, y = float(region["x"]), float(region["y"])
            regions.append(
                {
                    "image_id": int(region.get("image_id", entry.get("id"))),
                    "region_id": int(region.get("region_id", len(regions))),
                    "phrase": str(region["phrase"]).strip(),
                    "box": (x, y, x + float(region["width"]), y + float(region["height"])),
                }
            )
    return regions


def _coco_regions(path: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    data = _load_json(path, "COCO instances file")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: COCO key {key!r} missing")
    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    regions = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in names:
            raise ValueError(f"{path}: annotation {ann.get('id')} has unknown category")
        x, y, w, h = (float(v) for v in ann["bbox"])
        regions.append(
            {
                "image_id": int(ann["image_id"]),
                "region_id": int(ann.get("id", len(regions))),
                "phrase": names[ann["category_id"]],
                "box": (x, y, x + w, y + h),
            }
        )
    files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
    return regions, files


class RegionPhrases(SkipReplaceDataset):
    """One record per region of a Visual Genome or COCO annotation file (module docstring)."""

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path,
        builder: Builder | None = None,
        format: RegionFormat = "vg",
        images: str | Path | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if format not in REGION_FORMATS:
            raise ValueError(f"region format must be one of {REGION_FORMATS}, got {format!r}")
        self.path, self.image_root = Path(path), Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"region image folder not found: {self.image_root}")
        if format == "coco":
            self.regions, files = _coco_regions(self.path)
        else:
            self.regions = _vg_regions(self.path)
            files = {}
        if images is not None:
            files = _file_names(Path(images))
        self.files = files
        if files:
            unknown = sorted({r["image_id"] for r in self.regions} - files.keys())
            if unknown:
                raise ValueError(
                    f"{self.path}: image ids {unknown[:5]} are not in the image list "
                    f"{images or self.path}"
                )
        self.max_pixels = check_max_pixels(max_pixels)
        super().__init__(str(self.path), builder or RegionPhraseBuilder())

    def __len__(self) -> int:
        return len(self.regions)

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.files.get(image_id, f"{image_id}.jpg")

    def read(self, index: int) -> dict[str, Any]:
        region = self.regions[index]
        path = self.image_path(region["image_id"])
        image = decode_image(path, max_pixels=self.max_pixels)
        width, height = image.size
        x1, y1, x2, y2 = region["box"]
        box = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise BadSample(
                str(path),
                f"region {region['region_id']} of {self.path} ({region['phrase']!r}, box "
                f"{list(region['box'])}) lies outside the {width}x{height} image",
            )
        return {
            "image": image,
            "phrase": region["phrase"],
            "box": torch.tensor(box, dtype=torch.float32),
            "image_id": region["image_id"],
            "region_id": region["region_id"],
            "source": str(path),
        }


class RegionPhraseBuilder(Builder):
    """``{"image", "phrase", "box"}`` → ``region_image`` (3, s, s), ``region_text`` (L,),
    ``region_labels`` (S·S,) long, ``skipped`` (see the module docstring)."""

    def __init__(
        self,
        tokenizer: TextTokenizer | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        hflip: float = 0.5,
        rule: LabelRule = "overlap",
    ):
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch {patch_size}")
        self.tokenizer = tokenizer or TextTokenizer()
        self.image_size, self.patch_size = int(image_size), int(patch_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip, self.rule = float(hflip), rule

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {
            "region_image": stacked(),
            "region_text": stacked(),
            "region_labels": stacked(),
            "skipped": COUNT,
        }

    def __call__(self, record: Mapping[str, Any], skipped: int = 0) -> dict[str, Any]:
        import random

        import numpy as np
        from PIL import Image

        image = record["image"].convert("RGB")
        width, height = image.size
        size = self.image_size
        scale = torch.tensor([size / width, size / height] * 2)
        box = record["box"].to(torch.float32) * scale
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        if self.hflip > 0 and random.random() < self.hflip:
            pixels = pixels.flip(-1)
            box = torch.stack([size - box[2], box[1], size - box[0], box[3]])
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        labels = box_patch_labels(box[None], size, self.patch_size, self.rule)[0]
        return {
            "region_image": (pixels - mean) / std,
            "region_text": self.tokenizer(record["phrase"]),
            "region_labels": labels,
            "skipped": int(skipped),
        }
