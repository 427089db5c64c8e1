"""The dataset side of the sample contract, shared by every kind of data.

A reader's ``read(index)`` returns a raw **record**, a dict of named fields (e.g.
``{"image": PIL, "caption": str, "label": int}``, or ``{"image": PIL, "boxes": ...,
"words": [...]}``); a **builder** (:mod:`zoo.data.builders`) turns the record into the
sample dict (transforms, tokenizer) and declares how each field is batched
(:mod:`zoo.data.collate`). Image–text samples are ``{"image": (3, H, W) float, "text": (L,)
long, "caption": str, "label": int, "skipped": int}`` plus ``"views": [(3, H, W), ...]``
when view transforms are given (SLIP: image, caption tokens, aug1, aug2).

Undecodable or missing images never stop training and are never dropped silently: they
are logged (logger ``zoo.data``, rate-limited), counted per dataset, and reported in the
``"skipped"`` field of the sample that replaced them, whatever the builder.

Training randomness is a function of (seed, epoch, index) only: the training sampler
(:class:`zoo.data.resumable.EpochSampler`) hands out :class:`SampleKey` indices, and map-style
datasets draw each sample's augmentations and caption choice from RNGs seeded by that key,
whichever worker process reads it. That makes a resumed run see exactly the samples an
uninterrupted one would (see :mod:`zoo.data.resumable`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from zoo.data.builders import Builder

logger = logging.getLogger("zoo.data")


class BadSample(Exception):
    """An image that cannot be read; ``source`` names the file (or shard member)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class SkipCounter:
    """Counts bad samples and logs them: the first ``first`` one by one, then a summary
    every ``every`` skips, so a broken dataset cannot flood the log.

    ``pending`` holds skips not yet reported in a sample (streaming formats). Counts are
    per process: each DataLoader worker has its own copy.
    """

    def __init__(self, name: str, first: int = 10, every: int = 1000):
        self.name, self.first, self.every = name, first, every
        self.total = 0
        self.pending = 0

    def record(self, source: str, reason: str) -> None:
        self.total += 1
        self.pending += 1
        if self.total <= self.first:
            more = (
                f"; later skips are summarised every {self.every}"
                if self.total == self.first
                else ""
            )
            logger.warning("%s: skipped bad sample %s (%s)%s", self.name, source, reason, more)
        elif self.total % self.every == 0:
            logger.warning(
                "%s: %d bad samples skipped so far (latest %s: %s)",
                self.name,
                self.total,
                source,
                reason,
            )

    def take_pending(self) -> int:
        n, self.pending = self.pending, 0
        return n

    def handler(self, exn: BaseException) -> bool:
        """A webdataset exception handler: log, count, continue."""
        where = next((a for a in reversed(exn.args) if isinstance(a, str) and a), self.name)
        self.record(where, f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}")
        return True


class SampleKey(int):
    """A dataset index that also carries the sampler's ``seed`` and ``epoch``.

    It is an ``int`` (any dataset can index with it), so a dataset that knows it can derive
    the sample's randomness from the key alone: no epoch has to be propagated into worker
    processes (persistent or not), and no RNG state has to be checkpointed.
    """

    seed: int
    epoch: int

    def __new__(cls, index: int, seed: int, epoch: int) -> SampleKey:
        key = super().__new__(cls, index)
        key.seed, key.epoch = int(seed), int(epoch)
        return key

    def __reduce__(self) -> tuple:  # int subclasses would otherwise lose the attributes
        return (SampleKey, (int(self), self.seed, self.epoch))

    def __repr__(self) -> str:
        return f"SampleKey({int(self)}, seed={self.seed}, epoch={self.epoch})"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample: neighbouring (seed, epoch, index) triples
    give unrelated streams (a plain sum would make epoch e+1 replay epoch e shifted)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator, ``random`` and ``numpy.random`` seeded by
    ``seed``; the global states are restored afterwards (so the main process's RNG, e.g.
    dropout in ``training_step`` with ``num_workers=0``, is never disturbed)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


