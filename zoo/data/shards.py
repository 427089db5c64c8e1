"""WebDataset tar shards → the zoo's sample dicts (``webdataset`` pipeline stages).

Each sample's members become the record ``{"image": PIL, "caption": str, "label": int}``
(plus ``"source"``), which the builder (default
:class:`~zoo.data.builders.ImageTextBuilder`) turns into the sample.

Shards are split by node (``torch.distributed`` rank) and by DataLoader worker, so each
valid sample is read once per epoch across all processes. A bad member (undecodable or
missing image) is logged, counted and skipped; the next sample's ``"skipped"`` reports it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from zoo.data.builders import Builder, ImageTextBuilder
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    SkipCounter,
    check_max_pixels,
    decode_image,
    logger,
    parse_label,
)
from zoo.data.tokenizers import TextTokenizer


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand shard urls (``train-{000000..000009}.tar``) and check local files exist."""
    items = [urls] if isinstance(urls, str | Path) else list(urls)
    shards = [u for item in items for u in wds.shardlists.expand_urls(str(item))]
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    # Remote / piped urls are opened (and their errors handled) at iteration time.
    local = [
        Path(u.removeprefix("file:"))
        for u in shards
        if "://" not in u and not u.startswith("pipe:")
    ]
    missing = [str(p) for p in local if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"WebDataset shard(s) not found: {', '.join(missing[:5])}{more}")
    return shards


class _Shuffle:
    """Buffered shuffle whose RNG is drawn at iteration time from Python's ``random``, which
    torch / Lightning reseed per worker and epoch: reproducible, yet new order each epoch."""

    def __init__(self, bufsize: int, seed: int):
        self.bufsize, self.seed = bufsize, seed

    def __call__(self, src: Iterable) -> Iterator:
        rng = random.Random(self.seed * 2**64 + random.getrandbits(64))
        yield from wds.filters.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(src)


class _DecodeSamples:
    """Raw tar members → records → sample dicts; bad members (and records the builder
    rejects) are counted into the next sample."""

    def __init__(
        self,
        builder: Builder,
        counter: SkipCounter,
        image_keys: Sequence[str],
        caption_key: str,
        label_key: str | None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.builder, self.counter = builder, counter
        self.image_keys, self.caption_key, self.label_key = image_keys, caption_key, label_key
        self.max_pixels = check_max_pixels(max_pixels)
        self._warned_no_label = False

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for raw in src:
            source = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
            try:
                image = self._image(raw, source)
                label = self._label(raw, source)
            except BadSample as bad:
                self.counter.record(bad.source, bad.reason)
                continue
            except ValueError as exn:
                self.counter.record(source, f"bad label: {exn}")
                continue
            caption = raw.get(self.caption_key, b"").decode("utf-8", errors="replace")
            record = {"image": image, "caption": caption, "label": label, "source": source}
            try:
                sample = self.builder(record, skipped=self.counter.pending)
            except BadSample as bad:
                self.counter.record(bad.source, bad.reason)
                continue
            self.counter.take_pending()
            yield sample
        # Skips after the last valid sample of this worker are logged but in no batch.

    def _label(self, raw: dict, source: str) -> int:
        if not self.label_key:
            return -1
        if self.label_key not in raw and not self._warned_no_label:
            # Unknown labels are legal (-1), but a wrong key would silently drop them all.
            self._warned_no_label = True
            members = sorted(k for k in raw if not k.startswith("__"))
            logger.warning(
                "%s has no %r member (members: %s); its label is -1 (check label_key)",
                source,
                self.label_key,
                members,
            )
        return parse_label(raw.get(self.label_key))

    def _image(self, raw: dict, source: str) -> Image.Image:
        for key in self.image_keys:
            if key in raw:
                return decode_image(raw[key], f"{source}.{key}", self.max_pixels)
        raise BadSample(source, f"no image member among {list(self.image_keys)}")


def image_text_webdataset(
    urls: str | list[str],
    image_transform: Callable[[Image.Image], torch.Tensor] | None,
    tokenizer: TextTokenizer | None,
    view_transforms: Sequence[Callable[[Image.Image], torch.Tensor]] = (),
    shuffle: int = 0,
    image_keys: str = "jpg;jpeg;png;webp",
    caption_key: str = "txt",
    label_key: str | None = "cls",
    seed: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    builder: Builder | None = None,
) -> IterableDataset:
    """A ``webdataset.DataPipeline`` over image–text shards yielding the zoo sample dicts.

    ``shuffle`` > 0 shuffles each worker's shards and a ``shuffle``-sized sample buffer;
    0 reads in order. Members: image under the first of ``image_keys`` (``;``-separated),
    caption under ``caption_key``, integer label under ``label_key`` (-1 when absent).
    Images are decoded within ``max_pixels`` (:func:`~zoo.data.samples.decode_image`).
    ``builder``: the sample builder (default ``ImageTextBuilder(image_transform, tokenizer,
    view_transforms)``).
    """
    shards = expand_shards(urls)
    counter = SkipCounter(f"webdataset {urls if isinstance(urls, str) else shards[0] + ', …'}")
    decode = _DecodeSamples(
        builder or ImageTextBuilder(image_transform, tokenizer, view_transforms),
        counter,
        [k.strip() for k in image_keys.split(";") if k.strip()],
        caption_key,
        label_key,
        max_pixels,
    )
    stages: list = [wds.SimpleShardList(shards), wds.split_by_node, wds.split_by_worker]
    if shuffle > 0:
        stages.append(_Shuffle(len(shards), seed))
    stages.append(wds.tarfile_to_samples(handler=counter.handler))
    if shuffle > 0:
        stages.append(_Shuffle(shuffle, seed + 1))
    stages.append(decode)
    pipeline = wds.DataPipeline(*stages)
    pipeline.skips = counter  # per-process count, like SkipReplaceDataset.skips
    pipeline.shards = shards
    return pipeline
