"""Every image–text format, written for real on disk with one corrupt and one missing image,
reads back through its loader + DataLoader: valid samples exact, bad files skipped, counted
and logged."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from zoo.data.collate import collate_samples
from zoo.data.formats import HFImageText, ImageTextTable, image_text_webdataset
from zoo.data.samples import SkipCounter
from zoo.data.tokenizers import TextTokenizer
from zoo.data.transforms import build_transform, to_rgb_tensor

N_VALID = 6
H, W = 10, 12
# Row layout: bad rows are not adjacent and not last, so each is replaced by a valid one.
LAYOUT = ["ok", "ok", "corrupt", "ok", "ok", "missing", "ok", "ok"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VL_ZOO_CACHE", str(tmp_path_factory.mktemp("vlz-cache")))
        tok = TextTokenizer(context_length=8)
        tok(["warm up"])  # build the BPE files once, inside the private cache
        yield tok


def _pixels(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(0, 256, (H, W), dtype=np.uint8)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(k), "L").save(buf, format="PNG")
    return buf.getvalue()


def _rows() -> list[dict]:
    """One dict per LAYOUT entry: file name, caption, label, kind."""
    rows, k = [], 0
    for n, kind in enumerate(LAYOUT):
        if kind == "ok":
            rows.append({"file": f"img{k}.png", "caption": f"a caption number {k}", "label": k, "kind": kind, "k": k})  # fmt: skip
            k += 1
        else:
            rows.append({"file": f"{kind}.png", "caption": f"{kind} caption", "label": 90 + n, "kind": kind, "k": -1})  # fmt: skip
    return rows


VALID = {f"a caption number {k}": k for k in range(N_VALID)}


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row in _rows():
        if row["kind"] == "ok":
            (folder / row["file"]).write_bytes(_png(row["k"]))
        elif row["kind"] == "corrupt":
            (folder / row["file"]).write_bytes(b"\x89PNG this is not an image at all")


def _read_all(ds, batch_size: int = 4, num_workers: int = 0) -> list[dict]:
    loader = DataLoader(
        ds, batch_size=batch_size, collate_fn=collate_samples, num_workers=num_workers
    )
    return list(loader)


def _check_batches(
    batches: list[dict], tokenizer: TextTokenizer, n_bad: int, fixed: bool
) -> Counter:
    """Values, not shapes: each image's pixels and tokens belong to its caption."""
    captions: Counter = Counter()
    for batch in batches:
        if fixed:
            assert batch["image"].shape[0] == 4  # replacement keeps batch sizes fixed
        for img, text, cap, label in zip(
            batch["image"], batch["text"], batch["caption"], batch["label"]
        ):
            assert cap in VALID, cap
            k = VALID[cap]
            assert int(label) == k
            expected = torch.from_numpy(_pixels(k)).float().div(255).expand(3, H, W)
            assert torch.equal(img, expected)
            assert torch.equal(text, tokenizer(cap))
            captions[cap] += 1
    assert set(captions) == set(VALID)
    assert sum(int(b["skipped"]) for b in batches) == n_bad
    return captions


def _bad_logged(caplog: pytest.LogCaptureFixture, *names: str) -> None:
    text = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "zoo.data" and r.levelno == logging.WARNING
    )
    for name in names:
        assert name in text, (name, text)


# ---------------------------------------------------------------- tables (CSV / TSV / JSONL)


def _write_table(folder: Path, suffix: str) -> Path:
    _write_images(folder / "imgs")
    path = folder / f"data{suffix}"
    rows = [
        {"image": f"imgs/{r['file']}", "caption": r["caption"], "label": r["label"]}
        for r in _rows()
    ]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(
                f, ["image", "caption", "label"], delimiter="\t" if suffix == ".tsv" else ","
            )
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_table_skips_counts_and_logs_bad_images(tmp_path, tokenizer, caplog, suffix) -> None:
    path = _write_table(tmp_path, suffix)
    ds = ImageTextTable(path, image_transform=to_rgb_tensor(), tokenizer=tokenizer)
    assert len(ds) == len(LAYOUT)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        batches = _read_all(ds)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=True)
    # each bad row is replaced by the next row: captions 2 and 4 appear twice
    assert captions == Counter(
        {**dict.fromkeys(VALID, 1), "a caption number 2": 2, "a caption number 4": 2}
    )
    assert [int(b["skipped"]) for b in batches] == [1, 1]  # one bad row per batch of 4
    per_sample = [int(ds[i]["skipped"]) for i in range(len(ds))]
    assert per_sample == [int(kind != "ok") for kind in LAYOUT]
    assert ds.skipped == 4  # two passes over two bad files
    _bad_logged(caplog, "corrupt.png", "missing.png", "file not found")


