"""Shifted digits: a domain-shifted copy of scikit-learn's digits, in CoOp's on-disk layout.

The target task of the few-shot family's small reproduction: a CLIP pretrained on the
embedded digits (:mod:`zoo.data.embedded`: light strokes on black, upright) adapts to digits
whose domain moved, so that zero-shot transfer is weak and the few shots matter. Each of
the 1,797 ``load_digits`` images becomes, at ``size`` pixels:

1. the pretraining image (:func:`zoo.data.embedded.digit_png`: 0-16 → 0-255, bicubic);
2. rotated ``rotation`` degrees counter-clockwise (PIL, bicubic, black fill);
3. if ``invert``, inverted, ``255 - v`` (dark strokes on white; off by default, see below);
4. plus Gaussian noise of standard deviation ``noise · 255``, rounded and clipped to 0-255,
   drawn from ``numpy.random.default_rng([seed, index])`` (the same pixels in any order).

The default shift (30°, noise 0.05, no inversion) was chosen by measuring the released tiny
models on it with ``tools/shift_probe.py`` (test split; nearest-class-mean from the
protocol's 4-shot sample, few-shot seed 1): the SLIP package's zero-shot top-1 falls from
44.4 % on upright digits to 11.9 %, while a nearest-class-mean classifier of its image
features from 4 shots per class still reaches 35.4 % (an inverted copy: 17.0 %). The released
tiny CLIP's image features nearly collapse on every shifted copy (mean pairwise cosine 0.99;
4-shot nearest-class-mean 17.0 %, inverted 15.9 %), so the few-shot recipes adapt the SLIP
package. ``invert=True`` keeps the harder copy.

It is written the way CoOp lays out a dataset (``datasets/dtd.py``): ``shifted_digits/images/
<classname>/<index>.png`` and ``shifted_digits/split_zhou_ShiftedDigits.json`` with
train / val / test lists of ``[relpath, label, classname]``, cut per class from a seeded
permutation into 50 / 20 / 30 %. The class names are ``"zero"`` … ``"nine"``, the words the
embedded captions use, and the dataset's prompt is ``"a photo of the number {}."``, one of
the embedded zero-shot templates, so the real split reader and datamodule are what run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.data.cache import cache_root
from zoo.data.embedded import CLASSNAMES, digit_png
from zoo.data.generated import locate_written, write_atomically

FOLDER = "shifted_digits"
IMAGE_DIR = "images"
SPLIT_FILE = "split_zhou_ShiftedDigits.json"
_MARKER = ".complete"


def shift_digit(
    pixels: np.ndarray,
    size: int,
    rotation: float,
    noise: float,
    rng: np.random.Generator | None,
    invert: bool = False,
) -> Image.Image:
    """One 8×8 digit (0-16) as a shifted ``size``×``size`` grayscale image (steps 1-4)."""
    upright = digit_png(pixels, size)
    rotated = upright.rotate(rotation, resample=Image.Resampling.BICUBIC, fillcolor=0)
    values = np.asarray(rotated, dtype=np.float64)
    if invert:
        values = 255.0 - values
    if noise > 0:
        if rng is None:
            raise ValueError("noise > 0 needs a random generator")
        values = values + rng.normal(0.0, noise * 255.0, values.shape)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def split_indices(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """Per class (ascending label), a seeded permutation cut into ``round(n·f_train)`` /
    ``round(n·f_val)`` / the rest (CoOp's per-class 50 / 20 / 30 cut)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(len(members) * fractions[0])
        n_val = round(len(members) * fractions[1])
        out["train"] += members[:n_train].tolist()
        out["val"] += members[n_train : n_train + n_val].tolist()
        out["test"] += members[n_train + n_val :].tolist()
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


@dataclass
class ShiftedDigits:
    """The generator (:class:`zoo.datamodule.GeneratedData`): :meth:`write` builds the
    dataset once (atomic: a temp folder renamed into place, then a marker), :meth:`locate`
    finds it without writing.

    ``root`` is CoOp's ``DATASET.ROOT``, the folder that holds ``shifted_digits/`` (default:
    a folder of the zoo cache named after the parameters); ``size`` the image side (the tiny
    CLIP's 16); ``rotation`` degrees; ``noise`` the noise std as a fraction of 255;
    ``fractions`` train / val / test per class; ``seed`` the split and noise seed.
    """

    root: str | None = None
    size: int = 16
    rotation: float = 30.0
    noise: float = 0.05
    invert: bool = False
    seed: int = 0
    fractions: tuple[float, float, float] = (0.5, 0.2, 0.3)

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        if self.size < 8:
            raise ValueError(
                f"shifted digits: size must be >= 8 (the source is 8x8), got {self.size}"
            )
        if (
            len(self.fractions) != 3
            or min(self.fractions) <= 0
            or abs(sum(self.fractions) - 1) > 1e-9
        ):
            raise ValueError(
                f"shifted digits: fractions must be 3 positive shares summing to 1, got {self.fractions}"
            )
        if self.noise < 0:
            raise ValueError(f"shifted digits: noise must be >= 0, got {self.noise}")

    def _params(self) -> dict:
        params = asdict(self)
        params.pop("root")
        params["fractions"] = list(self.fractions)
        return params

    def root_dir(self) -> Path:
        """CoOp's ``DATASET.ROOT`` for this copy (a pure function of the parameters, so every
        rank computes the same folder)."""
        if self.root is not None:
            return Path(self.root).expanduser()
        name = (
            f"shifted-digits-{self.size}px-rot{self.rotation:g}-noise{self.noise:g}"
            f"-invert{int(self.invert)}-seed{self.seed}"
        )
        if self.fractions != (0.5, 0.2, 0.3):
            name += "-split" + "-".join(f"{f:g}" for f in self.fractions)
        return cache_root() / name

    def folder(self) -> Path:
        return self.root_dir() / FOLDER

    def locate(self) -> Path:
        """The written dataset folder; ``FileNotFoundError`` when it is not written (yet),
        ``ValueError`` when it was written with other parameters."""
        return locate_written(self.folder(), _MARKER, self._params(), "shifted digits dataset")

    def write(self) -> Path:
        """Write the dataset unless a complete copy with these parameters exists."""
        folder = self.folder()
        if (folder / _MARKER).is_file():
            return self.locate()
        from sklearn.datasets import load_digits

        digits = load_digits()
        labels = np.asarray(digits.target, dtype=np.int64)
        parts = split_indices(labels, self.fractions, self.seed)

        def fill(tmp: Path) -> str:
            for name in CLASSNAMES:
                (tmp / IMAGE_DIR / name).mkdir(parents=True)
            for i, (pixels, label) in enumerate(zip(digits.images, labels)):
                rng = np.random.default_rng([self.seed, i])
                image = shift_digit(pixels, self.size, self.rotation, self.noise, rng, self.invert)
                image.save(tmp / IMAGE_DIR / self.relpath(i, int(label)))
            split = {
                name: [
                    [self.relpath(int(i), int(labels[i])), int(labels[i]), CLASSNAMES[labels[i]]]
                    for i in idx
                ]
                for name, idx in parts.items()
            }
            (tmp / SPLIT_FILE).write_text(json.dumps(split, indent=4, separators=(",", ": ")))
            return json.dumps(self._params())

        write_atomically(folder, _MARKER, fill)
        return self.locate()

    @staticmethod
    def relpath(index: int, label: int) -> str:
        """The image's path relative to ``images/``: ``<classname>/<index:04d>.png``."""
        return f"{CLASSNAMES[label]}/{index:04d}.png"
