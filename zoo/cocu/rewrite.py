"""Run CoCu's curation over a dataset on disk and write the rewritten captions.

The embeddings come from any zoo CLIP (:class:`zoo.fewshot.clip_source.CLIPSource`: a
``zoo fit`` checkpoint, a model package, Hugging Face / OpenAI / open_clip weights). The
dataset's own images form the kNN index (the official default curates CC3M against a CC3M
index). Every image is an anchor; its caption field becomes
``caption \\n json(scored archive) \\n json(k-means archive)`` (:func:`~zoo.cocu.curation.rewrite_caption`).

- CSV / JSONL tables (:func:`curate_table`): a new table, every column kept, the caption
  column rewritten;
- WebDataset shards (:func:`curate_shards`, the official format): new shards in another
  folder (never edited in place), every member of a sample copied byte for byte except the
  caption member.

``python -m zoo curate`` is the command line (:func:`curate_command`). Two passes: the first
embeds the images (a progress bar and an images/s line), the second writes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoo.cocu.curation import (
    ConceptTable,
    CurationConfig,
    NeighbourIndex,
    build_gallery,
    curate,
    load_gallery,
    rewrite_caption,
)

log = logging.getLogger("zoo.cocu")


@dataclass
class Teacher:
    """The CLIP that embeds images and concept prompts: a dual encoder with its image
    transform and tokenizer (``device``: where it runs)."""

    encoder: Any
    transform: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    sha256: str
    device: str = "cpu"


def load_teacher(
    path: str, trust_pickle: bool = False, device: str = "cpu", format: str = "auto"
) -> Teacher:
    """A teacher from any CLIP source (``format`` as :class:`CLIPSource`; a ``.ckpt`` is a
    ``zoo fit`` checkpoint, read only with ``trust_pickle``)."""
    from zoo.data import TextTokenizer
    from zoo.fewshot.clip_source import CLIPSource, load_clip
    from zoo.preprocess import PreprocessSpec

    loaded = load_clip(CLIPSource(path=path, format=format, trust_pickle=trust_pickle))
    pre = loaded.preprocess or PreprocessSpec()
    encoder = loaded.encoder.eval().to(device)
    tokenizer = TextTokenizer(pre.tokenizer or "clip-bpe", encoder.context_length)
    return Teacher(encoder, pre.eval_transform(), tokenizer, loaded.sha256, device)


@torch.no_grad()
def embed_images(
    teacher: Teacher,
    images: Iterable[Any],
    total: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """L2-normalised image embeddings (N, D) float32 of PIL images (or paths), in batches,
    with a progress bar; logs the throughput (images/s)."""
    from PIL import Image
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    start, count = time.perf_counter(), 0

    def flush() -> None:
        x = torch.stack(batch).to(teacher.device)
        out.append(F.normalize(teacher.encoder.encode_image(x).float(), dim=-1).cpu().numpy())
        batch.clear()

    for item in tqdm(images, total=total, unit="img", desc="embed images", disable=not progress):
        image = Image.open(item) if isinstance(item, (str, Path)) else item
        batch.append(teacher.transform(image.convert("RGB")))
        count += 1
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    seconds = time.perf_counter() - start
    log.info(
        "embedded %d images in %.1f s (%.1f images/s)", count, seconds, count / max(seconds, 1e-9)
    )
    if not out:
        raise ValueError("no images to embed")
    return np.concatenate(out)


@torch.no_grad()
def embed_concepts(
    teacher: Teacher, names: Sequence[str], prompt: str = "a photo of a {}", batch_size: int = 256
) -> np.ndarray:
    """L2-normalised text embeddings (C, D) of ``prompt`` filled with each concept."""
    out = []
    for start in range(0, len(names), batch_size):
        tokens = teacher.tokenizer([prompt.format(n) for n in names[start : start + batch_size]])
        z = teacher.encoder.encode_text(torch.as_tensor(tokens).long().to(teacher.device))
        out.append(F.normalize(z.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def curate_captions(
    image_embeddings: np.ndarray,
    captions: Sequence[str],
    teacher: Teacher,
    gallery: Sequence[str],
    config: CurationConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """The rewritten caption field of every image: the dataset is both the anchors and the
    index (``gallery``: concept names, plurals already added, see
    :func:`~zoo.cocu.curation.build_gallery`). Logs the curation throughput."""
    config = config or CurationConfig()
    if len(captions) != len(image_embeddings):
        raise ValueError(f"{len(captions)} captions for {len(image_embeddings)} image embeddings")
    table = ConceptTable.from_captions(captions, gallery, config.max_n)
    concept_emb = embed_concepts(teacher, list(gallery), config.prompt)
    index = NeighbourIndex(image_embeddings, config.backend, config.block_size)
    start = time.perf_counter()
    out = [
        rewrite_caption(caption, scored, kmeans)
        for caption, (scored, kmeans) in zip(
            captions,
            curate(
                image_embeddings,
                index,
                table,
                concept_emb,
                config,
                anchor_ids=np.arange(len(captions)),
                progress=progress,
            ),
        )
    ]
    seconds = time.perf_counter() - start
    log.info(
        "curated %d images in %.1f s (%.1f images/s, kNN backend %s)",
        len(out),
        seconds,
        len(out) / max(seconds, 1e-9),
        index.backend,
    )
    return out


# --- tables --------------------------------------------------------------------------------


def read_table(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and column names of a CSV (header row) or JSONL table."""
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return rows, columns
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader), list(reader.fieldnames or [])


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write a CSV / JSONL table atomically (a temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    tmp.replace(path)


def curate_table(
    input: str | Path,
    output: str | Path,
    teacher: Teacher,
    gallery: Sequence[str],
    config: CurationConfig | None = None,
    image_key: str = "image",
    caption_key: str = "caption",
    image_root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Curate a CSV / JSONL table into ``output`` (same format, every column kept, the
    ``caption_key`` column rewritten). Image paths are relative to ``image_root`` (default:
    the table's folder)."""
    src, dst = Path(input).expanduser(), Path(output).expanduser()
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: write the curated table to a new file, not over its input")
    rows, columns = read_table(src)
    for key in (image_key, caption_key):
        if key not in columns:
            raise KeyError(f"{src}: no column {key!r} (columns: {columns})")
    root = Path(image_root).expanduser() if image_root else src.parent
    paths = [root / str(row[image_key]) for row in rows]
    emb = embed_images(teacher, paths, total=len(paths), progress=progress)
    captions = [str(row[caption_key]) for row in rows]
    rewritten = curate_captions(emb, captions, teacher, gallery, config, progress)
    for row, text in zip(rows, rewritten):
        row[caption_key] = text
    write_table(dst, rows, columns)
    return dst


# --- WebDataset shards -----------------------------------------------------------------------

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TEXT_EXTS = ("txt", "text")


def _shard_samples(urls: Sequence[str]) -> Iterable[dict[str, Any]]:
    import webdataset as wds

    return wds.WebDataset(list(urls), shardshuffle=False, empty_check=False)


def _member(sample: dict[str, Any], exts: Sequence[str], what: str) -> str:
    for ext in exts:
        if ext in sample:
            return ext
    raise KeyError(
        f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r} has no {what} "
        f"member ({'/'.join(exts)}); members: {sorted(k for k in sample if not k.startswith('__'))}"
    )


def curate_shards(
    inputs: Sequence[str],
    output_dir: str | Path,
    teacher: Teacher,
    gallery: Sequence[str],
    config: CurationConfig | None = None,
    prefix: str = "curated",
    maxcount: int = 10000,
    progress: bool = True,
) -> list[Path]:
    """Curate WebDataset shards (``inputs``: tar paths, brace patterns expanded) into new
    shards ``output_dir/<prefix>-%05d.tar`` of ``maxcount`` samples, as the official script
    writes them; returns the shard paths."""
    import braceexpand
    import webdataset as wds
    from PIL import Image

    urls = [u for pattern in inputs for u in braceexpand.braceexpand(str(pattern))]
    for url in urls:
        if not Path(url).is_file():
            raise FileNotFoundError(f"shard not found: {url}")
    out = Path(output_dir).expanduser()
    if any(Path(u).resolve().parent == out.resolve() for u in urls):
        raise ValueError(f"{out}: write the curated shards to a new folder, not next to the input")
    out.mkdir(parents=True, exist_ok=True)
    captions: list[str] = []

    def images() -> Iterable[Image.Image]:
        for sample in _shard_samples(urls):
            captions.append(sample[_member(sample, _TEXT_EXTS, "caption")].decode("utf-8"))
            yield Image.open(io.BytesIO(sample[_member(sample, _IMAGE_EXTS, "image")]))

    emb = embed_images(teacher, images(), progress=progress)
    rewritten = curate_captions(emb, captions, teacher, gallery, config, progress)
    pattern = str(out / f"{prefix}-%05d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for sample, text in zip(_shard_samples(urls), rewritten):
            record = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
            record[_member(sample, _TEXT_EXTS, "caption")] = text.encode("utf-8")
            sink.write(record)
    return sorted(out.glob(f"{prefix}-*.tar"))


# --- the command ------------------------------------------------------------------------------


def _local_paths(spec: str) -> list[str]:
    """The local files a dataset argument names (a WebDataset brace pattern expanded); none
    for URLs and ``pipe:`` sources, which are only read when curation streams them."""
    if "://" in spec or spec.startswith("pipe:"):
        return []
    if "{" in spec:
        from braceexpand import braceexpand

        return list(braceexpand(spec))
    return [spec]


def missing_curation_inputs(
    inputs: Sequence[str], teacher: str, gallery: str, image_root: str | None = None
) -> list[str]:
    """What ``zoo curate`` would fail on later, named up front: input tables or shards, the
    gallery, the image root and a teacher given as a file path (a bare model-package name
    is left to the loader)."""
    missing = [
        f"input {path}"
        for spec in inputs
        for path in _local_paths(spec)
        if not Path(path).expanduser().exists()
    ]
    if not Path(gallery).expanduser().is_file():
        missing.append(f"gallery {gallery}")
    if image_root and not Path(image_root).expanduser().is_dir():
        missing.append(f"image root {image_root}")
    path_like = "/" in teacher or teacher.endswith((".ckpt", ".pt", ".pth", ".bin", ".safetensors"))
    if path_like and not Path(teacher).expanduser().exists():
        missing.append(f"teacher {teacher}")
    return missing


def curate_command(argv: Sequence[str]) -> int:
    """``python -m zoo curate``: see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="zoo curate",
        description="CoCu concept curation: rewrite a dataset's captions as "
        "'caption \\n json(scored concepts) \\n json(k-means clusters)' into a new table or "
        "new WebDataset shards.",
    )
    parser.add_argument("input", nargs="+", help="a CSV / JSONL table, or WebDataset shards")
    parser.add_argument("--output", required=True, help="the new table, or the shard folder")
    parser.add_argument(
        "--teacher",
        required=True,
        help="the CLIP (a zoo fit .ckpt, a model "
        "package, a Hugging Face CLIP folder, OpenAI / open_clip weights)",
    )
    parser.add_argument("--teacher-format", default="auto")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow a pickled checkpoint (only one you made)"
    )
    parser.add_argument(
        "--gallery",
        required=True,
        help="concept names: CoCu's gallery.json, a JSON list or a text file",
    )
    parser.add_argument("--no-plurals", action="store_true", help="do not add plurals")
    parser.add_argument("--format", choices=["auto", "csv", "jsonl", "wds"], default="auto")
    parser.add_argument("--image-key", default="image")
    parser.add_argument("--caption-key", default="caption")
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--prefix", default="curated", help="output shard name prefix")
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per output shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    defaults = CurationConfig()
    for f in fields(CurationConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(getattr(defaults, f.name), bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(
                flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name)
            )
    args = parser.parse_args(list(argv))
    missing = missing_curation_inputs(args.input, args.teacher, args.gallery, args.image_root)
    if missing:  # before the teacher loads and the index is built: every missing path at once
        parser.error("not found: " + "; ".join(missing))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = CurationConfig(**{f.name: getattr(args, f.name) for f in fields(CurationConfig)})
    gallery = build_gallery(load_gallery(args.gallery), plurals=not args.no_plurals)
    teacher = load_teacher(args.teacher, args.trust_pickle, args.device, args.teacher_format)
    fmt = args.format
    if fmt == "auto":
        first = args.input[0]
        fmt = "wds" if ".tar" in first else ("jsonl" if first.endswith(".jsonl") else "csv")
    if fmt == "wds":
        shards = curate_shards(
            args.input, args.output, teacher, gallery, config, args.prefix, args.maxcount
        )
        print(f"wrote {len(shards)} shards to {args.output}")
    else:
        if len(args.input) != 1:
            raise SystemExit("zoo curate: give one table")
        path = curate_table(
            args.input[0],
            args.output,
            teacher,
            gallery,
            config,
            args.image_key,
            args.caption_key,
            args.image_root,
        )
        print(f"wrote {path}")
    return 0
