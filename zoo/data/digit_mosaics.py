"""Digit mosaics: grids of scikit-learn digits with captions that name some of them.

A generated image–text set with dense labels, for methods that align caption words with
image regions (TiMix's patch / token mixing, CoCu's concept curation for open-vocabulary
segmentation) and need to be measured on what the captions leave out. No download: the
tiles are scikit-learn's ``load_digits`` (1,797 8×8 images, 16 grey levels), written once
in the COCO layout and read back by the real readers (:mod:`zoo.data.coco`). The page
``docs/data/digit_mosaics.md`` describes it in full.

**A mosaic.** ``grid × grid`` tiles of ``tile_size`` pixels (image side ``grid ·
tile_size``). Each tile is left blank (black, the background) with probability
``empty_prob``; when every tile came out blank, one drawn tile is filled, so an image always
holds a digit. A filled tile is a digit image drawn uniformly from the split's pool, scaled
from 0-16 to 0-255 (rounded), resized to ``tile_size`` with Pillow's bilinear filter and
repeated on the three channels (white strokes on black, RGB).

**Disjoint pools.** A seeded permutation of the 1,797 digit images puts the first 80 %
(``round(0.8 · 1797) = 1438``) in the ``train`` pool and the rest in the held-out pool, from
which every other split draws, so no evaluation mosaic reuses a training tile image.

**Captions.** Each of the ``captions_per_image`` captions names ``min(mentions, #digits)``
distinct filled tiles, drawn at random, in the drawn order, each with its position: for
``grid = 2`` "top left" / "top right" / "bottom left" / "bottom right", otherwise "row r
column c" (1-based). E.g. "a seven in the top left." or "a seven in the top left and an
eight in the bottom right."; three or more are listed "a …, a … and a …". ``mentions``
below the number of digits is the semantic-gap knob: the caption leaves tiles out.

**Determinism.** Mosaic ``index`` of ``split`` is a pure function of ``(seed, split,
index)`` and the parameters: independent NumPy streams (``default_rng([seed,
crc32(split), index, stream])``) draw the layout and the captions, so more captions leave
the pixels unchanged, and the same call writes identical bytes.

**On disk**, under :attr:`DigitMosaics.root` (:class:`MosaicFiles` names the paths):

- ``images/<split>/<index:06d>.png``: RGB mosaics (image id ``index + 1``);
- ``annotations/instances_<split>.json``: COCO instances, categories ids 1-10 named
  :data:`DIGIT_NAMES`; one annotation per filled tile: ``bbox`` the tile ``[x, y, w, h]``,
  ``segmentation`` the tile square as COCO RLE (``counts`` a string), ``area`` its pixel
  count, ``iscrowd`` 0, and ``attributes`` ``{"row", "col", "source"}`` (``source``: the
  ``load_digits`` index of the tile image);
- ``annotations/captions_<split>.json``: COCO captions;
- ``annotations/regions_<split>.json``: Visual Genome ``region_descriptions.json``: a list
  of ``{"id": image_id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
  "width", "height"}]}``, one region per filled tile, phrase "a seven" / "an eight"; the
  image ids are the COCO files', whose ``images`` give the file names;
- ``masks/<split>/<index:06d>.png``: the semantic label map, mode ``L``: 0 for background
  (blank tiles), ``d + 1`` for a tile of digit ``d`` (VOC-style class indices; 255, VOC's
  "ignore", is reserved and unused);
- ``manifest.json``: the parameters and the split sizes; :meth:`DigitMosaics.locate`
  accepts a copy only when it was written with the same ones.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.data.cache import cache_root
from zoo.data.embedded import CLASSNAMES
from zoo.data.generated import coco_rles, dump_json, locate_written, write_atomically

__all__ = [
    "DIGIT_NAMES",
    "MANIFEST",
    "DigitMosaics",
    "Mosaic",
    "MosaicFiles",
    "digit_phrase",
    "digit_tiles",
    "position_name",
]

#: Class names, digit ``d`` → ``DIGIT_NAMES[d]`` (COCO category id ``d + 1``).
DIGIT_NAMES: tuple[str, ...] = tuple(CLASSNAMES)
MANIFEST = "manifest.json"
#: Share of the 1,797 digit images in the ``train`` pool; the rest is held out.
TRAIN_POOL_FRACTION = 0.8
_FORMAT_VERSION = 1
_GRID2_POSITIONS = (("top left", "top right"), ("bottom left", "bottom right"))
# Independent random streams of one mosaic (the pools use their own seed sequence).
_LAYOUT, _CAPTIONS = 0, 1
_POOLS = 0x9001


def position_name(row: int, col: int, grid: int) -> str:
    """Where tile (row, col) is: "top left" … for a 2×2 grid, else "row r column c" (1-based)."""
    if grid == 2:
        return _GRID2_POSITIONS[row][col]
    return f"row {row + 1} column {col + 1}"


def digit_phrase(digit: int) -> str:
    """Article + name: "a seven", "an eight"."""
    name = DIGIT_NAMES[digit]
    return f"{'an' if name == 'eight' else 'a'} {name}"  # "one" sounds like "won": "a one"


def caption_mentions(caption: str, grid: int) -> list[tuple[int, int, int]]:
    """The ``(digit, row, col)`` tiles a mosaic caption names: the inverse of the captions
    written here ("a seven in the top left and an eight in the bottom right.")."""
    import re

    names = "|".join(DIGIT_NAMES)
    where = r"the (top|bottom) (left|right)" if grid == 2 else r"row (\d+) column (\d+)"
    found = []
    for m in re.finditer(rf"an? ({names}) in {where}", caption):
        digit = DIGIT_NAMES.index(m.group(1))
        if grid == 2:
            row, col = int(m.group(2) == "bottom"), int(m.group(3) == "right")
        else:
            row, col = int(m.group(2)) - 1, int(m.group(3)) - 1
        found.append((digit, row, col))
    if not found:
        raise ValueError(f"not a digit-mosaic caption: {caption!r}")
    return found


def caption_relevance(captions: list[str], tile_labels: np.ndarray, grid: int) -> np.ndarray:
    """``(N_captions, N_images)`` bool: image j fits caption i when every tile the caption
    names holds the named digit (other tiles are free). ``tile_labels``: ``(N_images, grid,
    grid)`` digit per tile, -1 when blank. Several images fit a caption that names fewer
    tiles than the images hold, which is what retrieval "by match" counts as a hit."""
    free = -2
    wanted = np.full((len(captions), grid * grid), free, dtype=np.int64)
    for i, caption in enumerate(captions):
        for digit, row, col in caption_mentions(caption, grid):
            wanted[i, row * grid + col] = digit
    labels = tile_labels.reshape(len(tile_labels), grid * grid)
    fits = (wanted[:, None, :] == labels[None, :, :]) | (wanted[:, None, :] == free)
    return fits.all(axis=-1)


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images), np.asarray(digits.target, dtype=np.int64)


@lru_cache(maxsize=4)
def digit_tiles(tile_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``load_digits`` image as a (1797, tile_size, tile_size) uint8 tile (0-16 →
    0-255 rounded, Pillow bilinear resize), and the (1797,) digit labels."""
    images, labels = _load_digits()
    grey = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    size = (tile_size, tile_size)
    tiles = np.stack(
        [np.asarray(Image.fromarray(g, "L").resize(size, Image.Resampling.BILINEAR)) for g in grey]
    )
    tiles.flags.writeable = False
    return tiles, labels