def test_table_absolute_paths_and_image_root(tmp_path, tokenizer) -> None:
    _write_images(tmp_path / "elsewhere")
    table = tmp_path / "t" / "abs.csv"
    table.parent.mkdir()
    table.write_text(
        f"image,caption,label\n{tmp_path / 'elsewhere' / 'img3.png'},a caption number 3,3\n"
    )
    assert ds_caption(ImageTextTable(table, tokenizer=tokenizer)) == "a caption number 3"
    rel = tmp_path / "t" / "rel.csv"
    rel.write_text("image,caption\nimg1.png,a caption number 1\n")
    ds = ImageTextTable(rel, image_root=tmp_path / "elsewhere", tokenizer=tokenizer, label_key=None)
    sample = ds[0]
    assert sample["label"] == -1 and torch.equal(
        sample["image"][0], torch.from_numpy(_pixels(1)).float() / 255
    )


def ds_caption(ds) -> str:
    return ds[0]["caption"]


def test_table_errors(tmp_path, tokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        ImageTextTable(tmp_path / "nothere.csv")
    path = _write_table(tmp_path, ".csv")
    with pytest.raises(ValueError, match=r"'title'.*data\.csv"):
        ImageTextTable(path, tokenizer=tokenizer, caption_keys=["caption", "title"])
    with pytest.raises(ValueError, match=r"'cls'.*label_key=None"):
        ImageTextTable(path, tokenizer=tokenizer, label_key="cls")
    all_bad = tmp_path / "bad.csv"
    all_bad.write_text("image,caption,label\nimgs/corrupt.png,x,1\nimgs/missing.png,y,2\n")
    with pytest.raises(RuntimeError, match="none of its 2 samples"):
        ImageTextTable(all_bad, tokenizer=tokenizer)[1]


def test_multiple_caption_keys_pick_among_non_empty(tmp_path, tokenizer) -> None:
    _write_images(tmp_path)
    path = tmp_path / "yfcc.jsonl"
    rows = [
        {"image": "img0.png", "title": "title zero", "description": "description zero"},
        {"image": "img1.png", "title": "title one", "description": ""},
        {"image": "img2.png", "title": None, "description": "description two"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ImageTextTable(
        path, tokenizer=tokenizer, caption_keys=["title", "description"], label_key=None
    )
    random.seed(0)
    seen = [{ds[i]["caption"] for _ in range(40)} for i in range(3)]
    assert seen == [{"title zero", "description zero"}, {"title one"}, {"description two"}]
    random.seed(1)
    first = [ds[0]["caption"] for _ in range(20)]
    random.seed(1)
    assert [ds[0]["caption"] for _ in range(20)] == first  # reproducible under seeding


def test_slip_sample_has_four_tensors(tmp_path, tokenizer) -> None:
    path = _write_table(tmp_path, ".csv")
    ssl = build_transform("ssl", 8)
    ds = ImageTextTable(
        path,
        image_transform=build_transform("eval", 8),
        tokenizer=tokenizer,
        view_transforms=[ssl, ssl],
    )
    torch.manual_seed(0)
    sample = ds[0]
    tensors = [sample["image"], sample["text"], *sample["views"]]
    assert len(tensors) == 4 and all(isinstance(t, torch.Tensor) for t in tensors)
    img = Image.fromarray(_pixels(0), "L")
    assert torch.equal(sample["image"], build_transform("eval", 8)(img))
    assert not torch.equal(sample["views"][0], sample["views"][1])  # independent augmentations
    samples = [ds[i] for i in range(4)]
    batch = collate_samples(samples)
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (4, 3, 8, 8)
    assert torch.equal(batch["views"][1][2], samples[2]["views"][1])
    assert torch.equal(batch["text"][3], tokenizer("a caption number 2"))
    assert int(batch["skipped"]) == 1 and batch["label"].tolist() == [0, 1, 2, 2]


# ---------------------------------------------------------------------- Hugging Face datasets


def test_hf_imagefolder(tmp_path, tokenizer, caplog) -> None:
    root = tmp_path / "hf"
    _write_images(root / "train")
    with (root / "train" / "metadata.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption", "label"])
        writer.writerows([r["file"], r["caption"], r["label"]] for r in _rows())
    ds = HFImageText(root, "train", to_rgb_tensor(), tokenizer, cache_dir=tmp_path / "cache")
    assert len(ds) == len(LAYOUT)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        batches = _read_all(ds)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=True)
    assert sum(captions.values()) == len(LAYOUT)
    _bad_logged(caplog, "corrupt.png", "missing.png")
    # a folder holding one split reads whole; unknown columns are named
    assert (
        len(HFImageText(root / "train", "test", tokenizer=tokenizer, cache_dir=tmp_path / "cache"))
        == 8
    )
    with pytest.raises(ValueError, match="'text'"):
        HFImageText(
            root, "train", tokenizer=tokenizer, caption_keys="text", cache_dir=tmp_path / "cache"
        )


def test_hf_parquet(tmp_path, tokenizer, caplog) -> None:
    import datasets

    images = []
    for r in _rows():
        if r["kind"] == "ok":
            images.append({"bytes": _png(r["k"]), "path": r["file"]})
        elif r["kind"] == "corrupt":
            images.append({"bytes": b"not a png", "path": "corrupt.png"})
        else:
            images.append({"bytes": None, "path": str(tmp_path / "missing.png")})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.Value("int64"),
        }
    )
    table = datasets.Dataset.from_dict(
        {
            "image": images,
            "caption": [r["caption"] for r in _rows()],
            "label": [r["label"] for r in _rows()],
        },
        features=features,
    )
    table.to_parquet(str(tmp_path / "data.parquet"), batch_size=100)
    ds = HFImageText(
        tmp_path / "data.parquet", "train", to_rgb_tensor(), tokenizer, cache_dir=tmp_path / "cache"
    )
    assert ds.builder_name == "parquet"
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        batches = _read_all(ds)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=True)
    assert captions == Counter(
        {**dict.fromkeys(VALID, 1), "a caption number 2": 2, "a caption number 4": 2}
    )
    _bad_logged(caplog, "corrupt.png", "missing.png")
    with pytest.raises(FileNotFoundError, match="gone.parquet"):
        HFImageText(tmp_path / "gone.parquet")


