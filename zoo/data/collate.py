"""Batching of sample dicts: each field batched as its :class:`FieldSpec` says.

A builder (:mod:`zoo.data.builders`) declares its fields; :class:`Collator` turns a list of
its samples into a batch: fixed-shape tensors are stacked, variable-length ones (boxes, OCR
tokens, conversations) padded to the batch maximum with a boolean mask, strings and lists
kept as lists. A datamodule uses ``builder.collator()`` as its ``collate_fn``;
:func:`collate_samples` is the default, and batches image–text samples exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from zoo.data.samples import DROPPED

FieldKind = Literal["stack", "pad", "scalar", "list", "views", "count"]


@dataclass(frozen=True)
class FieldSpec:
    """How one field of a sample is batched.

    - ``"stack"``: equal-shape tensors → one (B, ...) tensor;
    - ``"pad"``: tensors (N_i, ...) of varying N_i → (B, max N_i, ...) filled with
      ``pad_value``; when ``mask`` names a key, that key gets a (B, max N_i) boolean tensor,
      True on real entries;
    - ``"scalar"``: Python numbers → a (B,) tensor of ``dtype``; a sample without the field
      counts as ``default``;
    - ``"list"``: kept as a list (strings, word lists, PIL images);
    - ``"views"``: a list of K tensors per sample → a list of K stacked (B, ...) tensors;
    - ``"count"``: integers summed to a 0-dim long tensor, present in every batch (the
      ``skipped`` count of replaced bad files; 0 when no sample has it).
    """

    kind: FieldKind
    pad_value: float = 0
    mask: str | None = None
    dtype: torch.dtype = torch.long
    default: Any = -1

    def __post_init__(self) -> None:
        if self.kind not in ("stack", "pad", "scalar", "list", "views", "count"):
            raise ValueError(f"unknown field kind {self.kind!r}")
        if self.mask is not None and self.kind != "pad":
            raise ValueError(f"only 'pad' fields have a mask, got {self.kind!r} with mask")


def stacked() -> FieldSpec:
    return FieldSpec("stack")


def padded(pad_value: float = 0, mask: str | None = None) -> FieldSpec:
    return FieldSpec("pad", pad_value=pad_value, mask=mask)


def scalar(dtype: torch.dtype = torch.long, default: Any = -1) -> FieldSpec:
    return FieldSpec("scalar", dtype=dtype, default=default)


LIST = FieldSpec("list")
VIEWS = FieldSpec("views")
COUNT = FieldSpec("count")


def pad_sequences(
    tensors: Sequence[torch.Tensor], pad_value: float = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_i, ...) tensors → ``(padded (B, max N_i, ...), mask (B, max N_i) bool)``, right
    padded; trailing dimensions and dtypes must agree."""
    trailing = {tuple(t.shape[1:]) for t in tensors}
    if len(trailing) > 1 or any(t.dim() == 0 for t in tensors):
        raise ValueError(
            f"padded fields need tensors (N, ...) with equal trailing dimensions, got shapes "
            f"{[tuple(t.shape) for t in tensors]}"
        )
    longest = max(t.shape[0] for t in tensors)
    first = tensors[0]
    out = first.new_full((len(tensors), longest, *first.shape[1:]), pad_value)
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    for row, t in enumerate(tensors):
        out[row, : t.shape[0]] = t
        mask[row, : t.shape[0]] = True
    return out, mask


class Collator:
    """``collate_fn`` built from a builder's ``fields`` (name → :class:`FieldSpec`).

    Fields present in the first sample are batched by their spec, ``"count"`` fields in
    every batch; keys without a spec are kept as lists. Evaluation datasets drop bad
    samples instead of replacing them: their markers (``{"dropped": source}``) are removed
    and counted in ``dropped`` (0-dim long, only when non-zero); a batch whose samples were
    all dropped holds only ``dropped``. Picklable (DataLoader workers).
    """

    def __init__(self, fields: Mapping[str, FieldSpec]):
        self.fields = dict(fields)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("collate got an empty list of samples")
        kept = [s for s in samples if DROPPED not in s]
        dropped = torch.tensor(len(samples) - len(kept), dtype=torch.long)
        if not kept:
            return {DROPPED: dropped}
        batch: dict[str, Any] = {}
        for key in kept[0]:
            spec = self.fields.get(key, LIST)
            if spec.kind == "count":
                continue
            self._field(batch, key, spec, kept)
        for key, spec in self.fields.items():
            if spec.kind == "count":
                total = sum(int(s.get(key, 0)) for s in kept)
                batch[key] = torch.tensor(total, dtype=torch.long)
        if dropped:
            batch[DROPPED] = dropped
        return batch

    @staticmethod
    def _field(batch: dict[str, Any], key: str, spec: FieldSpec, samples: list[dict]) -> None:
        if spec.kind == "stack":
            batch[key] = torch.stack([s[key] for s in samples])
        elif spec.kind == "pad":
            values, mask = pad_sequences([s[key] for s in samples], spec.pad_value)
            batch[key] = values
            if spec.mask is not None:
                batch[spec.mask] = mask
        elif spec.kind == "scalar":
            cast = float if spec.dtype.is_floating_point else int
            values = [cast(s.get(key, spec.default)) for s in samples]
            batch[key] = torch.tensor(values, dtype=spec.dtype)
        elif spec.kind == "views":
            n_views = len(samples[0][key])
            batch[key] = [torch.stack([s[key][k] for s in samples]) for k in range(n_views)]
        else:
            batch[key] = [s[key] for s in samples]

    def __repr__(self) -> str:
        return f"Collator({sorted(self.fields)})"


#: The fields every builder of :mod:`zoo.data.builders` may produce, batched the way its
#: own ``fields`` say; the default ``collate_fn`` when a datamodule sets none.
DEFAULT_FIELDS: dict[str, FieldSpec] = {
    "image": stacked(),
    "text": stacked(),
    "caption": LIST,
    "label": scalar(),
    "skipped": COUNT,
    "views": VIEWS,
    "mask": stacked(),
    "boxes": padded(0.0, mask="boxes_mask"),
    "words": LIST,
    "token_boxes": padded(0),
    "input_ids": padded(0),
    "labels": padded(-100),
    "attention_mask": padded(0),
}

_DEFAULT = Collator(DEFAULT_FIELDS)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts with :data:`DEFAULT_FIELDS`.

    Image–text samples give ``image`` (B, 3, H, W), ``text`` (B, L), ``label`` (B,) long,
    ``views`` a list with one (B, 3, H, W) tensor per view, ``caption`` a list of str, and
    ``skipped`` the batch's total of replaced bad files as a 0-dim long tensor (log it, sum
    it across ranks). Other keys are kept as lists; dropped markers are removed and counted
    in ``dropped`` (see :class:`Collator`).
    """
    return _DEFAULT(samples)