#: Default pixel budget of :func:`decode_image` (and of every reader's ``max_pixels``):
#: 64 MiB-pixels, e.g. 8192 x 8192. It decodes every common camera sensor (up to ~61 MP) at
#: full size, keeps one decoded RGB image under 192 MiB in a DataLoader worker, and lies
#: below Pillow's own warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``, ~89.5 MP), so the
#: budget, not Pillow, decides what happens to a large image.
DEFAULT_MAX_PIXELS = 64 * 2**20


def check_max_pixels(max_pixels: int | None) -> int | None:
    """``max_pixels`` if it is a usable pixel budget (an int >= 1, or None for no budget)."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(f"max_pixels must be an integer >= 1 or None, got {max_pixels!r}")
    return max_pixels


def _fit_pixel_budget(img: Image.Image, source: str, max_pixels: int) -> None:
    """Make the lazily opened ``img`` decode within ``max_pixels``, before any pixel data is
    read: a JPEG over budget is switched to reduced-size decoding (libjpeg's DCT scaling by
    1/2, 1/4 or 1/8: the smallest reduction that fits); any other image over budget, or a
    JPEG still over it at 1/8, raises :class:`BadSample`."""
    from PIL import JpegImagePlugin

    width, height = img.size
    if width * height <= max_pixels:
        return
    if isinstance(img, JpegImagePlugin.JpegImageFile):  # also MPO (camera JPEGs)
        scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= max_pixels), None)
        # draft() picks the largest of 1/2, 1/4, 1/8 whose result is at least the requested
        # size; asking for (width // s, height // s) gives exactly 1/s.
        request = (max(1, width // scale), max(1, height // scale)) if scale else None
        if request and img.draft(img.mode, request) and img.size[0] * img.size[1] <= max_pixels:
            return
    img.close()
    raise BadSample(
        source,
        f"{width}x{height} = {width * height} pixels exceed the budget of {max_pixels} "
        f"(max_pixels; JPEGs are decoded at up to 1/8 size to fit, other formats are skipped)",
    )


def decode_image(
    data: bytes | str | Path,
    source: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Fully decode an image from bytes or a file; any failure becomes :class:`BadSample`.

    ``max_pixels`` bounds the decoded size (None: no budget). The header is read first
    (``Image.open`` is lazy): a JPEG with more pixels is decoded at 1/2, 1/4 or 1/8 size
    (the largest that fits, same aspect ratio up to rounding), any other format over the
    budget is a :class:`BadSample` (skipped and counted), so one huge image never costs a
    worker gigabytes. With a budget, Pillow's ``DecompressionBombWarning`` is silenced (the
    budget is the check). Pillow's hard limit stays: an image over
    ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (~179 MP) is refused when its header is read, before
    the budget can scale it, and becomes a :class:`BadSample` for any ``max_pixels``; raise
    or clear ``PIL.Image.MAX_IMAGE_PIXELS`` to read such images at reduced size.
    """
    import warnings

    source = source or (str(data) if not isinstance(data, bytes) else "<bytes>")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if max_pixels is not None:
            _fit_pixel_budget(img, source, max_pixels)
        img.load()  # PIL decodes lazily; force it so truncated files fail here, not later
    except BadSample:
        raise
    except FileNotFoundError:
        raise BadSample(source, "file not found") from None
    except Image.DecompressionBombError as exn:
        raise BadSample(
            source, f"{exn} (Pillow's PIL.Image.MAX_IMAGE_PIXELS; see zoo.data.decode_image)"
        ) from None
    except Exception as exn:  # PIL raises OSError, ValueError, SyntaxError…
        raise BadSample(source, f"{type(exn).__name__}: {exn}") from None
    return img


def pick_caption(values: Sequence[Any]) -> str:
    """One caption among the non-empty ``values`` at random (SLIP YFCC15M: title or
    description), drawn from Python's ``random``: seeded per sample for training keys (see
    :func:`seeded_rng`), else as torch/Lightning seed it per DataLoader worker."""
    texts = [str(v) for v in values if v is not None and str(v).strip()]
    if not texts:
        return ""
    return texts[0] if len(texts) == 1 else random.choice(texts)


