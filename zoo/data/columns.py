"""Table columns held without per-row Python objects.

A DataLoader worker is a forked copy of the training process. A list of 15 million ``str``
(YFCC15M's paths and captions) costs ~60 bytes of object header per string, and every worker
that reads a row writes that string's reference count, so the pages holding the list are
copied into each worker one by one until every worker owns a full copy (PyTorch issue
#13246). :class:`PackedStrings` keeps a column as one UTF-8 buffer plus an int64 offset array
(numpy), so its memory is the text's own size and workers share it untouched.
"""

from __future__ import annotations

import csv
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.samples import parse_label


class PackedStrings(Sequence[str]):
    """An immutable sequence of strings stored in one UTF-8 buffer (``None`` reads as "")."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        """``data``: uint8 UTF-8 bytes; ``offsets``: int64, string i is data[o[i]:o[i+1]]."""
        self._data, self._offsets = data, offsets

    @classmethod
    def from_values(cls, values: Iterable[Any]) -> PackedStrings:
        builder = _PackedBuilder()
        for value in values:
            builder.append(value)
        return builder.build()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._data[start:end].tobytes().decode("utf-8")

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._offsets.nbytes


class _PackedBuilder:
    def __init__(self) -> None:
        self.data, self.ends = bytearray(), array("q")

    def append(self, value: Any) -> None:
        if value is not None:
            self.data += str(value).encode("utf-8")
        self.ends.append(len(self.data))

    def build(self) -> PackedStrings:
        data = np.frombuffer(bytes(self.data), dtype=np.uint8)
        ends = np.frombuffer(self.ends, dtype=np.int64)
        return PackedStrings(data, np.concatenate([np.zeros(1, np.int64), ends]))


class _ColumnBuilder:
    """Appends one row at a time to packed string columns and an int64 label array."""

    def __init__(self, string_keys: Sequence[str], label_key: str | None, where: str):
        self.columns = {k: _PackedBuilder() for k in string_keys}
        self.label_key, self.where = label_key, where
        self.labels = array("q")

    def add(self, row: dict[str, Any], n: int) -> None:
        for key, column in self.columns.items():
            column.append(row.get(key))
        if self.label_key is None:
            self.labels.append(-1)
            return
        try:
            self.labels.append(parse_label(row.get(self.label_key)))
        except (TypeError, ValueError):
            raise ValueError(
                f"{self.where}: row {n}: label {row.get(self.label_key)!r} is not an integer"
            ) from None

    def build(self) -> tuple[dict[str, PackedStrings], np.ndarray]:
        columns = {key: column.build() for key, column in self.columns.items()}
        return columns, np.frombuffer(self.labels, dtype=np.int64).copy()


def _iter_rows(path: Path) -> tuple[list[str] | None, Iterator[dict[str, Any]]]:
    """``(columns or None when only known after reading, rows)`` of a CSV/TSV/JSONL file,
    one row at a time."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        f = path.open(newline="", encoding="utf-8")
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        fieldnames = list(reader.fieldnames or [])

        def csv_rows() -> Iterator[dict[str, Any]]:
            with f:
                yield from reader

        return fieldnames, csv_rows()
    if suffix in (".jsonl", ".ndjson"):

        def json_rows() -> Iterator[dict[str, Any]]:
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exn:
                        raise ValueError(f"{path}:{n}: invalid JSON ({exn})") from None

        return None, json_rows()
    raise ValueError(f"unsupported table format {path.suffix!r} for {path} (.csv, .tsv, .jsonl)")


def read_table_columns(
    path: Path,
    string_keys: Sequence[str],
    label_key: str | None,
    check_columns: Callable[[list[str]], None],
) -> tuple[dict[str, PackedStrings], np.ndarray]:
    """Stream a table into packed ``string_keys`` columns and parsed int64 labels (-1 when
    unknown). ``check_columns(columns)`` runs as soon as the columns are known: before any
    row for CSV/TSV, after the pass for JSONL (whose rows may each add columns)."""
    fieldnames, rows = _iter_rows(path)
    if fieldnames is not None:
        check_columns(fieldnames)
    builder = _ColumnBuilder(string_keys, label_key, str(path))
    seen: dict[str, None] = {}
    for n, row in enumerate(rows):
        if fieldnames is None:
            seen.update(dict.fromkeys(row))
        builder.add(row, n)
    if fieldnames is None:
        check_columns(list(seen))
    return builder.build()
