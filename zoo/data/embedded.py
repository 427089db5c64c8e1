"""Embedded, download-free image–text data written in the real on-disk formats.

:func:`build_digits` turns scikit-learn's bundled digits (1,797 8×8 images) into an
image–caption dataset with alt-text-like noise (the SLIP card's small-scale reproduction)
and writes it once, as CSV, JSONL, WebDataset shards or a Hugging Face imagefolder, so the
same loaders that read paper-scale data read it back.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from zoo.data.cache import cache_root
from zoo.data.generated import write_atomically
from zoo.data.tokenizers import TextTokenizer

FORMATS = ("csv", "jsonl", "wds", "hf")
CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Training captions: {word} = "seven", {d} = "7".
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "digit {d} scanned",
    "a photo of the number {word}",
    "the numeral {d} written by hand",
    "{word}",
    "a scan of a handwritten {word}",
    "number {d} on white paper",
    "a {word} drawn in ink",
)
# Alt-text noise: captions that name no digit at all (no digit word, no numeral).
DISTRACTORS = (
    "scan of a page",
    "blurry photo",
    "old paper",
    "ink on paper",
    "untitled",
    "a photo from my archive",
    "close-up of a texture",
    "grainy black and white picture",
    "random doodle",
    "document scan",
    "low resolution image",
    "my homework",
)
ZERO_SHOT_TEMPLATES = (
    "a photo of the number {}.",
    "a handwritten {}.",
    "the digit {}.",
    "a scan of the number {}.",
    "a drawing of a {}.",
    "the numeral {}.",
)
_MARKER = ".complete"
_SHARD_SIZE = 500


@dataclass
class DigitsDataset:
    """Where a built digits dataset lives. ``train`` / ``test`` are what the format's loader
    takes: a table path (csv / jsonl), a brace-expandable shard url (wds, e.g.
    ``…/train-{000000..000002}.tar``) or a split folder (hf)."""

    root: Path
    train: Path | str
    test: Path | str
    fmt: str
    num_train: int
    num_test: int
    classnames: list[str] = field(default_factory=lambda: list(CLASSNAMES))
    templates: list[str] = field(default_factory=lambda: list(ZERO_SHOT_TEMPLATES))

    def dataset(
        self,
        split: str,
        image_transform: Callable[[Image.Image], torch.Tensor] | None = None,
        tokenizer: TextTokenizer | None = None,
        view_transforms: Sequence[Callable[[Image.Image], torch.Tensor]] = (),
        shuffle: int = 0,
    ) -> Dataset | IterableDataset:
        """The ``split`` ("train" / "test") read back through this format's real loader."""
        from zoo.data.formats import HFImageText, ImageTextTable, image_text_webdataset

        source = {"train": self.train, "test": self.test}[split]
        if self.fmt == "wds":
            return image_text_webdataset(
                source, image_transform, tokenizer, view_transforms, shuffle=shuffle
            )
        if self.fmt == "hf":
            cache = self.root / ".hf-cache"
            return HFImageText(
                source, split, image_transform, tokenizer, view_transforms, cache_dir=cache
            )
        return ImageTextTable(source, None, image_transform, tokenizer, view_transforms)


def digit_png(pixels: np.ndarray, size: int) -> Image.Image:
    """An 8×8 digit (0-16) as a ``size``×``size`` grayscale image (0-255, bicubic)."""
    gray = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BICUBIC)


def make_captions(
    labels: np.ndarray, splits: dict[str, np.ndarray], noise: float, seed: int
) -> list[str]:
    """One caption per sample: a template naming the digit, or, for exactly
    ``round(noise * n)`` samples of each split, a distractor that names no digit."""
    rng = np.random.default_rng(seed)
    which = rng.integers(len(CAPTION_TEMPLATES), size=len(labels))
    captions = [
        CAPTION_TEMPLATES[t].format(word=CLASSNAMES[y], d=int(y)) for t, y in zip(which, labels)
    ]
    for idx in splits.values():
        noisy = rng.choice(idx, size=round(noise * len(idx)), replace=False)
        for i in noisy:
            captions[i] = DISTRACTORS[rng.integers(len(DISTRACTORS))]
    return captions


def _write(
    folder: Path,
    fmt: str,
    images: list[Image.Image],
    captions: list[str],
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
) -> None:
    """Write every split in ``fmt`` under ``folder`` (a private temp dir)."""

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        images[i].save(buf, format="PNG")
        return buf.getvalue()

    if fmt in ("csv", "jsonl"):
        (folder / "images").mkdir()
        for idx in splits.values():
            for i in idx:
                (folder / "images" / f"{i:04d}.png").write_bytes(png(i))
    for split, idx in splits.items():
        rows = [(f"{i:04d}", captions[i], int(labels[i])) for i in idx]
        if fmt == "csv":
            with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "caption", "label"])
                writer.writerows((f"images/{k}.png", c, y) for k, c, y in rows)
        elif fmt == "jsonl":
            lines = (
                json.dumps({"image": f"images/{k}.png", "caption": c, "label": y})
                for k, c, y in rows
            )
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif fmt == "wds":
            import webdataset as wds

            with wds.ShardWriter(
                str(folder / f"{split}-%06d.tar"), maxcount=_SHARD_SIZE, verbose=0
            ) as sink:
                for (k, c, y), i in zip(rows, idx):
                    sink.write({"__key__": k, "png": png(i), "txt": c, "cls": y})
        elif fmt == "hf":
            (folder / split).mkdir()
            with (folder / split / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["file_name", "caption", "label"])
                for (k, c, y), i in zip(rows, idx):
                    (folder / split / f"{k}.png").write_bytes(png(i))
                    writer.writerow([f"{k}.png", c, y])
    (folder / "classnames.json").write_text(json.dumps(list(CLASSNAMES)))
    (folder / "templates.json").write_text(json.dumps(list(ZERO_SHOT_TEMPLATES)))


