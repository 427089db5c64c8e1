"""scikit-learn digits as a noisy-caption image–text dataset, written once in each real
format and read back through the loaders."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
from collections import Counter

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from zoo.data.collate import collate_samples
from zoo.data.embedded import CLASSNAMES, DISTRACTORS, FORMATS, build_digits
from zoo.data.tokenizers import TextTokenizer

N = 1797


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """Private cache (tokenizer) and one digits root shared by the tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VL_ZOO_CACHE", str(tmp_path_factory.mktemp("vlz-cache")))
        yield tmp_path_factory.mktemp("digits")


def _table(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _names_digit(caption: str, d: int) -> bool:
    return re.search(rf"\b({CLASSNAMES[d]}|{d})\b", caption) is not None


def _names_any_digit(caption: str) -> bool:
    return any(_names_digit(caption, d) for d in range(10))


def test_splits_captions_and_pixels(env) -> None:
    digits = build_digits(env, fmt="csv")
    train, test = _table(digits.train), _table(digits.test)
    assert len(train) + len(test) == N and len(test) == pytest.approx(0.3 * N, abs=1)
    assert (digits.num_train, digits.num_test) == (len(train), len(test))
    assert digits.classnames == list(CLASSNAMES)
    assert all("{}" in t for t in digits.templates) and len(digits.templates) >= 5
    assert json.loads((digits.root / "templates.json").read_text()) == digits.templates
    assert json.loads((digits.root / "classnames.json").read_text()) == list(CLASSNAMES)
    # stratified: per-class test share within one sample of 30 %
    y_all = load_digits().target
    per_class = Counter(int(r["label"]) for r in test)
    for c in range(10):
        assert abs(per_class[c] - 0.3 * (y_all == c).sum()) <= 1
    # noisy captions: 30 % ± 3 % per split, never naming the digit; clean ones always do
    for rows in (train, test):
        noisy = [r for r in rows if r["caption"] in DISTRACTORS]
        assert abs(len(noisy) / len(rows) - 0.3) <= 0.03
        assert not any(_names_any_digit(r["caption"]) for r in noisy)
        clean = [r for r in rows if r["caption"] not in DISTRACTORS]
        assert all(_names_digit(r["caption"], int(r["label"])) for r in clean)
        assert len({r["caption"] for r in clean}) > 20  # varied templates, words and numerals
    # pixels: the PNG equals the 8×8 source scaled to 0-255 and bicubic-upsampled to 16×16
    images = load_digits().images
    for row in train[:25] + test[:25]:
        index = int(row["image"].split("/")[-1].removesuffix(".png"))
        src = np.rint(images[index] * 255 / 16).astype(np.uint8)
        expected = np.asarray(Image.fromarray(src).resize((16, 16), Image.Resampling.BICUBIC))
        with Image.open(digits.root / row["image"]) as png:
            assert png.mode == "L" and np.array_equal(np.asarray(png), expected)
        assert int(row["label"]) == y_all[index]


def test_deterministic_and_reused(env, tmp_path) -> None:
    first = build_digits(env, fmt="csv")
    mtimes = {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()}
    again = build_digits(env, fmt="csv")
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*") if p.is_file()} == mtimes
    assert not [p for p in env.iterdir() if ".tmp-" in p.name]  # no temp leftovers
    other = build_digits(tmp_path, fmt="csv")  # same seed elsewhere → same content
    assert (other.train.read_text(), other.test.read_text()) == (
        first.train.read_text(),
        first.test.read_text(),
    )
    assert (
        build_digits(tmp_path / "s1", fmt="csv", seed=1).train.read_text()
        != first.train.read_text()
    )
    with pytest.raises(ValueError, match="parquet"):
        build_digits(env, fmt="parquet")


def test_concurrent_builders_are_safe(env, tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=build_digits, args=(tmp_path,), kwargs={"fmt": "jsonl"})
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jsonl"]  # one winner, no temp dirs
    built = build_digits(tmp_path, fmt="jsonl")
    assert built.train.read_text() == build_digits(env, fmt="jsonl").train.read_text()
    assert len(list((built.root / "images").glob("*.png"))) == N


@pytest.fixture(scope="module")
def reference(env) -> dict:
    """Per split: the (caption, label) multiset and the pixel total of the CSV copy."""
    digits = build_digits(env, fmt="csv")
    out = {}
    for split, path in (("train", digits.train), ("test", digits.test)):
        rows = _table(path)
        pixels = [np.asarray(Image.open(digits.root / r["image"]), dtype=np.int64) for r in rows]
        out[split] = (
            Counter((r["caption"], int(r["label"])) for r in rows),
            int(sum(p.sum() for p in pixels)),
        )
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back(env, reference, fmt) -> None:
    digits = build_digits(env, fmt=fmt)
    assert digits.fmt == fmt
    if fmt == "wds":  # 500 samples per shard, addressed by one brace-expandable url
        assert digits.train.endswith("train-{000000..000002}.tar")
        assert digits.test.endswith("test-{000000..000001}.tar")
    tok = TextTokenizer(context_length=12)
    for split in ("train", "test"):
        expected, pixel_total = reference[split]
        loader = DataLoader(
            digits.dataset(split, tokenizer=tok), batch_size=512, collate_fn=collate_samples
        )
        seen: Counter = Counter()
        total = 0
        for batch in loader:
            assert int(batch["skipped"]) == 0
            assert batch["image"].shape[1:] == (3, 16, 16)
            assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])  # gray → RGB
            assert torch.equal(batch["text"], tok(batch["caption"]))
            total += int((batch["image"][:, 0] * 255).round().long().sum())
            seen.update(zip(batch["caption"], batch["label"].tolist()))
        assert seen == expected, (fmt, split)
        assert total == pixel_total  # the same 8-bit pixels in every format
