"""Tiny generated copies of a data layout, to smoke-test a recipe end to end before (or
without) the real data.

A paper-scale recipe declares the files it expects under ``data.root`` in its header::

    # Layout under data.root (...):
    #   cc3m-train-{000000..000331}.tar: webdataset jpg,txt
    #   imagenet/val.csv: csv image,label

one entry per line, ``<path>: <format> <columns>``, with format ``csv``, ``jsonl``,
``webdataset`` (columns are the members of each sample) or ``imagefolder`` (a Hugging Face
``imagefolder`` directory with ``metadata.csv``). In a table the first column holds image
paths (relative to the table's folder); ``label`` / ``cls`` hold integer class indices; every
other column is caption text. :func:`write_recipe_layout` parses that header and writes a
tiny copy (generated JPEGs); the test suite then fits the recipe on it with its own
evaluation callbacks, so a recipe whose config does not read the layout it declares fails.

:func:`write_layout` writes the layout a datamodule's ``init_args`` would read instead (a
fixture for tests of the data code).
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.data.splits import SPLITS, as_spec

FORMATS = ("csv", "jsonl", "webdataset", "imagefolder")
LABEL_COLUMNS = ("label", "cls")
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
_HEADER = re.compile(r"^#\s*Layout under data\.root")
_ENTRY = re.compile(r"^#\s+(?P<path>\S+):\s+(?P<format>[a-z]+)\s+(?P<columns>[\w;,.-]+)\s*$")


@dataclass(frozen=True)
class LayoutEntry:
    """One declared file (or shard pattern / folder) under ``data.root``."""

    path: str
    format: str
    columns: tuple[str, ...]

    @property
    def image_column(self) -> str:
        if self.format == "webdataset":
            return next((c for c in self.columns if c in IMAGE_MEMBERS), self.columns[0])
        return "file_name" if self.format == "imagefolder" else self.columns[0]

    @property
    def label_column(self) -> str | None:
        return next((c for c in self.columns if c in LABEL_COLUMNS), None)

    @property
    def caption_columns(self) -> list[str]:
        skip = {self.image_column, self.label_column}
        return [c for c in self.columns if c not in skip]


def parse_layout(header: str) -> list[LayoutEntry]:
    """The entries of a recipe's ``# Layout under data.root`` comment block."""
    entries: list[LayoutEntry] = []
    inside = False
    for line in header.splitlines():
        if _HEADER.match(line):
            inside = True
            continue
        if not inside:
            continue
        match = _ENTRY.match(line)
        if match is None:
            if entries:  # the block ends at the first line after its entries
                break
            continue  # the block's own explanatory lines
        fmt = match["format"]
        if fmt not in FORMATS:
            raise ValueError(f"layout entry {line.strip()!r}: format must be one of {FORMATS}")
        columns = tuple(c for c in re.split(r"[,;]", match["columns"]) if c)
        entries.append(LayoutEntry(match["path"], fmt, columns))
    return entries


def write_recipe_layout(
    recipe: str | Path, root: str | Path, samples: int = 4, num_classes: int = 10, seed: int = 0
) -> dict[str, list[Path]]:
    """Write a tiny copy of the layout ``recipe`` declares in its header under ``root``;
    returns the files written per declared path."""
    text = Path(recipe).read_text()
    entries = parse_layout(text)
    if not entries:
        raise ValueError(
            f"{recipe} declares no data layout: add a '# Layout under data.root' header block "
            "with one '#   <path>: <format> <columns>' line per file"
        )
    return write_entries(entries, root, samples, num_classes, seed)


def write_entries(
    entries: list[LayoutEntry], root: str | Path, samples: int, num_classes: int, seed: int = 0
) -> dict[str, list[Path]]:
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = {}
    for entry in entries:
        path = Path(entry.path)
        path = path if path.is_absolute() else root / path
        labels = [i % num_classes for i in range(samples)]
        rows = [
            {
                "image": _image_bytes(rng, label),
                "label": label,
                "captions": {c: f"a photo of item {i} ({c})" for c in entry.caption_columns},
            }
            for i, label in enumerate(labels)
        ]
        writer = {
            "csv": _write_table,
            "jsonl": _write_table,
            "webdataset": _write_shards,
            "imagefolder": _write_imagefolder,
        }[entry.format]
        written[entry.path] = writer(path, rows, entry)
    return written


def write_layout(
    data_args: dict[str, Any], root: str | Path, samples: int = 4, num_classes: int = 10
) -> dict[str, list[Path]]:
    """Write every split that datamodule ``init_args`` configure, in the format and columns
    they would read (training tables without labels, evaluation tables with them)."""
    source = data_args.get("source", "csv")
    if source == "digits":
        raise ValueError("the embedded digits need no layout: prepare_data writes them")
    entries = []
    for split in SPLITS:
        spec = as_spec(data_args.get(split))
        if spec is None:
            continue
        fmt = spec.source or source
        captions = spec.caption_keys
        if captions is None:
            captions = data_args.get("caption_keys") or ("txt" if fmt == "wds" else "caption")
        captions = [captions] if isinstance(captions, str) else list(captions)
        label = spec.label_key if spec.label_key is not None else data_args.get("label_key")
        if label is None:
            label = "" if split == "train" else ("cls" if fmt == "wds" else "label")
        image = spec.image_key or data_args.get("image_key")
        image = (image or "jpg").split(";")[0] if fmt == "wds" else (image or "image")
        columns = [image, *captions, *([label] if label else [])]
        fmt = {"wds": "webdataset", "hf": "imagefolder"}.get(fmt, fmt)
        entries.append(LayoutEntry(spec.path, fmt, tuple(columns)))
    return write_entries(entries, root, samples, num_classes)


def _image_bytes(rng: np.random.Generator, label: int, size: int = 24) -> bytes:
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _record(row: dict, entry: LayoutEntry, image_value: str) -> dict[str, Any]:
    record: dict[str, Any] = {entry.image_column: image_value, **row["captions"]}
    if entry.label_column:
        record[entry.label_column] = row["label"]
    return record


def _write_csv(path: Path, records: list[dict]) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(records[0]))
        out.writeheader()
        out.writerows(records)


def _write_table(path: Path, rows: list[dict], entry: LayoutEntry) -> list[Path]:
    folder = path.parent / f"{path.stem}-images"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(rows):
        image = folder / f"{i:06d}.jpg"
        image.write_bytes(row["image"])
        records.append(_record(row, entry, str(image.relative_to(path.parent))))
    if entry.format == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        _write_csv(path, records)
    return [path, folder]


def _write_shards(path: Path, rows: list[dict], entry: LayoutEntry) -> list[Path]:
    """Every shard of a brace pattern; the samples go into the first one or two."""
    from braceexpand import braceexpand

    shards = [Path(p) for p in braceexpand(str(path))]
    per_shard = -(-len(rows) // min(len(shards), 2))
    for n, shard in enumerate(shards):
        shard.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shard, "w") as tar:
            for i, row in enumerate(rows[n * per_shard : (n + 1) * per_shard]):
                members = {entry.image_column: row["image"]}
                members.update({k: v.encode() for k, v in row["captions"].items()})
                if entry.label_column:
                    members[entry.label_column] = str(row["label"]).encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{n:06d}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return shards


def _write_imagefolder(path: Path, rows: list[dict], entry: LayoutEntry) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(rows):
        (path / f"{i:06d}.jpg").write_bytes(row["image"])
        records.append(_record(row, entry, f"{i:06d}.jpg"))
    _write_csv(path / "metadata.csv", records)
    return [path]