def _shard_url(folder: Path, split: str) -> str:
    shards = sorted(folder.glob(f"{split}-*.tar"))
    first, last = shards[0].stem.split("-")[-1], shards[-1].stem.split("-")[-1]
    return str(
        folder / (f"{split}-{first}.tar" if first == last else f"{split}-{{{first}..{last}}}.tar")
    )


def _locate(folder: Path, fmt: str) -> DigitsDataset:
    counts = json.loads((folder / _MARKER).read_text())
    if fmt == "wds":
        train, test = _shard_url(folder, "train"), _shard_url(folder, "test")
    elif fmt == "hf":
        train, test = folder / "train", folder / "test"
    else:
        train, test = folder / f"train.{fmt}", folder / f"test.{fmt}"
    return DigitsDataset(folder, train, test, fmt, counts["num_train"], counts["num_test"])


def digits_folder(
    root: str | Path | None = None,
    size: int = 16,
    fmt: str = "csv",
    test_fraction: float = 0.3,
    caption_noise: float = 0.3,
    seed: int = 0,
) -> Path:
    """Where :func:`build_digits` writes (and :func:`locate_digits` finds) one copy: a pure
    function of the arguments, so every DDP rank computes the same folder."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown digits format {fmt!r}; choose from {FORMATS}")
    if not 0 < test_fraction < 1 or not 0 <= caption_noise <= 1:
        raise ValueError("need 0 < test_fraction < 1 and 0 <= caption_noise <= 1")
    root = Path(root) if root is not None else cache_root() / f"digits-{size}px-seed{seed}"
    default = (test_fraction, caption_noise) == (0.3, 0.3)
    return root / (fmt if default else f"{fmt}-test{test_fraction:g}-noise{caption_noise:g}")


def locate_digits(
    root: str | Path | None = None,
    size: int = 16,
    fmt: str = "csv",
    test_fraction: float = 0.3,
    caption_noise: float = 0.3,
    seed: int = 0,
) -> DigitsDataset:
    """The copy :func:`build_digits` wrote with these arguments; never writes. Raises
    ``FileNotFoundError`` when it has not been written (yet)."""
    folder = digits_folder(root, size, fmt, test_fraction, caption_noise, seed)
    if not (folder / _MARKER).is_file():
        raise FileNotFoundError(
            f"the embedded digits are not written at {folder}: prepare_data() writes them "
            "(the Trainer calls it; outside a Trainer call datamodule.prepare_data() first)"
        )
    return _locate(folder, fmt)


def build_digits(
    root: str | Path | None = None,
    size: int = 16,
    fmt: str = "csv",
    test_fraction: float = 0.3,
    caption_noise: float = 0.3,
    seed: int = 0,
) -> DigitsDataset:
    """Write scikit-learn's digits as a noisy-caption image–text dataset in ``fmt`` (once).

    ``root`` defaults to ``$VL_ZOO_CACHE/digits-{size}px-seed{seed}`` (or ``~/.cache/vl-zoo``);
    each format lives in its own sub-folder, built in a temp folder and renamed into place
    with a marker file, so concurrent builders are safe and later calls reuse it. The split
    is stratified and seeded; labels are kept for evaluation only.
    """
    folder = digits_folder(root, size, fmt, test_fraction, caption_noise, seed)
    if (folder / _MARKER).is_file():
        return _locate(folder, fmt)

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    splits = {"train": np.sort(train_idx), "test": np.sort(test_idx)}
    captions = make_captions(labels, splits, caption_noise, seed)
    images = [digit_png(x, size) for x in digits.images]

    def fill(tmp: Path) -> str:
        _write(tmp, fmt, images, captions, labels, splits)
        marker = {"size": size, "seed": seed, "fmt": fmt, "noise": caption_noise}
        marker.update(num_train=len(splits["train"]), num_test=len(splits["test"]))
        return json.dumps(marker)

    write_atomically(folder, _MARKER, fill)
    return _locate(folder, fmt)


@dataclass
class DigitsSpec:
    """The embedded digits image–text set (SLIP card, small-scale reproduction), as a
    datamodule's ``digits:`` argument: :meth:`write` builds it (``prepare_data``),
    :meth:`locate` finds it without writing (``setup``, on every rank)."""

    size: int = 16
    format: Literal["csv", "jsonl", "wds", "hf"] = "csv"
    test_fraction: float = 0.3
    caption_noise: float = 0.3
    seed: int = 0
    cache_dir: str | None = None

    def _args(self) -> dict:
        return {
            "root": self.cache_dir,
            "size": self.size,
            "fmt": self.format,
            "test_fraction": self.test_fraction,
            "caption_noise": self.caption_noise,
            "seed": self.seed,
        }

    def folder(self) -> Path:
        return digits_folder(**self._args())

    def write(self) -> DigitsDataset:
        return build_digits(**self._args())

    def locate(self) -> DigitsDataset:
        return locate_digits(**self._args())
