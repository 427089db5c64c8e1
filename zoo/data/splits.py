"""Per-split data configuration: each of ``train`` / ``val`` / ``test`` / ``probe_train`` can
name its own source, path, columns and transform.

A split is given either in the short form, a path (``test: imagenet/val.csv``), which takes
the datamodule-level ``source``, ``image_root``, ``caption_keys`` and ``label_key``, or in
the long form, a :class:`SplitSpec` mapping whose fields override those defaults for that
split only::

    data:
      init_args:
        source: wds                      # default for every split
        train: cc3m-train-{000000..000331}.tar
        test: {source: csv, path: imagenet/val.csv, image_key: filepath, label_key: label}

Columns left unset are resolved per split (:func:`resolve_split`): a caption column that
the datamodule names but an evaluation table lacks is dropped for that split (an ImageNet
``image,label`` table has no captions), and the label column is used when present
(``label`` in tables and Hugging Face datasets, ``cls`` in WebDataset shards). A column that
the split names itself must exist.

Class-labelled image data (:class:`zoo.data.labelled_datamodule.LabelledImageDataModule`)
uses the same two forms with :class:`LabelledSplitSpec` (no caption columns; its sources
include the torchvision ``imagefolder`` layout).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

Source = Literal["csv", "jsonl", "wds", "hf", "coco"]
LabelledSource = Literal["imagefolder", "csv", "jsonl", "hf"]
SPLITS = ("train", "val", "test", "probe_train")
T = TypeVar("T")


@dataclass
class SplitSpec:
    """One split's data. Unset fields (``None``) take the datamodule-level value.

    Attributes:
        path: table, shard pattern (``shards-{000..009}.tar``), imagefolder directory or
            parquet file, relative to ``data.root`` unless absolute.
        source: ``csv`` / ``jsonl`` / ``wds`` / ``hf`` / ``coco`` (a COCO captions file;
            its ``image_root`` is the image folder; no labels).
        image_root: folder that relative image paths of a table are resolved against
            (default: the table's folder).
        image_key: image column of a table or HF dataset (default ``image``; a CLIP-style
            ``filepath`` column works with ``image_key: filepath``). For WebDataset shards,
            the ``;``-separated image extensions (default ``jpg;jpeg;png;webp``).
        caption_keys: caption column(s); several means one is drawn per access (SLIP's
            YFCC15M title / description); ``[]`` means the split has no captions.
        label_key: integer label column; ``""`` means the split has no labels.
        transform: name of the image transform stack (:func:`zoo.data.build_transform`);
            default: the datamodule's train transform for ``train``, eval transform else.
    """

    path: str | None = None
    source: Source | None = None
    image_root: str | None = None
    image_key: str | None = None
    caption_keys: list[str] | str | None = None
    label_key: str | None = None
    transform: str | None = None


@dataclass
class LabelledSplitSpec:
    """One split of class-labelled images. Unset fields take the datamodule-level value.

    Attributes:
        path: ``imagefolder``: a folder with one sub-folder per class (torchvision layout);
            ``csv`` / ``jsonl``: an ``image,label`` table; ``hf``: a Hugging Face
            ``imagefolder`` directory. Relative to ``data.root`` unless absolute.
        source: ``imagefolder`` / ``csv`` / ``jsonl`` / ``hf``.
        image_root: folder that relative image paths of a table are resolved against.
        image_key / label_key: the table's image and integer label columns.
        transform: name of the image transform stack for this split.
    """

    path: str | None = None
    source: LabelledSource | None = None
    image_root: str | None = None
    image_key: str | None = None
    label_key: str | None = None
    transform: str | None = None


@dataclass(frozen=True)
class ResolvedSplit:
    """A split with every field decided (what the readers are built from)."""

    name: str
    path: str
    source: Source
    image_root: str | None
    image_key: str | None
    caption_keys: tuple[str, ...]
    label_key: str | None
    transform: str | None

    @property
    def where(self) -> str:
        return f"data.{self.name} ({self.path})"


def as_spec(value: Any, spec_type: type[T] = SplitSpec) -> T | None:  # type: ignore[assignment]
    """The long form (a ``spec_type`` dataclass, default :class:`SplitSpec`) of a split
    value given as a path string or a mapping."""
    if value is None or isinstance(value, spec_type):
        return value
    if isinstance(value, str):
        return spec_type(path=value)
    fields = spec_type.__dataclass_fields__  # type: ignore[attr-defined]
    if isinstance(value, dict):
        unknown = set(value) - set(fields)
        if unknown:
            raise ValueError(f"unknown split option(s) {sorted(unknown)}; known: {sorted(fields)}")
        return spec_type(**value)
    if hasattr(value, "__dict__"):  # a jsonargparse Namespace, or the other spec type
        return as_spec(dict(vars(value)), spec_type)
    raise TypeError(f"a split is a path or a mapping, got {type(value).__name__}")


def resolve_path(root: Path | None, path: str | None) -> str | None:
    """``path`` relative to the data root (absolute paths and remote URLs unchanged)."""
    if path is None:
        return None
    if "://" in path:  # remote URL (pipe:, s3:, https:) handled by the reader
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or root is None else root / p)


def check_exists(path: str, what: str) -> None:
    """Fail naming ``what`` unless every file of ``path`` (a brace pattern) exists; remote
    URLs are left to the reader."""
    if "://" in path or path.startswith("pipe:"):
        return
    from braceexpand import braceexpand

    for p in braceexpand(path):
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} not found: {p}")


def _as_keys(keys: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...] | None:
    if keys is None:
        return None
    return (keys,) if isinstance(keys, str) else tuple(keys)


def peek_columns(source: str, path: str) -> list[str] | None:
    """The column names of a local CSV / TSV / JSONL table (header / first record), or
    ``None`` when they cannot be known without reading the data (shards, HF datasets)."""
    p = Path(path)
    if source not in ("csv", "jsonl") or not p.is_file():
        return None
    if source == "jsonl":
        with p.open("rb") as f:
            for raw in f:
                if raw.strip():
                    try:
                        record = json.loads(raw)
                    except ValueError as err:
                        raise ValueError(f"{path}: first record is not JSON: {err}") from None
                    return list(record) if isinstance(record, dict) else []
        return []
    with p.open("r", encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline()
    if not first.strip():
        return []
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    return next(csv.reader([first], delimiter=delimiter))


def resolve_split(
    name: str,
    spec: SplitSpec,
    *,
    source: Source,
    image_root: str | None,
    caption_keys: list[str] | str | None,
    label_key: str | None,
    root: Path | None,
) -> ResolvedSplit:
    """Merge a split's own fields with the datamodule defaults and settle its columns.

    Explicit per-split columns are kept as given (the reader checks they exist). Inherited
    captions that a local table lacks are dropped for this split; an unset label column is
    used when the data has it.
    """
    if not spec.path:
        raise ValueError(f"data.{name}: no path given")
    split_source = spec.source or source
    path = resolve_path(root, spec.path)
    columns = peek_columns(split_source, path)

    own_captions = _as_keys(spec.caption_keys)
    if own_captions is not None:
        captions = own_captions
    else:
        inherited = _as_keys(caption_keys) or (("txt",) if split_source == "wds" else ("caption",))
        captions = inherited
        if columns is not None:
            captions = tuple(k for k in inherited if k in columns)

    label = spec.label_key if spec.label_key is not None else label_key
    if label is None:  # the format's convention, used when the data has it
        label = "cls" if split_source == "wds" else "label"
        if (columns is not None and label not in columns) or split_source == "coco":
            label = ""
    return ResolvedSplit(
        name=name,
        path=path,
        source=split_source,
        image_root=resolve_path(root, spec.image_root or image_root),
        image_key=spec.image_key,
        caption_keys=captions,
        label_key=label or None,
        transform=spec.transform,
    )
