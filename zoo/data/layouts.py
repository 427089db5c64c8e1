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

Two more kinds of entry serve the few-shot recipes (a CoOp dataset folder and a frozen CLIP
from a weights file)::

    # Layout under data.root (...):
    #   imagenet/: coop imagenet
    #   RN50.pt: clip-weights openai rn50

- ``<folder>/: coop <dataset>``: the folder of a registered few-shot dataset
  (:data:`zoo.fewshot.datasets.DATASETS`; ``<folder>`` must be the registry's, e.g.
  ``caltech-101/`` for ``caltech101``) in the layout
  :class:`~zoo.data.fewshot_datamodule.FewShotDataModule` reads: images under the entry's
  image folder plus its CoOp split file (``split_zhou_<Dataset>.json``: train / val / test
  lists of ``[relpath, label, classname]``), or the raw layout for the datasets read without
  one: ImageNet (``classnames.txt`` with 1000 ``<wnid> <name>`` lines, images in
  ``images/{train,val}/<wnid>/`` for the first ``classes`` of them; the class count is the
  number of folders, so the recipe's head follows the generated data) and FGVCAircraft
  (``variants.txt``, ``images_variant_{train,val,test}.txt``, ``images/``). Sizes come from
  :class:`FewShotSizes`: each of ``classes`` classes gets ``shots`` training images (the
  recipe's ``data.shots``), ``min(shots, 4)`` validation images (ImageNet: both in
  ``images/train``) and ``test_images`` test images;
- ``<file>: clip-weights <format> <arch>``: the frozen CLIP's weights file, the one
  ``model.init_args.clip.path`` names (the entry gives its file name; the copy is written
  under the root and the test points ``clip.path`` at it), as a *tiny* CLIP of the same
  family (:func:`zoo.backbones.convert.tiny_openai_state_dict`: ``arch`` one of
  :data:`~zoo.backbones.convert.TINY_CLIP_ARCHS`, ``rn50``, ``vit-b16`` …) in that format
  (``openai``: OpenAI's state-dict layout; ``.safetensors`` by suffix, else a tensor-only
  torch file), at input size ``FewShotSizes.image_size`` (default: the arch's tiny size;
  the data must then be given that size), so the recipe's own loader path runs on it.

A COCO 2017 folder (ViSFT's detection, segmentation and caption data) is one entry::

    # Layout under data.root (...):
    #   ./: coco train2017,val2017

- ``<folder>/: coco [<split folders>]``: ``<folder>`` (``./``: ``data.root`` itself) in the
  COCO 2017 layout, for each split folder (default ``train2017,val2017``): its images in
  ``<folder>/<split>/`` and ``annotations/instances_<split>.json`` (boxes, RLE instance
  masks, categories) and ``annotations/captions_<split>.json`` (5 captions per image), the
  files :class:`~zoo.data.coco.CocoInstances` and :class:`~zoo.data.coco.CocoCaptions`
  read. The copy is written by the CLEVR-like scene generator
  (:class:`~zoo.data.clevr_scenes.ClevrScenes`: ``samples`` scenes of
  :data:`COCO_IMAGE_SIZE` px per split, 3 shape categories) and holds nothing real COCO
  lacks (no scene graphs, probe questions or manifest), so a recipe that reads more than
  COCO has fails on it.

Geo-tagged image features (CSP's layout, :mod:`zoo.data.geo`) are one entry per file::

    # Layout under data.root (...):
    #   train2018.json: geo annotations
    #   train2018_locations.json: geo locations
    #   features/inat2018_train_feats.npy: geo features 2048
    #   features/inat2018_val_preds_sparse.npz: geo predictions 8142
    #   categories2018.json: geo categories 8142

- ``<file>: geo <role> [<size>]``, role ``annotations`` (iNat JSON: ``images`` /
  ``annotations``), ``locations`` (a list of ``{id, lon, lat}``), ``features`` (``.npy``
  float32 ``(samples, size)``), ``predictions`` (class probabilities ``(samples, size)``,
  SciPy sparse when the name ends in ``.npz``) or ``categories`` (``size`` classes,
  ``[{id, name}]``). Every geo entry describes the same ``samples`` images, ids
  ``0 … samples−1`` with label ``i % num_classes`` and seeded random locations, so the
  files of one split agree with each other.

Region-phrase annotations (TiMix's PTA data, :mod:`zoo.data.regions`) are one entry per
annotation file::

    # Layout under data.root (...):
    #   vg/region_descriptions.json: regions vg vg/images
    #   coco/annotations/instances_train2014.json: regions coco coco/train2014

- ``<file>: regions <vg|coco> <image folder>``: ``samples`` generated 32-px JPEGs
  ``<image folder>/<id>.jpg`` (ids 1 …) with two boxed phrases each, as Visual Genome
  ``region_descriptions.json`` (``vg``) or a COCO instances file whose phrases are the
  category names (``coco``).

:func:`write_layout` writes the layout a datamodule's ``init_args`` would read instead (a
fixture for tests of the data code).
"""

from __future__ import annotations

import csv
import functools
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
#: A CoOp dataset folder (``<folder>/: coop <dataset>``).
COOP = "coop"
#: A frozen CLIP's weights file (``<file>: clip-weights <format> <arch>``).
CLIP_WEIGHTS = "clip-weights"
#: The weight formats a ``clip-weights`` entry can be written in.
WEIGHT_FORMATS = ("openai",)
#: A COCO 2017 folder (``<folder>/: coco [<split folders>]``).
COCO = "coco"
#: The split folders a ``coco`` entry writes unless it names its own.
COCO_SPLITS = ("train2017", "val2017")
#: The side of the images of a ``coco`` entry's copy.
COCO_IMAGE_SIZE = 32
#: Geo-tagged image features (``<file>: geo <role> [<size>]``, CSP's layout).
GEO = "geo"
GEO_ROLES = ("annotations", "locations", "features", "predictions", "categories")
#: A PASCAL VOC 2012 segmentation folder (CoCu's zero-shot segmentation):
#: ``<folder>/: voc [<splits>]`` → JPEGImages/, SegmentationClass/ (class-index PNGs, 0
#: background, 1-20 objects, 255 ignored), ImageSets/Segmentation/<split>.txt.
VOC = "voc"
#: Region-phrase annotations (TiMix's PTA data): ``<file>: regions <vg|coco> <image folder>``
#: → a Visual Genome ``region_descriptions.json`` (images ``<image folder>/<id>.jpg``) or a
#: COCO instances file (phrase = category name) over generated images.
REGIONS = "regions"
REGION_KINDS = ("vg", "coco")
KINDS = (*FORMATS, COOP, CLIP_WEIGHTS, COCO, GEO, VOC, REGIONS)
#: CoCu-curated WebDataset shards (``<shards>: curated jpg,txt``): a ``webdataset`` entry whose
#: caption member is the rewritten field ``caption \n json(scored concepts) \n json(k-means)``
#: that ``python -m zoo curate`` writes (:func:`zoo.cocu.curation.rewrite_caption`).
CURATED = "curated"
KINDS = (*KINDS, CURATED)
LABEL_COLUMNS = ("label", "cls")
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
_HEADER = re.compile(r"^#\s*Layout under data\.root")
_ENTRY = re.compile(r"^#\s+(?P<path>\S+):\s+(?P<format>[a-z]+)\s+(?P<columns>[\w;,.-]+)\s*$")
_WEIGHTS_ENTRY = re.compile(
    r"^#\s+(?P<path>\S+):\s+clip-weights\s+(?P<format>[a-z_]+)\s+(?P<arch>[a-z0-9-]+)\s*$"
)
_COCO_ENTRY = re.compile(r"^#\s+(?P<path>\S+):\s+coco(?:\s+(?P<splits>[\w,.-]+))?\s*$")
_GEO_ENTRY = re.compile(r"^#\s+(?P<path>\S+):\s+geo\s+(?P<role>[a-z]+)(?:\s+(?P<size>\d+))?\s*$")
_NEW_KIND = re.compile(r"^#\s+\S+:\s+(coop|clip-weights|coco|geo|voc|regions)(\s|$)")
_REGIONS_ENTRY = re.compile(
    r"^#\s+(?P<path>\S+):\s+regions\s+(?P<kind>[a-z]+)\s+(?P<images>\S+)\s*$"
)
_VOC_ENTRY = re.compile(r"^#\s+(?P<path>\S+/):\s+voc(?:\s+(?P<splits>[\w,-]+))?\s*$")
_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: CoOp's validation shots per class: ``min(K, 4)`` (zoo.fewshot.splits.VAL_SHOTS_MAX).
_VAL_SHOTS_MAX = 4
#: Images per class of a ``coop`` entry when the recipe takes every image (shots <= 0).
_ALL_SHOTS = 2


@dataclass(frozen=True)
class LayoutEntry:
    """One declared file (or shard pattern / folder) under ``data.root``. ``columns`` of a
    ``coop`` entry: ``(dataset,)``; of a ``clip-weights`` entry: ``(format, arch)``."""

    path: str
    format: str
    columns: tuple[str, ...]

    @property
    def dataset(self) -> str:
        """The registry name of a ``coop`` entry."""
        if self.format != COOP:
            raise ValueError(f"{self.path}: a {self.format} entry names no few-shot dataset")
        return self.columns[0]

    @property
    def coco_splits(self) -> tuple[str, ...]:
        """The split folders of a ``coco`` entry."""
        if self.format != COCO:
            raise ValueError(f"{self.path}: a {self.format} entry is not a COCO folder")
        return self.columns

    @property
    def weights(self) -> tuple[str, str]:
        """``(format, arch)`` of a ``clip-weights`` entry."""
        if self.format != CLIP_WEIGHTS:
            raise ValueError(f"{self.path}: a {self.format} entry names no CLIP weights")
        return self.columns[0], self.columns[1]

    @property
    def image_column(self) -> str:
        if self.format in ("webdataset", CURATED):
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
        weights = _WEIGHTS_ENTRY.match(line)
        match = _ENTRY.match(line)
        if weights is not None:
            entries.append(_weights_entry(line, weights))
            continue
        coco = _COCO_ENTRY.match(line)
        if coco is not None:
            entries.append(_coco_entry(line, coco))
            continue
        regions = _REGIONS_ENTRY.match(line)
        if regions is not None:
            if regions["kind"] not in REGION_KINDS:
                raise ValueError(
                    f"layout entry {line.strip()!r}: regions format must be one of {REGION_KINDS}"
                )
            entries.append(
                LayoutEntry(regions["path"], REGIONS, (regions["kind"], regions["images"]))
            )
            continue
        voc = _VOC_ENTRY.match(line)
        if voc is not None:
            splits = tuple(x for x in (voc["splits"] or "val").split(",") if x)
            entries.append(LayoutEntry(voc["path"], VOC, splits))
            continue
        geo = _GEO_ENTRY.match(line)
        if geo is not None:
            entries.append(_geo_entry(line, geo))
            continue
        if match is None and _NEW_KIND.match(line):
            raise ValueError(
                f"layout entry {line.strip()!r} is malformed: the syntax is "
                f"'#   <folder>/: {COOP} <dataset>', '#   <file>: {CLIP_WEIGHTS} <format> <arch>' "
                f"or '#   <folder>/: {COCO} [<split folders>]'"
            )
        if match is None:
            if entries:  # the block ends at the first line after its entries
                break
            continue  # the block's own explanatory lines
        fmt = match["format"]
        if fmt == COOP:
            entries.append(_coop_entry(line, match["path"], match["columns"]))
            continue
        if fmt not in (*FORMATS, CURATED):
            raise ValueError(
                f"layout entry {line.strip()!r}: format must be one of {KINDS} "
                f"('<folder>/: {COOP} <dataset>', '<file>: {CLIP_WEIGHTS} <format> <arch>')"
            )
        columns = tuple(c for c in re.split(r"[,;]", match["columns"]) if c)
        entries.append(LayoutEntry(match["path"], fmt, columns))
    return entries


def _coop_entry(line: str, path: str, dataset: str) -> LayoutEntry:
    """``<folder>/: coop <dataset>``, checked against the few-shot registry."""
    from zoo.fewshot.datasets import DATASETS

    syntax = f"'#   <folder>/: {COOP} <dataset>', e.g. '#   caltech-101/: {COOP} caltech101'"
    if not _DATASET_NAME.match(dataset) or dataset not in DATASETS:
        raise ValueError(
            f"layout entry {line.strip()!r}: {dataset!r} is not a registered few-shot dataset "
            f"(zoo.fewshot.datasets: {sorted(DATASETS)}); the syntax is {syntax}"
        )
    info = DATASETS[dataset]
    if info.generated:
        raise ValueError(
            f"layout entry {line.strip()!r}: {dataset} is generated by the datamodule "
            "itself; it needs no layout entry"
        )
    if not path.endswith("/") or path.rstrip("/") != info.folder:
        raise ValueError(
            f"layout entry {line.strip()!r}: {dataset} is read from data.root/{info.folder}/ "
            f"(its registry folder), so the entry is '#   {info.folder}/: {COOP} {dataset}'"
        )
    return LayoutEntry(path, COOP, (dataset,))


def _coco_entry(line: str, match: re.Match[str]) -> LayoutEntry:
    """``<folder>/: coco [<split folders>]``: a folder, split folder names without paths."""
    path = match["path"]
    syntax = f"'#   <folder>/: {COCO} [<split folders>]', e.g. '#   ./: {COCO} train2017,val2017'"
    if not (path.endswith("/") or path == "."):
        raise ValueError(
            f"layout entry {line.strip()!r}: a {COCO} entry names a folder (ending in '/'); "
            f"the syntax is {syntax}"
        )
    splits = tuple(s for s in (match["splits"] or "").split(",") if s) or COCO_SPLITS
    bad = [s for s in splits if s in (".", "..") or s.startswith(".")]
    if bad or len(set(splits)) != len(splits):
        raise ValueError(
            f"layout entry {line.strip()!r}: split folders must be distinct names, got "
            f"{list(splits)}; the syntax is {syntax}"
        )
    return LayoutEntry(path, COCO, splits)


def _geo_entry(line: str, match: re.Match[str]) -> LayoutEntry:
    """``<file>: geo <role> [<size>]``: a file of CSP's layout (:mod:`zoo.data.geo`)."""
    role, size = match["role"], match["size"]
    if role not in GEO_ROLES:
        raise ValueError(f"layout entry {line.strip()!r}: geo role must be one of {GEO_ROLES}")
    if (size is None) != (role in ("annotations", "locations")):
        raise ValueError(
            f"layout entry {line.strip()!r}: 'geo {role}' "
            + ("takes no size" if size is not None else "needs a size (dimension / classes)")
        )
    return LayoutEntry(match["path"], GEO, (role,) if size is None else (role, size))


def _weights_entry(line: str, match: re.Match[str]) -> LayoutEntry:
    """``<file>: clip-weights <format> <arch>``, checked against what can be generated."""
    from zoo.backbones.convert import TINY_CLIP_ARCHS

    fmt, arch = match["format"], match["arch"]
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(
            f"layout entry {line.strip()!r}: {CLIP_WEIGHTS} format must be one of {WEIGHT_FORMATS}"
        )
    if arch not in TINY_CLIP_ARCHS:
        raise ValueError(
            f"layout entry {line.strip()!r}: {CLIP_WEIGHTS} arch must be one of "
            f"{sorted(TINY_CLIP_ARCHS)}"
        )
    if match["path"].endswith("/"):
        raise ValueError(f"layout entry {line.strip()!r}: {CLIP_WEIGHTS} names a file")
    return LayoutEntry(match["path"], CLIP_WEIGHTS, (fmt, arch))


@dataclass(frozen=True)
class FewShotSizes:
    """How much a ``coop`` / ``clip-weights`` entry writes: ``classes`` classes with ``shots``
    training, ``min(shots, 4)`` validation and ``test_images`` test images each (``shots``
    <= 0, a recipe that takes every image: 2 training images); CLIP weights at input size
    ``image_size`` (``None``: the arch's tiny size)."""

    shots: int = 16
    classes: int = 4
    test_images: int = 2
    image_size: int | None = None

    @property
    def per_split(self) -> dict[str, int]:
        train = self.shots if self.shots > 0 else _ALL_SHOTS
        return {"train": train, "val": min(train, _VAL_SHOTS_MAX), "test": self.test_images}


def write_recipe_layout(
    recipe: str | Path,
    root: str | Path,
    samples: int = 4,
    num_classes: int = 10,
    seed: int = 0,
    fewshot: FewShotSizes | None = None,
) -> dict[str, list[Path]]:
    """Write a tiny copy of the layout ``recipe`` declares in its header under ``root``;
    returns the files written per declared path. ``fewshot`` sizes the ``coop`` and
    ``clip-weights`` entries (default :class:`FewShotSizes`)."""
    text = Path(recipe).read_text()
    entries = parse_layout(text)
    if not entries:
        raise ValueError(
            f"{recipe} declares no data layout: add a '# Layout under data.root' header block "
            "with one '#   <path>: <format> <columns>' line per file"
        )
    return write_entries(entries, root, samples, num_classes, seed, fewshot)


def write_entries(
    entries: list[LayoutEntry],
    root: str | Path,
    samples: int,
    num_classes: int,
    seed: int = 0,
    fewshot: FewShotSizes | None = None,
) -> dict[str, list[Path]]:
    root = Path(root)
    rng = np.random.default_rng(seed)
    fewshot = fewshot or FewShotSizes()
    written = {}
    for entry in entries:
        path = Path(entry.path)
        path = path if path.is_absolute() else root / path
        if entry.format == COOP:
            written[entry.path] = _write_coop(root, entry.dataset, fewshot, rng)
            continue
        if entry.format == COCO:
            written[entry.path] = _write_coco(path, entry.coco_splits, samples, seed)
            continue
        if entry.format == REGIONS:
            written[entry.path] = _write_regions(root, path, *entry.columns, samples, seed)
            continue
        if entry.format == VOC:
            written[entry.path] = _write_voc(path, entry.columns, samples, rng)
            continue
        if entry.format == GEO:
            written[entry.path] = _write_geo(path, entry.columns, samples, num_classes, seed)
            continue
        if entry.format == CLIP_WEIGHTS:
            # the weights live wherever clip.path says: the copy goes under the root
            target = root / path.name if path.is_absolute() else path
            written[entry.path] = _write_clip_weights(target, *entry.weights, fewshot, seed)
            continue
        if entry.format == CURATED:
            written[entry.path] = _write_curated_shards(path, entry, samples, rng)
            continue
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


# --- COCO entries -----------------------------------------------------------------------------
def _write_coco(folder: Path, splits: tuple[str, ...], samples: int, seed: int) -> list[Path]:
    """The COCO 2017 files of ``splits`` under ``folder`` (see the module docstring), from
    CLEVR-like scenes written to a temporary folder and moved into the COCO places."""
    import shutil
    import uuid

    from zoo.data.clevr_scenes import ClevrScenes

    annotations = folder / "annotations"
    targets = [folder / s for s in splits]
    targets += [
        annotations / f"{kind}_{s}.json" for s in splits for kind in ("instances", "captions")
    ]
    present = [str(p) for p in targets if p.exists()]
    if present:
        raise FileExistsError(f"the {COCO} layout would overwrite {present}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".coco-scenes-{uuid.uuid4().hex[:8]}"
    try:
        scenes = ClevrScenes(
            root=str(tmp),
            splits={s: max(int(samples), 1) for s in splits},
            seed=seed,
            image_size=COCO_IMAGE_SIZE,
            captions_per_image=5,  # COCO's
        ).write()
        annotations.mkdir(exist_ok=True)
        for split in splits:
            shutil.move(str(scenes.images(split)), str(folder / split))
            shutil.move(str(scenes.instances(split)), str(annotations / f"instances_{split}.json"))
            shutil.move(str(scenes.captions(split)), str(annotations / f"captions_{split}.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return targets


# --- geo entries ------------------------------------------------------------------------------
def _write_geo(
    path: Path, columns: tuple[str, ...], samples: int, num_classes: int, seed: int
) -> list[Path]:
    """One file of CSP's layout for ``samples`` images (ids 0 …, label ``i % num_classes``)."""
    role, size = columns[0], int(columns[1]) if len(columns) > 1 else 0
    rng = np.random.default_rng([seed, samples])  # the same images in every entry
    ids = list(range(samples))
    lon = rng.uniform(-180, 180, samples)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, samples)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if role == "annotations":
        data = {
            "images": [{"id": i} for i in ids],
            "annotations": [{"image_id": i, "category_id": i % num_classes} for i in ids],
        }
        path.write_text(json.dumps(data))
    elif role == "locations":
        rows = [{"id": i, "lon": float(lon[i]), "lat": float(lat[i])} for i in ids]
        path.write_text(json.dumps(rows))
    elif role == "categories":
        path.write_text(json.dumps([{"id": c, "name": f"class {c}"} for c in range(size)]))
    elif role == "features":
        np.save(path, rng.standard_normal((samples, size)).astype(np.float32))
    else:  # predictions: class probabilities
        probs = rng.dirichlet(np.ones(size), samples).astype(np.float32)
        if path.suffix == ".npz":
            from scipy import sparse

            sparse.save_npz(path, sparse.csr_matrix(probs))
        else:
            np.save(path, probs)
    return [path]


# --- few-shot entries -------------------------------------------------------------------------
def _write_coop(
    root: Path, dataset: str, sizes: FewShotSizes, rng: np.random.Generator
) -> list[Path]:
    """A tiny copy of a registered few-shot dataset's folder (see the module docstring)."""
    from zoo.fewshot.datasets import get_dataset

    info = get_dataset(dataset)
    folder = info.dataset_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    if info.name == "imagenet":
        return _write_imagenet(folder, sizes, rng)
    if info.name == "fgvc_aircraft":
        return _write_fgvc(folder, sizes, rng)
    if info.split_file is None:
        raise NotImplementedError(
            f"{dataset}: a dataset read from its raw layout (no split file) has no generator"
        )
    images = info.images(root)
    split: dict[str, list[list[Any]]] = {}
    for name, count in sizes.per_split.items():
        split[name] = []
        for label in range(sizes.classes):
            classname = f"class_{label}"
            for i in range(count):
                rel = f"{classname}/{name}_{i:04d}.jpg"
                _save(images / rel, _image_bytes(rng, label))
                split[name].append([rel, label, classname])
    split_file = folder / info.split_file
    split_file.write_text(json.dumps(split, indent=4))
    return [split_file, images]


def _write_imagenet(folder: Path, sizes: FewShotSizes, rng: np.random.Generator) -> list[Path]:
    """``classnames.txt`` (1000 ``<wnid> <name>`` lines) and ``images/{train,val}/<wnid>/``
    for the first ``sizes.classes`` wnids: train holds the training and validation shots
    (ImageNet has no validation list), val the test images."""
    wnids = [f"n{i:08d}" for i in range(1000)]
    names = folder / "classnames.txt"
    names.write_text("".join(f"{w} imagenet class {i}\n" for i, w in enumerate(wnids)))
    per = sizes.per_split
    counts = {"train": per["train"] + per["val"], "val": per["test"]}
    for split, count in counts.items():
        for label, wnid in enumerate(wnids[: sizes.classes]):
            for i in range(count):
                _save(
                    folder / "images" / split / wnid / f"{wnid}_{i}.JPEG", _image_bytes(rng, label)
                )
    return [names, folder / "images"]


def _write_fgvc(folder: Path, sizes: FewShotSizes, rng: np.random.Generator) -> list[Path]:
    """``variants.txt`` and ``images_variant_{train,val,test}.txt`` (``<image id> <variant>``
    lines) over ``images/<image id>.jpg``."""
    variants = [f"variant {label}" for label in range(sizes.classes)]
    (folder / "variants.txt").write_text("".join(v + "\n" for v in variants))
    written = [folder / "variants.txt", folder / "images"]
    n = 0
    for split, count in sizes.per_split.items():
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(count):
                image_id = f"{n:07d}"
                n += 1
                _save(folder / "images" / f"{image_id}.jpg", _image_bytes(rng, label))
                lines.append(f"{image_id} {variant}\n")
        listing = folder / f"images_variant_{split}.txt"
        listing.write_text("".join(lines))
        written.append(listing)
    return written


def _write_clip_weights(
    path: Path, fmt: str, arch: str, sizes: FewShotSizes, seed: int
) -> list[Path]:
    """A tiny ``arch`` CLIP in ``fmt`` at ``path`` (``.safetensors`` by suffix, else a
    tensor-only torch file, which loads without trusting pickles)."""
    import torch

    assert fmt in WEIGHT_FORMATS, fmt
    state = _tiny_state(arch, sizes.image_size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return [path]


@functools.lru_cache(maxsize=4)
def _tiny_state(arch: str, image_size: int | None, seed: int) -> dict[str, Any]:
    """:func:`~zoo.backbones.convert.tiny_openai_state_dict`, built once per process (a test
    session writes the same stand-in for many recipes; the tensors are only read)."""
    from zoo.backbones.convert import tiny_openai_state_dict

    return tiny_openai_state_dict(arch, image_size, seed)


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_voc(
    folder: Path, splits: tuple[str, ...], samples: int, rng: np.random.Generator
) -> list[Path]:
    """A tiny PASCAL VOC 2012 segmentation folder: ``samples`` 32-px JPEGs per split with
    class-index masks (a random object class on the left half, background on the right, a
    255 "ignore" border row)."""
    from PIL import Image

    written = []
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split in splits:
        ids = [f"{split}_{i:04d}" for i in range(samples)]
        for name in ids:
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "JPEGImages" / f"{name}.jpg")
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[:, :16] = int(rng.integers(1, 21))
            mask[0] = 255
            Image.fromarray(mask, mode="L").save(folder / "SegmentationClass" / f"{name}.png")
        ids_file = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        written.append(ids_file)
    return written


# --- region-phrase entries (TiMix) ------------------------------------------------------------
def _write_regions(
    root: Path, path: Path, kind: str, images: str, samples: int, seed: int
) -> list[Path]:
    """``samples`` 32-px JPEGs ``<images>/<id>.jpg`` (ids 1 …) with two boxed phrases each, as
    Visual Genome region descriptions (``vg``) or a COCO instances file (``coco``)."""
    rng = np.random.default_rng([seed, samples, 7])
    folder = Path(images) if Path(images).is_absolute() else root / images
    folder.mkdir(parents=True, exist_ok=True)
    size = COCO_IMAGE_SIZE
    records = []
    for image_id in range(1, max(int(samples), 1) + 1):
        (folder / f"{image_id}.jpg").write_bytes(_image_bytes(rng, image_id % 10, size))
        for k in range(2):
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(4, size // 2, 2))
            records.append((image_id, 2 * image_id + k, f"object {k}", [x, y, w, h]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "vg":
        by_image: dict[int, list[dict[str, Any]]] = {}
        for image_id, region_id, phrase, (x, y, w, h) in records:
            by_image.setdefault(image_id, []).append(
                {
                    "region_id": region_id,
                    "image_id": image_id,
                    "phrase": phrase,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                }
            )
        path.write_text(json.dumps([{"id": i, "regions": r} for i, r in by_image.items()]))
    else:
        data = {
            "images": [
                {"id": i, "file_name": f"{i}.jpg", "width": size, "height": size}
                for i in sorted({r[0] for r in records})
            ],
            "annotations": [
                {
                    "id": rid,
                    "image_id": i,
                    "category_id": 1 + rid % 2,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
                for i, rid, _, box in records
            ],
            "categories": [{"id": 1, "name": "object 0"}, {"id": 2, "name": "object 1"}],
        }
        path.write_text(json.dumps(data))
    return [path, folder]


# --- CoCu-curated shards ---------------------------------------------------------------------
#: Concept names of the curated copy (PASCAL VOC classes, which CoCu's recipes evaluate on).
_CURATED_CONCEPTS = ("person", "dog", "cat", "car", "bird", "boat", "chair", "horse")


def _write_curated_shards(
    path: Path, entry: LayoutEntry, samples: int, rng: np.random.Generator
) -> list[Path]:
    """WebDataset shards like a ``webdataset`` entry, the caption member holding what
    ``zoo curate`` writes: the caption, then 1-4 concepts with descending scores (global +
    local, in (0, 2]) as JSON, then an empty k-means archive (curation's default)."""
    from zoo.cocu.curation import rewrite_caption

    rows = []
    for i in range(samples):
        label = i % len(_CURATED_CONCEPTS)
        count = int(rng.integers(1, 5))
        picks = rng.choice(len(_CURATED_CONCEPTS), size=count, replace=False)
        scores = np.sort(rng.uniform(0.5, 2.0, size=count))[::-1]
        scored = {_CURATED_CONCEPTS[j]: round(float(v), 4) for j, v in zip(picks, scores)}
        caption = f"a photo of a {_CURATED_CONCEPTS[label]} ({i})"
        text = rewrite_caption(caption, scored, {})
        rows.append(
            {
                "image": _image_bytes(rng, label),
                "label": label,
                "captions": {c: text for c in entry.caption_columns},
            }
        )
    return _write_shards(path, rows, entry)