@lru_cache(maxsize=4)
def _pools(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted (train, held-out) ``load_digits`` indices: a seeded permutation cut 80/20."""
    count = len(_load_digits()[1])
    order = np.random.default_rng([seed, _POOLS]).permutation(count)
    cut = round(TRAIN_POOL_FRACTION * count)
    return np.sort(order[:cut]), np.sort(order[cut:])


@dataclass
class Mosaic:
    """One mosaic: ``image`` (H, W, 3) uint8; ``labels`` (grid, grid) digit per tile, -1 when
    blank; ``sources`` (grid, grid) the ``load_digits`` index of each tile image, -1 when
    blank; ``captions``; ``mentioned`` the (row, col) tiles the first caption names, in its
    order; ``mentioned_by`` the same for every caption."""

    image: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    captions: list[str]
    mentioned: list[tuple[int, int]]
    mentioned_by: list[list[tuple[int, int]]]

    def label_map(self) -> np.ndarray:
        """The (H, W) uint8 semantic label map: 0 background, ``d + 1`` on a tile of digit d."""
        tile = self.image.shape[0] // self.labels.shape[0]
        cells = (self.labels + 1).astype(np.uint8)
        return np.repeat(np.repeat(cells, tile, axis=0), tile, axis=1)


@dataclass(frozen=True)
class MosaicFiles:
    """Where a written copy's files are (the layout in the module docstring) under ``root``."""

    root: Path
    splits: dict[str, int]

    def images(self, split: str) -> Path:
        return self.root / "images" / self._check(split)

    def masks(self, split: str) -> Path:
        return self.root / "masks" / self._check(split)

    def instances(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{self._check(split)}.json"

    def captions(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{self._check(split)}.json"

    def regions(self, split: str) -> Path:
        return self.root / "annotations" / f"regions_{self._check(split)}.json"

    def tile_labels(self, split: str, grid: int) -> tuple[list[str], np.ndarray]:
        """The split's image file names in image-id order (the COCO readers' order) and
        their ``(N, grid, grid)`` digit per tile (-1 blank), read from the COCO instances."""
        coco = json.loads(self.instances(split).read_text())
        images = sorted(coco["images"], key=lambda img: img["id"])
        row_of = {img["id"]: n for n, img in enumerate(images)}
        labels = np.full((len(images), grid, grid), -1, dtype=np.int64)
        for ann in coco["annotations"]:
            where = ann["attributes"]
            labels[row_of[ann["image_id"]], where["row"], where["col"]] = ann["category_id"] - 1
        return [img["file_name"] for img in images], labels

    def _check(self, split: str) -> str:
        if split not in self.splits:
            raise KeyError(f"split {split!r} is not in {self.root} (written: {list(self.splits)})")
        return split


def _default_splits() -> dict[str, int]:
    return {"train": 5000, "val": 500, "test": 500}


@dataclass
class DigitMosaics:
    """The generator (:class:`zoo.datamodule.GeneratedData`): :meth:`write` writes every
    split once (atomic: a temp folder renamed into place), :meth:`locate` finds the copy
    without writing.

    ``root``: the folder of the layout (default: a folder of the zoo cache named after the
    parameters); ``splits``: split name → number of mosaics (``train`` draws from the
    training pool, every other split from the held-out pool); ``grid``: tiles per side;
    ``tile_size``: pixels per tile side; ``mentions``: digits each caption names (1 …
    grid², fewer when the image holds fewer); ``captions_per_image``; ``empty_prob``: the
    chance a tile is blank; ``seed``.
    """

    root: str | None = None
    splits: dict[str, int] = field(default_factory=_default_splits)
    grid: int = 2
    tile_size: int = 16
    mentions: int = 1
    captions_per_image: int = 1
    empty_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.splits = {str(k): int(v) for k, v in self.splits.items()}
        where = "digit mosaics"
        if not self.splits or any(n < 1 for n in self.splits.values()):
            raise ValueError(f"{where}: splits must map names to sizes >= 1, got {self.splits}")
        for name in self.splits:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"{where}: bad split name {name!r}")
        if self.grid < 1 or self.tile_size < 1:
            raise ValueError(f"{where}: grid and tile_size must be >= 1")
        if not 1 <= self.mentions <= self.grid**2:
            raise ValueError(f"{where}: mentions must be in 1..grid² = 1..{self.grid**2}")
        if self.captions_per_image < 1:
            raise ValueError(f"{where}: captions_per_image must be >= 1")
        if not 0.0 <= self.empty_prob <= 1.0:
            raise ValueError(f"{where}: empty_prob must be in [0, 1], got {self.empty_prob}")

    # --- parameters and places ----------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.grid * self.tile_size

    def params(self) -> dict[str, Any]:
        """Everything the bytes depend on."""
        params = asdict(self)
        params.pop("root")
        params["train_pool_fraction"] = TRAIN_POOL_FRACTION
        params["format_version"] = _FORMAT_VERSION
        return params

    def _manifest(self) -> dict[str, Any]:
        # as it reads back from manifest.json (JSON types), for locate_written's comparison
        return json.loads(json.dumps({"params": self.params(), "splits": self.splits}))

    def root_dir(self) -> Path:
        if self.root is not None:
            return Path(self.root).expanduser()
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()
        name = f"digit-mosaics-{self.grid}x{self.tile_size}px-seed{self.seed}-{digest[:10]}"
        return cache_root() / name

    def files(self) -> MosaicFiles:
        return MosaicFiles(self.root_dir(), dict(self.splits))

    @staticmethod
    def categories() -> list[dict[str, Any]]:
        """The COCO categories: id ``d + 1`` named ``DIGIT_NAMES[d]``."""
        return [
            {"id": d + 1, "name": n, "supercategory": "digit"} for d, n in enumerate(DIGIT_NAMES)
        ]

    def pool(self, split: str) -> np.ndarray:
        """The sorted ``load_digits`` indices ``split`` draws its tiles from."""
        train, held_out = _pools(self.seed)
        return train if split == "train" else held_out

    # --- one mosaic --------------------------------------------------------------------------
    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(split.encode()), index, stream])

    def mosaic(self, split: str, index: int) -> Mosaic:
        """Mosaic ``index`` of ``split``, a pure function of (seed, split, index, parameters)."""
        if split not in self.splits:
            raise KeyError(f"split {split!r} is not one of the mosaics' {list(self.splits)}")
        cells = self.grid**2
        layout = self._rng(split, index, _LAYOUT)
        # a fixed number of draws per mosaic, whatever comes out blank
        blank = layout.random(cells) < self.empty_prob
        keep = int(layout.integers(cells))
        pool = self.pool(split)
        sources = pool[layout.integers(len(pool), size=cells)]
        if blank.all():
            blank[keep] = False
        tiles, digit_labels = digit_tiles(self.tile_size)
        sources = np.where(blank, -1, sources)
        labels = np.where(blank, -1, digit_labels[np.maximum(sources, 0)])
        # (cells, t, t) → (grid·t, grid·t): tile (r, c) at rows r·t.., columns c·t..
        cell_pixels = np.where(blank[:, None, None], 0, tiles[np.maximum(sources, 0)])
        t = self.tile_size
        grey = cell_pixels.reshape(self.grid, self.grid, t, t).transpose(0, 2, 1, 3)
        grey = grey.reshape(self.image_size, self.image_size).astype(np.uint8)
        image = np.repeat(grey[..., None], 3, axis=2)
        labels = labels.reshape(self.grid, self.grid)
        captions, named = self._captions(labels, self._rng(split, index, _CAPTIONS))
        return Mosaic(
            image=image,
            labels=labels,
            sources=sources.reshape(self.grid, self.grid),
            captions=captions,
            mentioned=named[0],
            mentioned_by=named,
        )

    def _captions(
        self, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        filled = np.flatnonzero(labels.reshape(-1) >= 0)
        count = min(self.mentions, len(filled))
        captions, named = [], []
        for _ in range(self.captions_per_image):
            cells = rng.permutation(filled)[:count]
            tiles = [divmod(int(c), self.grid) for c in cells]
            parts = [f"{digit_phrase(int(labels[r, c]))} in {self._where(r, c)}" for r, c in tiles]
            text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            captions.append(text + ".")
            named.append(tiles)
        return captions, named

    def _where(self, row: int, col: int) -> str:
        name = position_name(row, col, self.grid)
        return f"the {name}" if self.grid == 2 else name

    # --- GeneratedData ----------------------------------------------------------------------
    def locate(self) -> MosaicFiles:
        """The written copy; ``FileNotFoundError`` when it is not written (yet),
        ``ValueError`` when it was written with other parameters."""
        locate_written(self.root_dir(), MANIFEST, self._manifest(), "digit-mosaic set")
        return self.files()

    def write(self) -> MosaicFiles:
        """Write every split unless a complete copy with these parameters exists."""
        root = self.root_dir()
        if (root / MANIFEST).is_file():
            return self.locate()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(
                f"{root} exists and holds no {MANIFEST}: it is not a copy of the digit "
                "mosaics; choose another root or remove it"
            )

        def fill(tmp: Path) -> str:
            (tmp / "annotations").mkdir()
            for split, count in self.splits.items():
                self._write_split(tmp, split, count)
            return json.dumps(self._manifest(), indent=1, sort_keys=True)

        write_atomically(root, MANIFEST, fill)  # an existing root is empty (checked above)
        return self.locate()

    def _tile_masks(self) -> np.ndarray:
        """(grid², H, W) bool: tile k = (row, col) = divmod(k, grid)'s square."""
        cells = np.eye(self.grid**2, dtype=bool).reshape(-1, self.grid, self.grid)
        t = self.tile_size
        return np.repeat(np.repeat(cells, t, axis=1), t, axis=2)

    def _write_split(self, folder: Path, split: str, count: int) -> None:
        image_dir, mask_dir = folder / "images" / split, folder / "masks" / split
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        t, size = self.tile_size, self.image_size
        tile_rles = coco_rles(self._tile_masks())
        info = {"description": "vl-zoo digit mosaics", "split": split}
        images: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        captions: list[dict[str, Any]] = []
        regions: list[dict[str, Any]] = []
        for index in range(count):
            mosaic = self.mosaic(split, index)
            image_id, file_name = index + 1, f"{index:06d}.png"
            Image.fromarray(mosaic.image, "RGB").save(image_dir / file_name, format="PNG")
            Image.fromarray(mosaic.label_map(), "L").save(mask_dir / file_name, format="PNG")
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            described = []
            for row, col in zip(*np.nonzero(mosaic.labels >= 0)):
                digit = int(mosaic.labels[row, col])
                x, y = int(col) * t, int(row) * t
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": image_id,
                        "category_id": digit + 1,
                        "bbox": [x, y, t, t],
                        "area": t * t,
                        "segmentation": tile_rles[int(row) * self.grid + int(col)],
                        "iscrowd": 0,
                        "attributes": {
                            "row": int(row),
                            "col": int(col),
                            "source": int(mosaic.sources[row, col]),
                        },
                    }
                )
                described.append(
                    {
                        "region_id": len(instances),
                        "image_id": image_id,
                        "phrase": digit_phrase(digit),
                        "x": x,
                        "y": y,
                        "width": t,
                        "height": t,
                    }
                )
            regions.append({"id": image_id, "regions": described})
            for text in mosaic.captions:
                captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        coco = {"info": info, "licenses": [], "images": images}
        annotations = folder / "annotations"
        dump_json(
            annotations / f"instances_{split}.json",
            coco | {"annotations": instances, "categories": self.categories()},
        )
        dump_json(annotations / f"captions_{split}.json", coco | {"annotations": captions})
        dump_json(annotations / f"regions_{split}.json", regions)
