"""Image–text datasets over real on-disk formats. Each ``read`` returns the record
``{"image": PIL, "caption": str, "label": int}`` and its builder (default
:class:`~zoo.data.builders.ImageTextBuilder`, or any ``builder=`` that consumes those
fields) makes the sample; all share the skip-and-count policy of :mod:`zoo.data.samples`:

- :class:`ImageTextTable`: a CSV / TSV / JSONL table of image paths and captions
  (CC3M / YFCC15M style);
- :class:`HFImageText`: Hugging Face ``datasets`` (``imagefolder`` with ``metadata.csv`` /
  ``metadata.jsonl``, or parquet with an ``Image`` column);
- :func:`image_text_webdataset`: WebDataset tar shards (in :mod:`zoo.data.shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zoo.data.builders import Builder, ImageTextBuilder
from zoo.data.columns import BadRows, describe_non_utf8, read_table_columns
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    SkipCounter,
    SkipReplaceDataset,
    check_max_pixels,
    decode_image,
    parse_label,
    pick_caption,
)
from zoo.data.shards import image_text_webdataset
from zoo.data.tokenizers import TextTokenizer

__all__ = ["HFImageText", "ImageTextTable", "decode_hf_image", "image_text_webdataset"]

ImageTransform = Callable[[Image.Image], torch.Tensor]


def _as_keys(keys: str | Sequence[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _check_columns(
    columns: Sequence[str], required: Sequence[str], where: str, hint: str = ""
) -> None:
    for col in required:
        if col not in columns:
            raise ValueError(f"column {col!r} not found in {where}; columns: {list(columns)}{hint}")


_LABEL_HINT = " (pass label_key=None for data without labels)"


class ImageTextTable(SkipReplaceDataset):
    """Rows of a CSV / TSV / JSONL table: an image path (relative to ``image_root``, default
    the table's folder, or absolute), one or more caption columns and an optional label.

    With several ``caption_keys`` each access picks one of the row's non-empty captions at
    random (SLIP's YFCC15M: title or description). ``image_key`` names the image column
    (e.g. ``filepath`` for CLIP-style tables), for CSV, TSV and JSONL alike.

    ``bad_rows``: a row whose image path or caption is not valid UTF-8 fails the load with
    the file, line, row and column (``"error"``), or is left out, logged and counted in
    ``skipped_rows`` (``"skip"``). ``max_pixels``: the decoding budget of
    :func:`~zoo.data.samples.decode_image` (None: none). ``builder``: the sample builder
    (default ``ImageTextBuilder(image_transform, tokenizer, view_transforms)``).
    """

    def __init__(
        self,
        table: str | Path,
        image_root: str | Path | None = None,
        image_transform: ImageTransform | None = None,
        tokenizer: TextTokenizer | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        image_key: str = "image",
        caption_keys: str | Sequence[str] = "caption",
        label_key: str | None = "label",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        bad_rows: BadRows = "error",
        builder: Builder | None = None,
    ):
        self.max_pixels = check_max_pixels(max_pixels)
        self.table = Path(table)
        if not self.table.is_file():
            raise FileNotFoundError(f"image-text table not found: {self.table}")
        super().__init__(
            str(self.table),
            builder or ImageTextBuilder(image_transform, tokenizer, view_transforms),
        )
        self.image_root = Path(image_root) if image_root is not None else self.table.parent
        self.caption_keys = _as_keys(caption_keys)

        def check(columns: list[str]) -> None:
            _check_columns(columns, [image_key, *self.caption_keys], str(self.table))
            if label_key is not None:
                _check_columns(columns, [label_key], str(self.table), _LABEL_HINT)

        # Packed columns, not lists of str: workers share them without copy-on-access.
        self.row_skips = SkipCounter(f"{self.table} (rows)")
        packed, self.labels = read_table_columns(
            self.table, [image_key, *self.caption_keys], label_key, check, bad_rows, self.row_skips
        )
        self.images = packed[image_key]
        self.captions = [packed[k] for k in self.caption_keys]

    @property
    def skipped_rows(self) -> int:
        """Table rows left out at load time (``bad_rows="skip"``)."""
        return self.row_skips.total

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> dict[str, Any]:
        if not self.images[index]:
            raise BadSample(f"{self.table} row {index}", "empty image path")
        path = self.image_root / self.images[index]  # an absolute path stays absolute
        captions = [column[index] for column in self.captions]
        image = decode_image(path, max_pixels=self.max_pixels)
        caption, label = pick_caption(captions), int(self.labels[index])
        return {"image": image, "caption": caption, "label": label, "source": str(path)}


def _infer_builder(source: Path | list[Path]) -> str:
    if isinstance(source, list) or source.suffix == ".parquet":
        return "parquet"
    if source.is_dir() and any(source.glob("*.parquet")) and not any(source.glob("metadata.*")):
        return "parquet"
    return "imagefolder"


def _raise_if_not_utf8(exn: BaseException, src: Path | list[Path]) -> None:
    """``datasets`` reports a metadata file that is not UTF-8 as a bare UnicodeDecodeError
    (CSV) or a DatasetGenerationError caused by one (JSONL), naming no file: name it."""
    chain, cause = [], exn
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any(isinstance(e, UnicodeDecodeError) for e in chain):
        return
    folders = [p for p in (src if isinstance(src, list) else [src]) if p.is_dir()]
    files = sorted(
        p for f in folders for m in ("metadata.csv", "metadata.jsonl") for p in f.rglob(m)
    )
    where = "; ".join(describe_non_utf8(f) for f in files) or ", ".join(map(str, folders or [src]))
    raise ValueError(
        f"Hugging Face dataset {src}: metadata is not valid UTF-8 ({where}); re-encode it as "
        "UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or read it as a table (source: csv / jsonl), "
        "where bad_rows: skip skips and counts such rows"
    ) from exn


def decode_hf_image(
    cell: dict[str, Any] | None,
    source: str,
    base_dir: Path | None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode one cell of a ``datasets.Image(decode=False)`` column (``{"bytes", "path"}``)
    with :func:`~zoo.data.samples.decode_image`; a relative path that does not exist is
    looked up under ``base_dir``. Any failure is a :class:`BadSample` naming ``source``."""
    cell = cell or {}
    path = cell.get("path")
    source += f" ({path})" if path else ""
    if cell.get("bytes") is not None:
        return decode_image(cell["bytes"], source, max_pixels)
    if path:
        p = Path(path)
        if not p.is_absolute() and base_dir is not None and not p.exists():
            p = base_dir / p
        return decode_image(p, source, max_pixels)
    raise BadSample(source, "no image bytes or path")


class HFImageText(SkipReplaceDataset):
    """A Hugging Face ``datasets`` source read offline: an ``imagefolder`` folder (images +
    ``metadata.csv`` / ``metadata.jsonl`` with ``file_name``, caption and label columns; split
    sub-folders ``train/``, ``test/`` or a folder holding one split) or local parquet file(s)
    with an ``Image`` column (``{"bytes", "path"}``).

    The image column is cast to ``Image(decode=False)`` so images are decoded here (within
    ``max_pixels``, see :func:`~zoo.data.samples.decode_image`) and bad ones skipped and
    counted like :class:`ImageTextTable`'s. ``builder``: the sample builder (default
    ``ImageTextBuilder(image_transform, tokenizer, view_transforms)``); a string there is
    the Hugging Face builder name of old, now ``hf_builder`` (``"imagefolder"`` /
    ``"parquet"``, inferred when None).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        split: str = "train",
        image_transform: ImageTransform | None = None,
        tokenizer: TextTokenizer | None = None,
        view_transforms: Sequence[ImageTransform] = (),
        image_key: str = "image",
        caption_keys: str | Sequence[str] = "caption",
        label_key: str | None = "label",
        builder: Builder | str | None = None,
        cache_dir: str | Path | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        hf_builder: str | None = None,
    ):
        import datasets

        if isinstance(builder, str):  # before sample builders, builder= named the HF builder
            hf_builder, builder = builder, None
        self.max_pixels = check_max_pixels(max_pixels)
        src: Path | list[Path] = (
            Path(source) if isinstance(source, str | Path) else [Path(s) for s in source]
        )
        for path in src if isinstance(src, list) else [src]:
            if not path.exists():
                raise FileNotFoundError(f"Hugging Face dataset source not found: {path}")
        name = f"{source}[{split}]"
        super().__init__(
            name, builder or ImageTextBuilder(image_transform, tokenizer, view_transforms)
        )
        self.builder_name = hf_builder or _infer_builder(src)
        self.split = split
        try:
            ds = self._load(src, split, None if cache_dir is None else str(cache_dir))
        except Exception as exn:
            _raise_if_not_utf8(exn, src)
            raise
        self.caption_keys = _as_keys(caption_keys)
        _check_columns(ds.column_names, [image_key, *self.caption_keys], name)
        if label_key is not None:
            _check_columns(ds.column_names, [label_key], name, _LABEL_HINT)
        self.dataset = ds.cast_column(image_key, datasets.Image(decode=False))
        self.image_key, self.label_key = image_key, label_key
        self.base_dir = src if isinstance(src, Path) and src.is_dir() else None

    def _load(self, src: Path | list[Path], split: str, cache_dir: str | None) -> Any:
        import datasets

        if self.builder_name == "parquet":
            files = (
                src
                if isinstance(src, list)
                else sorted(src.glob("*.parquet"))
                if src.is_dir()
                else [src]
            )
            data_files = {split: [str(f) for f in files]}
            return datasets.load_dataset(
                "parquet", data_files=data_files, split=split, cache_dir=cache_dir
            )
        assert isinstance(src, Path)
        root = src / split if (src / split).is_dir() else src
        splits = datasets.load_dataset(self.builder_name, data_dir=str(root), cache_dir=cache_dir)
        if split in splits:
            return splits[split]
        if len(splits) == 1:  # a folder holding one split: HF names it "train"
            return next(iter(splits.values()))
        raise ValueError(f"split {split!r} not in {src}; splits: {list(splits)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        source = f"{self.name} row {index}"
        image = decode_hf_image(row[self.image_key], source, self.base_dir, self.max_pixels)
        caption = pick_caption([row.get(k) for k in self.caption_keys])
        label = parse_label(row.get(self.label_key)) if self.label_key else -1
        return {"image": image, "caption": caption, "label": label, "source": source}