def parse_label(value: Any) -> int:
    """An integer label, or -1 when unknown (empty, None, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return -1
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return -1
    return int(value)


#: Key of the marker an evaluation dataset returns for a bad sample (see ``on_bad``).
DROPPED = "dropped"


#: The fields of a legacy ``read`` that returned ``(image, caption, label)``.
_LEGACY_RECORD = ("image", "caption", "label")


def as_record(value: Mapping[str, Any] | tuple) -> dict[str, Any]:
    """``read``'s result as a record dict; an ``(image, caption, label)`` tuple (the
    contract before builders) is named, so readers written against it keep working."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple) and len(value) == len(_LEGACY_RECORD):
        return dict(zip(_LEGACY_RECORD, value))
    raise TypeError(f"read() must return a record dict, got {type(value).__name__}")


class SkipReplaceDataset(Dataset):
    """Map-style base: a bad index is replaced by the next readable one (wrapping around),
    so batches keep their size (``all_gather`` under DDP needs equal shapes).

    Subclasses implement ``__len__`` and ``read(index) -> record`` (a dict of raw fields,
    e.g. ``{"image": PIL, "caption": str, "label": int}``), raising :class:`BadSample` for
    unreadable data; ``builder(record, skipped=...)`` makes the sample, and may raise
    :class:`BadSample` too (a malformed record: skipped and counted the same way). A
    sample's ``"skipped"`` is 1 when its own index was bad, so over one pass the
    ``"skipped"`` sum equals the number of bad records (bad neighbours tried on the way are
    logged, and counted when their own index comes).

    Indexed with a :class:`SampleKey`, the read, augmentations and caption choice run under
    :func:`seeded_rng` of ``sample_seed(key.seed, key.epoch, index)``: the sample is the same
    in any worker, after any restart. Plain ``int`` indices use the ambient RNG, as before.
    None of this depends on the kind of record or builder.
    """

    #: ``"replace"``: a bad index is replaced by the next readable one (training, so batch
    #: shapes stay equal across ranks); ``"drop"``: it yields a :data:`DROPPED` marker that
    #: :func:`zoo.data.collate_samples` removes and counts (evaluation, so a probe fitted on
    #: N images never includes stand-ins).
    on_bad: Literal["replace", "drop"] = "replace"

    def __init__(self, name: str, builder: Builder):
        self.name = name
        self.builder = builder
        self.skips = SkipCounter(name)

    @property
    def skipped(self) -> int:
        """Bad reads seen by this process (each worker counts its own)."""
        return self.skips.total

    def collator(self) -> Any:
        """The ``collate_fn`` for this dataset's samples (its builder's fields)."""
        return self.builder.collator()

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} of length {n}")
        if isinstance(index, SampleKey):
            with seeded_rng(sample_seed(index.seed, index.epoch, int(index) % n)):
                return self._read_or_replace(int(index), n)
        return self._read_or_replace(int(index), n)

    def _build(self, index: int, skipped: int) -> dict:
        return self.builder(as_record(self.read(index)), skipped=skipped)

    def _read_or_replace(self, index: int, n: int) -> dict:
        if self.on_bad == "drop":
            try:
                return self._build(index, 0)
            except BadSample as bad:
                self.skips.record(bad.source, bad.reason)
                return {DROPPED: bad.source}
        for step in range(n):
            j = (index + step) % n
            try:
                return self._build(j, int(step > 0))
            except BadSample as bad:
                self.skips.record(bad.source, bad.reason)
        raise RuntimeError(f"{self.name}: none of its {n} samples can be read; see the warnings")


def __getattr__(name: str) -> Any:
    # SampleBuilder lived here before the builders had a module of their own.
    if name == "SampleBuilder":
        from zoo.data.builders import SampleBuilder

        return SampleBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
