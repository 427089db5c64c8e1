"""A tiny CoOp-format few-shot dataset for the few-shot papers' tests: scikit-learn digits as
16 px PNGs (black on white, as the tiny digits CLIP saw them) listed in a
``split_zhou_Digits.json`` (train / val / test lists of ``[relpath, label, classname]``), read
by the real :class:`zoo.data.fewshot_datamodule.FewShotDataModule`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from zoo.data.embedded import CLASSNAMES

PACKAGE = Path(__file__).resolve().parents[2] / "checkpoints" / "clip-vit-tiny-digits"
TEMPLATE = "a photo of the number {}."


def write_digits_layout(root: Path, per_class: dict[str, int]) -> Path:
    """``root/digits/images/<class>/<i>.png`` + ``root/digits/split_zhou_Digits.json`` with
    ``per_class[split]`` images of each of the 10 digits per split (disjoint images)."""
    digits = load_digits()
    by_class = {c: np.flatnonzero(digits.target == c).tolist() for c in range(10)}
    split: dict[str, list] = {}
    for name, count in per_class.items():
        entries = []
        for label in range(10):
            for _ in range(count):
                i = by_class[label].pop(0)
                rel = f"{CLASSNAMES[label]}/{i}.png"
                path = root / "digits" / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).convert("RGB").resize((16, 16), Image.NEAREST).save(path)
                entries.append([rel, label, CLASSNAMES[label]])
        split[name] = entries
    (root / "digits" / "split_zhou_Digits.json").write_text(json.dumps(split))
    return root


def digits_datamodule(root: Path, cache: Path, shots: int = 2, **kwargs):
    """A :class:`FewShotDataModule` on :func:`write_digits_layout`'s files, with the tiny
    CLIP's preprocessing (tokenizer included)."""
    from zoo.data.fewshot_datamodule import FewShotDataModule
    from zoo.fewshot.clip_source import load_clip

    args = dict(
        root=str(root),
        dataset="custom",
        split_file="digits/split_zhou_Digits.json",
        image_dir="digits/images",
        shots=shots,
        fewshot_seed=1,
        templates=[TEMPLATE],
        preprocess=load_clip({"path": str(PACKAGE)}).preprocess,
        batch_size=10,
        split_cache=str(cache),
    )
    return FewShotDataModule(**(args | kwargs))
