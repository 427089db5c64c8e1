"""Class-labelled image readers: an ImageFolder tree, an ``image,label`` table, a Hugging
Face ``imagefolder``.

Each is a :class:`~zoo.data.samples.SkipReplaceDataset` (bad images skipped and counted,
per-sample seeding, exact resume) whose ``read`` returns ``{"image", "label", "source"}``
and whose builder (default :class:`~zoo.data.builders.LabelledImageBuilder`) yields
``{"image", "label", "skipped"}`` (+ ``"views"``). All expose ``labels`` (LongTensor, -1
unknown) and ``classnames`` (list of str, or None when the labels are bare integers).
Class names are sorted and indexed in that order, as torchvision's ``ImageFolder`` and
``datasets``' ``imagefolder`` do, so the three readers agree on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data.builders import Builder, LabelledImageBuilder
from zoo.data.columns import BadRows, PackedStrings, read_table_columns
from zoo.data.formats import decode_hf_image
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    SkipCounter,
    SkipReplaceDataset,
    check_max_pixels,
    decode_image,
    parse_label,
)
from zoo.data.transforms import ImageTransform

__all__ = ["HFImageFolder", "ImageFolderDataset", "ImageLabelTable", "labels_from_strings"]


def labels_from_strings(values: Sequence[str]) -> tuple[torch.Tensor, list[str] | None]:
    """Label cells → ``(labels, classnames)``. Integers (or empty, -1) are taken as they
    are, with no class names; otherwise every non-empty cell is a class name, indexed in
    sorted order (ImageFolder's rule) and empty cells are -1."""
    try:
        return torch.tensor([parse_label(v) for v in values], dtype=torch.long), None
    except ValueError:
        pass
    names = sorted({v.strip() for v in values if v.strip()})
    index = {name: i for i, name in enumerate(names)}
    labels = [index[v.strip()] if v.strip() else -1 for v in values]
    return torch.tensor(labels, dtype=torch.long), names


class _LabelledImages(SkipReplaceDataset):
    """Shared constructor of the readers: builder, pixel budget, labels, class names."""

    labels: torch.Tensor
    classnames: list[str] | None

    def __init__(
        self,
        name: str,
        image_transform: ImageTransform | None,
        view_transforms: Sequence[ImageTransform],
        max_pixels: int | None,
        builder: Builder | None,
    ):
        self.max_pixels = check_max_pixels(max_pixels)
        super().__init__(name, builder or LabelledImageBuilder(image_transform, view_transforms))

    def __len__(self) -> int:
        return len(self.labels)


class ImageFolderDataset(_LabelledImages):
    """torchvision's ImageFolder layout: ``root/<class>/<image>``, one subfolder per class
    (sorted names → indices 0..C-1), files with torchvision's image extensions
    (``IMG_EXTENSIONS``, any case), found with torchvision's own ``find_classes`` /
    ``make_dataset``. Files are decoded with :func:`~zoo.data.samples.decode_image`, so a
    bad file is skipped and counted instead of stopping training."""

    def __init__(
        self,
        root: str | Path,
        image_transform: ImageTransform | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        builder: Builder | None = None,
    ):
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        super().__init__(str(self.root), image_transform, view_transforms, max_pixels, builder)
        classes, class_to_idx = find_classes(str(self.root))
        found = make_dataset(str(self.root), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        if not found:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {self.root}/<class>/")
        # Packed relative paths: workers share them without copy-on-access (zoo.data.columns).
        self.paths = PackedStrings.from_values(
            str(Path(path).relative_to(self.root)) for path, _ in found
        )
        self.labels = torch.tensor([label for _, label in found], dtype=torch.long)
        self.classnames = list(classes)

    def read(self, index: int) -> dict[str, Any]:
        path = self.root / self.paths[index]
        image = decode_image(path, max_pixels=self.max_pixels)
        return {"image": image, "label": int(self.labels[index]), "source": str(path)}


class ImageLabelTable(_LabelledImages):
    """A CSV / TSV / JSONL table of image paths (relative to ``image_root``, default the
    table's folder, or absolute) and labels: integers, or class names (sorted → indices,
    listed in ``classnames``). Read like :class:`~zoo.data.formats.ImageTextTable`
    (packed columns; ``bad_rows`` for cells that are not UTF-8)."""

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path | None = None,
        image_key: str = "image",
        label_key: str = "label",
        image_transform: ImageTransform | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        bad_rows: BadRows = "error",
        builder: Builder | None = None,
    ):
        self.table = Path(path)
        if not self.table.is_file():
            raise FileNotFoundError(f"image-label table not found: {self.table}")
        super().__init__(str(self.table), image_transform, view_transforms, max_pixels, builder)
        self.image_root = Path(image_root) if image_root is not None else self.table.parent

        def check(columns: list[str]) -> None:
            for col in (image_key, label_key):
                if col not in columns:
                    raise ValueError(
                        f"column {col!r} not found in {self.table}; columns: {columns}"
                    )

        self.row_skips = SkipCounter(f"{self.table} (rows)")
        packed, _ = read_table_columns(
            self.table, [image_key, label_key], None, check, bad_rows, self.row_skips
        )
        self.images = packed[image_key]
        try:
            self.labels, self.classnames = labels_from_strings(packed[label_key])
        except ValueError as exn:
            raise ValueError(f"{self.table}: {exn}") from None

    @property
    def skipped_rows(self) -> int:
        """Table rows left out at load time (``bad_rows="skip"``)."""
        return self.row_skips.total

    def read(self, index: int) -> dict[str, Any]:
        path = self.image_root / self.images[index]  # an absolute path stays absolute
        image = decode_image(path, max_pixels=self.max_pixels)
        return {"image": image, "label": int(self.labels[index]), "source": str(path)}


class HFImageFolder(_LabelledImages):
    """A Hugging Face ``datasets`` ``imagefolder`` directory read offline: class
    subfolders (labels inferred by ``datasets``, a ``ClassLabel`` with sorted names) or a
    ``metadata.csv`` / ``metadata.jsonl`` with an integer ``label``; split subfolders
    (``train/``, ``test/``) or a folder holding one split. Images are decoded here (the
    column is cast to ``Image(decode=False)``), so bad ones are skipped and counted."""

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        image_transform: ImageTransform | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        cache_dir: str | Path | None = None,
        builder: Builder | None = None,
    ):
        import datasets

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"Hugging Face imagefolder not found: {self.path}")
        name = f"{self.path}[{split}]"
        super().__init__(name, image_transform, view_transforms, max_pixels, builder)
        root = self.path / split if (self.path / split).is_dir() else self.path
        splits = datasets.load_dataset(
            "imagefolder",
            data_dir=str(root),
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        if split in splits:
            ds = splits[split]
        elif len(splits) == 1:  # a folder holding one split: datasets names it "train"
            ds = next(iter(splits.values()))
        else:
            raise ValueError(f"split {split!r} not in {self.path}; splits: {list(splits)}")
        self.dataset = ds.cast_column("image", datasets.Image(decode=False))
        self.base_dir = root
        feature = ds.features.get("label")
        if feature is None:
            self.labels = torch.full((len(ds),), -1, dtype=torch.long)
        else:
            column = np.asarray(ds.with_format("numpy")["label"], dtype=np.int64)
            self.labels = torch.from_numpy(column.copy())
        self.classnames = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def read(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        source = f"{self.name} row {index}"
        image = decode_hf_image(row["image"], source, self.base_dir, self.max_pixels)
        return {"image": image, "label": int(self.labels[index]), "source": source}
