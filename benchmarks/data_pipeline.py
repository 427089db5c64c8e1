"""Data pipeline throughput: the zoo's WebDataset (streamed, and read by index) and CSV readers with JPEG decode plus
SLIP's augmentations (1 CLIP view + 2 SimCLR views) and CLIP-BPE tokenisation, batched by
the zoo's DataLoader settings, at 0, 1 and 2 workers; compared with the step's demand.

The data are synthetic RGB JPEGs (smooth random content, quality 90) written once to a
temporary folder in both formats, so both readers decode the same bytes.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Section
from benchmarks.config import BenchConfig

SHARD = 64


def _jpeg(rng: np.random.Generator, px: int) -> bytes:
    low = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low, "RGB").resize((px, px), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, n: int, px: int) -> tuple[Path, str]:
    """``n`` JPEGs as ``train.csv`` + ``images/`` and as WebDataset shards; (table, url)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["image,caption,label"]
    with wds.ShardWriter(str(root / "train-%06d.tar"), maxcount=SHARD, verbose=0) as sink:
        for i in range(n):
            data, caption = _jpeg(rng, px), f"a photo of thing number {i % 10}"
            (root / "images" / f"{i:06d}.jpg").write_bytes(data)
            rows.append(f"images/{i:06d}.jpg,{caption},{i % 10}")
            sink.write({"__key__": f"{i:06d}", "jpg": data, "txt": caption, "cls": i % 10})
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    last = (n - 1) // SHARD
    return root / "train.csv", str(root / f"train-{{000000..{last:06d}}}.tar")


def _dataset(fmt: str, table: Path, url: str, cfg: BenchConfig):
    from zoo.data import ImageTextTable, TextTokenizer, build_transform, image_text_webdataset

    size = cfg.arch.img_size
    common = {
        "image_transform": build_transform("clip", size),
        "tokenizer": TextTokenizer("clip-bpe", cfg.arch.context_length),
        "view_transforms": [build_transform("ssl", size) for _ in range(2)],
    }
    if fmt == "csv":
        return ImageTextTable(table, **common)
    if fmt == "wds_indexed":
        from zoo.data.indexed_shards import IndexedShards

        return IndexedShards(url, **common)
    return image_text_webdataset(url, shuffle=0, **common)


def loader_rate(dataset, batch: int, workers: int) -> tuple[float, float]:
    """(steady images/s after the first batch, images/s including start-up) through the
    zoo's training DataLoader settings (``ZooDataModule._loader``)."""
    from zoo.datamodule import ZooDataModule

    loader = ZooDataModule(batch_size=batch, num_workers=workers)._loader(dataset, train=True)
    t0 = time.perf_counter()
    first = None
    n = 0
    for b in loader:
        n += len(b["image"])
        if first is None:
            first, n_first = time.perf_counter(), n
    end = time.perf_counter()
    steady = (n - n_first) / (end - first) if end > first else float("nan")
    return steady, n / (end - t0)


def measure_data_pipeline(cfg: BenchConfig, demand: dict[str, float]) -> Section:
    """``demand``: images/s the training step consumes, e.g. ``{"fp32": …, "bf16": …}``."""
    start = time.perf_counter()
    sec = Section("data pipeline")
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        table, url = write_dataset(Path(tmp), cfg.data_images, cfg.data_image_px)
        for fmt in ("wds", "wds_indexed", "csv"):
            for workers in cfg.data_workers:
                steady, cold = loader_rate(_dataset(fmt, table, url, cfg), cfg.data_batch, workers)
                best = max(best, steady)
                sec.add(
                    f"{fmt} reader, {workers} worker(s)",
                    f"{steady:.0f} img/s",
                    f"{cold:.0f} img/s incl. start-up",
                )
                sec.summary[f"data_{fmt}_w{workers}_img_s"] = round(steady, 1)
    px, size = cfg.data_image_px, cfg.arch.img_size
    for k, v in demand.items():
        sec.add(f"step demand ({k})", f"{v:.1f} img/s", f"batch / zoo {k} step time")
    if demand:
        need = max(demand.values())
        sec.add(
            "data_headroom",
            f"{best / need:.2f}",
            f"best reader / highest demand; {px}px JPEG → {size}px, 3 views, batch {cfg.data_batch}",
        )
        sec.summary["data_headroom"] = round(best / need, 2)
    sec.seconds = time.perf_counter() - start
    return sec
