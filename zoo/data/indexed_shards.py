"""WebDataset shards read by index: a map-style dataset over local tar shards.

A tar file is a sequence of 512-byte headers, each followed by its member's bytes, so one
pass over the headers (``tarfile``, which seeks over the data) gives every member's offset
and size; a sample is then two or three ``seek`` + ``read`` calls. Grouping follows the
WebDataset convention: a member ``dir/key.ext`` belongs to sample ``dir/key`` (the key ends at
the first dot of the file name) under extension ``ext``.

Being map-style, the shards take the zoo's exact-resume path like a CSV table does: the
training order is a function of (seed, epoch) over *all* samples (a global shuffle, not a
buffer), each sample's augmentations are seeded by (seed, epoch, index), and a resumed run
skips the batches it had trained on. The streaming pipeline (:mod:`zoo.data.shards`) stays
for remote shards (``pipe:``, ``http://``), where random access is not possible.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from zoo.data.builders import Builder, ImageTextBuilder
from zoo.data.columns import PackedStrings
from zoo.data.samples import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    SkipReplaceDataset,
    check_max_pixels,
    decode_image,
    parse_label,
)
from zoo.data.shards import expand_shards

MISSING = -1


def is_local(urls: str | Sequence[str]) -> bool:
    """Whether every shard url is a local file path (random access possible)."""
    items = [urls] if isinstance(urls, str | Path) else list(urls)
    return all("://" not in str(u) and not str(u).startswith("pipe:") for u in items)


def _split_name(name: str) -> tuple[str, str]:
    """``"dir/key.ext.more"`` → ``("dir/key", "ext.more")`` (WebDataset's key convention)."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


class IndexedShards(SkipReplaceDataset):
    """Samples of local WebDataset shards, by index, in shard order.

    Members: the image under the first of ``image_keys`` present, the caption under
    ``caption_key`` (UTF-8), the integer label under ``label_key`` (-1 when absent). A
    sample without an image member or with an undecodable image is skipped, counted and
    replaced, as in :class:`~zoo.data.formats.ImageTextTable`. Images are decoded within
    ``max_pixels`` (:func:`~zoo.data.samples.decode_image`). ``read`` returns the record
    ``{"image", "caption", "label", "source"}``; ``builder`` makes the sample (default
    ``ImageTextBuilder(image_transform, tokenizer, view_transforms)``).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        image_transform=None,
        tokenizer=None,
        view_transforms: Sequence = (),
        image_keys: str = "jpg;jpeg;png;webp",
        caption_key: str = "txt",
        label_key: str | None = "cls",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        builder: Builder | None = None,
    ):
        self.max_pixels = check_max_pixels(max_pixels)
        self.shards = [s.removeprefix("file:") for s in expand_shards(urls)]
        super().__init__(
            f"webdataset {self.shards[0]}{', …' if len(self.shards) > 1 else ''}",
            builder or ImageTextBuilder(image_transform, tokenizer, view_transforms),
        )
        wanted = {
            "image": [k.strip() for k in image_keys.split(";") if k.strip()],
            "caption": [caption_key],
            "label": [label_key] if label_key else [],
        }
        indexed = [_cached_index(shard, wanted) for shard in self.shards]
        if not any(len(keys) for keys, _ in indexed):
            raise ValueError(f"no samples in the WebDataset shards {urls!r}")
        self.shard_of = np.concatenate(
            [np.full(len(keys), i, dtype=np.int32) for i, (keys, _) in enumerate(indexed)]
        )
        # spans[sample, field] = (offset, size) of the image / caption / label member
        self.spans = np.concatenate([spans for _, spans in indexed])
        self.keys = PackedStrings.from_values(k for keys, _ in indexed for k in keys)
        self._files: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}  # file handles stay in the process that opened them
        return state

    def _member(self, index: int, field: int) -> bytes | None:
        offset, size = (int(v) for v in self.spans[index, field])
        if offset == MISSING:
            return None
        if self._pid != os.getpid():  # forked DataLoader worker: never share file offsets
            self._files, self._pid = {}, os.getpid()
        shard = int(self.shard_of[index])
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        f.seek(offset)
        return f.read(size)

    def read(self, index: int) -> dict[str, Any]:
        source = f"{self.shards[int(self.shard_of[index])]}:{self.keys[index]}"
        image_bytes = self._member(index, 0)
        if image_bytes is None:
            raise BadSample(source, "no image member")
        image = decode_image(image_bytes, source, self.max_pixels)
        caption = (self._member(index, 1) or b"").decode("utf-8", errors="replace")
        label_bytes = self._member(index, 2)
        try:
            label = parse_label(label_bytes) if label_bytes is not None else -1
        except ValueError as exn:
            raise BadSample(source, f"bad label: {exn}") from None
        return {"image": image, "caption": caption, "label": label, "source": source}


def _cached_index(path: str, wanted: dict[str, list[str]]) -> tuple[list[str], np.ndarray]:
    """:func:`_index_shard`, cached in ``$VL_ZOO_CACHE/wds-index`` under a hash of the
    shard's path, size, mtime and the wanted members (a changed shard is indexed again).
    Indexing reads every header (~60k members/s from the page cache): minutes for CC3M,
    once."""
    from zoo.data.cache import atomic_write_bytes, cache_root

    stat = os.stat(path)
    ident = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, wanted])
    cached = cache_root() / "wds-index" / f"{hashlib.sha256(ident.encode()).hexdigest()}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as saved:
                return saved["keys"].tolist(), saved["spans"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: index again and overwrite it
    keys, spans = _index_shard(path, wanted)
    cached.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys, dtype=str), spans=spans)
    atomic_write_bytes(cached, buffer.getvalue())  # concurrent ranks never read a partial file
    return keys, spans


def _index_shard(path: str, wanted: dict[str, list[str]]) -> tuple[list[str], np.ndarray]:
    """The shard's sample keys in order and their ``(offset, size)`` spans, shape
    ``(samples, 3, 2)`` for image / caption / label (the image: the first of
    ``wanted["image"]`` present; ``MISSING`` offsets for absent members)."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    key, ext = _split_name(member.name)
                    samples.setdefault(key, {})[ext] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as exn:
        raise ValueError(f"cannot index WebDataset shard {path}: {exn}") from None
    spans = np.full((len(samples), 3, 2), MISSING, dtype=np.int64)
    for row, members in enumerate(samples.values()):
        for field, name in enumerate(("image", "caption", "label")):
            found = next((members[e] for e in wanted[name] if e in members), None)
            if found is not None:
                spans[row, field] = found
    return list(samples), spans