# -------------------------------------------------------------------------------- WebDataset


def _write_shards(folder: Path) -> str:
    """3 shards; shard 0 has a corrupt PNG, shard 1 a sample without image. Each shard ends
    with a valid sample, so every skip is reported in some sample's ``skipped``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [{"__key__": f"s{k:03d}", "png": _png(k), "txt": f"a caption number {k}", "cls": k} for k in range(N_VALID)]  # fmt: skip
    corrupt = {"__key__": "corrupt", "png": b"garbage bytes", "txt": "corrupt caption", "cls": 7}
    no_image = {"__key__": "noimage", "txt": "missing caption", "cls": 8}
    shards = [
        [samples[0], corrupt, samples[1]],
        [samples[2], no_image, samples[3]],
        [samples[4], samples[5]],
    ]
    for n, members in enumerate(shards):
        with wds.TarWriter(str(folder / f"shard-{n:06d}.tar")) as sink:
            for m in members:
                sink.write(m)
    return str(folder / "shard-{000000..000002}.tar")


def test_webdataset_skips_counts_and_logs(tmp_path, tokenizer, caplog) -> None:
    urls = _write_shards(tmp_path)
    ds = image_text_webdataset(urls, to_rgb_tensor(), tokenizer)
    assert ds.shards == [str(tmp_path / f"shard-{n:06d}.tar") for n in range(3)]
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        batches = _read_all(ds)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=False)
    assert captions == Counter(dict.fromkeys(VALID, 1))
    assert ds.skips.total == 2
    _bad_logged(caplog, "shard-000000.tar:corrupt", "shard-000001.tar:noimage")


def test_webdataset_two_workers_each_sample_once(tmp_path, tokenizer) -> None:
    urls = _write_shards(tmp_path)
    ds = image_text_webdataset(urls, to_rgb_tensor(), tokenizer, shuffle=4, seed=3)
    batches = _read_all(ds, batch_size=2, num_workers=2)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=False)
    assert captions == Counter(dict.fromkeys(VALID, 1))


def test_webdataset_errors(tmp_path, tokenizer, caplog) -> None:
    urls = _write_shards(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        labels = [
            s["label"] for s in image_text_webdataset(urls, None, tokenizer, label_key="label")
        ]
    assert labels == [-1] * N_VALID
    _bad_logged(caplog, "no 'label' member", "check label_key")
    with pytest.raises(FileNotFoundError, match=r"shard-000003.tar, .*shard-000007.tar and 2 more"):
        image_text_webdataset(str(tmp_path / "shard-{000000..000009}.tar"), None, tokenizer)


def test_indexed_shards_read_the_streamed_samples_and_skip_bad_ones(
    tmp_path, tokenizer, caplog
) -> None:
    """Local shards by index (zoo.data.indexed_shards): the streamed pipeline's samples, in
    shard order, bad ones replaced by the next readable one (map-style, like a table)."""
    from zoo.data.indexed_shards import IndexedShards

    urls = _write_shards(tmp_path)
    ds = IndexedShards(urls, to_rgb_tensor(), tokenizer)
    assert len(ds) == N_VALID + 2  # the corrupt and the image-less sample are indexed too
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        batches = _read_all(ds)
    captions = _check_batches(batches, tokenizer, n_bad=2, fixed=True)
    assert _read_all(ds, num_workers=2)[1]["caption"] == batches[1]["caption"]  # forked reads
    # corrupt (after s000) → s001, noimage (after s002) → s003
    assert captions == Counter({**dict.fromkeys(VALID, 1), "a caption number 1": 2, "a caption number 3": 2})  # fmt: skip
    _bad_logged(caplog, "shard-000000.tar:corrupt", "shard-000001.tar:noimage")
    streamed = [s["caption"] for s in image_text_webdataset(urls, None, tokenizer)]
    assert [ds[i]["caption"] for i in (0, 2, 3, 5, 6, 7)] == streamed

    (tmp_path / "bad.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(ValueError, match="cannot index WebDataset shard .*bad.tar"):
        IndexedShards(str(tmp_path / "bad.tar"))
    with pytest.raises(FileNotFoundError, match="shard-000003.tar"):
        IndexedShards(str(tmp_path / "shard-{000000..000009}.tar"))


def test_shard_index_is_cached_and_rebuilt_when_the_shard_changes(tmp_path, monkeypatch) -> None:
    from zoo.data.indexed_shards import IndexedShards

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    urls = _write_shards(tmp_path / "shards")
    first = IndexedShards(urls)
    assert len(list((tmp_path / "cache" / "wds-index").glob("*.npz"))) == 3
    assert [IndexedShards(urls)[i]["caption"] for i in range(8)] == [first[i]["caption"] for i in range(8)]  # fmt: skip
    with wds.TarWriter(str(tmp_path / "shards" / "shard-000002.tar")) as sink:  # new content
        sink.write({"__key__": "new", "png": _png(9), "txt": "a new caption", "cls": 9})
    again = IndexedShards(urls)
    assert len(again) == 7 and again[6]["caption"] == "a new caption"


def test_datamodule_reads_local_shards_by_index_and_remote_ones_streamed(tmp_path) -> None:
    from zoo.data.indexed_shards import IndexedShards
    from zoo.datamodule import ImageTextDataModule

    urls = _write_shards(tmp_path)
    indexed = ImageTextDataModule(source="wds", train=urls, image_size=8, batch_size=2)
    assert isinstance(indexed.build_dataset("train", train=True), IndexedShards)
    streamed = ImageTextDataModule(
        source="wds", train=urls, image_size=8, batch_size=2, wds_access="stream",
        epoch_samples=6,
    )  # fmt: skip
    assert not isinstance(streamed.build_dataset("train", train=True), IndexedShards)
    with pytest.raises(ValueError, match="streamed WebDataset sources need data.epoch_samples"):
        ImageTextDataModule(source="wds", train=urls, wds_access="stream")


def test_skip_counter_rate_limits(caplog) -> None:
    counter = SkipCounter("demo", first=3, every=5)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        for n in range(12):
            counter.record(f"file{n}.png", "broken")
    messages = [r.getMessage() for r in caplog.records if r.name == "zoo.data"]
    assert len(messages) == 5  # 3 one by one, then summaries at 5 and 10
    assert "file0.png" in messages[0] and "file2.png" in messages[2] and "every 5" in messages[2]
    assert "5 bad samples" in messages[3] and "10 bad samples" in messages[4]
    assert counter.total == 12 and counter.take_pending() == 12 and counter.pending == 0
