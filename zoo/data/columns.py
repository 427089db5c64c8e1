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
from typing import Any, Literal

import numpy as np

from zoo.data.samples import SkipCounter, logger, parse_label

BadRows = Literal["error", "skip"]


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
        self.append_bytes(None if value is None else str(value).encode("utf-8"))

    def append_bytes(self, encoded: bytes | None) -> None:
        if encoded is not None:
            self.data += encoded
        self.ends.append(len(self.data))

    def build(self) -> PackedStrings:
        data = np.frombuffer(bytes(self.data), dtype=np.uint8)
        ends = np.frombuffer(self.ends, dtype=np.int64)
        return PackedStrings(data, np.concatenate([np.zeros(1, np.int64), ends]))


class NotUTF8Error(ValueError):
    """A table cell whose bytes are not valid UTF-8; names the file, line, row and column."""

    def __init__(self, path: Path, line: int, row: int, column: str, raw: bytes):
        self.path, self.line, self.row, self.column, self.raw = path, line, row, column, raw
        super().__init__(
            f"{path}:{line}: row {row} (1-based), column {column!r} is not valid UTF-8: "
            f"{_snippet(raw)}; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) "
            "or set bad_rows='skip' (recipes: data bad_rows: skip) to skip and count such rows"
        )

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} (row {self.row}, column {self.column!r})"


def _snippet(raw: bytes, width: int = 60) -> str:
    """``raw`` around its first invalid UTF-8 byte, as a bytes literal."""
    try:
        raw.decode("utf-8")
        start = 0
    except UnicodeDecodeError as exn:
        start = max(0, exn.start - width // 2)
    piece = raw[start : start + width]
    return ("…" if start else "") + repr(piece) + ("…" if start + width < len(raw) else "")


def find_non_utf8(path: Path) -> tuple[int, bytes] | None:
    """``(1-based line, its bytes)`` of the first line of ``path`` that is not valid UTF-8,
    or None (reads the whole file: for error messages only)."""
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n, line.rstrip(b"\r\n")
    return None


def describe_non_utf8(path: Path) -> str:
    """Where ``path`` is not valid UTF-8, as ``"<path>:<line>: <bytes>"`` (or the path)."""
    found = find_non_utf8(path)
    return f"{path}:{found[0]}: {_snippet(found[1])}" if found else str(path)


def _raw_bytes(text: str) -> bytes:
    """The file's bytes behind ``text`` decoded with ``surrogateescape`` (a lone surrogate
    from a JSON ``\\ud800`` escape, which has no bytes, is shown backslash-escaped)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


class _ColumnBuilder:
    """Appends one row at a time to packed string columns and an int64 label array."""

    def __init__(self, string_keys: Sequence[str], label_key: str | None, path: Path):
        self.columns = {k: _PackedBuilder() for k in string_keys}
        self.label_key, self.path, self.where = label_key, path, str(path)
        self.labels = array("q")

    def add(self, row: dict[str, Any], n: int, line: int) -> None:
        """Append row ``n`` (0-based) read from ``line`` (1-based) of the file; nothing is
        appended when it raises."""
        encoded = []
        for key in self.columns:
            value = row.get(key)
            try:  # text read with surrogateescape: bytes that were not UTF-8 fail here
                encoded.append(None if value is None else str(value).encode("utf-8"))
            except UnicodeEncodeError:
                raise NotUTF8Error(self.path, line, n + 1, key, _raw_bytes(str(value))) from None
        if self.label_key is None:
            label = -1
        else:
            try:
                label = parse_label(row.get(self.label_key))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{self.where}: row {n}: label {row.get(self.label_key)!r} is not an integer"
                ) from None
        for column, value in zip(self.columns.values(), encoded, strict=True):
            column.append_bytes(value)
        self.labels.append(label)

    def build(self) -> tuple[dict[str, PackedStrings], np.ndarray]:
        columns = {key: column.build() for key, column in self.columns.items()}
        return columns, np.frombuffer(self.labels, dtype=np.int64).copy()


def _iter_rows(path: Path) -> tuple[list[str] | None, Iterator[tuple[int, dict[str, Any]]]]:
    """``(columns or None when only known after reading, (line, row) pairs)`` of a
    CSV/TSV/JSONL file, one row at a time; ``line`` is 1-based (for a CSV row spanning
    lines, its last). Text is decoded as UTF-8 with ``surrogateescape``, so invalid bytes
    reach :class:`_ColumnBuilder`, which knows the row and column."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        f = path.open(newline="", encoding="utf-8", errors="surrogateescape")
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        fieldnames = list(reader.fieldnames or [])

        def csv_rows() -> Iterator[tuple[int, dict[str, Any]]]:
            with f:
                for row in reader:
                    yield reader.line_num, row

        return fieldnames, csv_rows()
    if suffix in (".jsonl", ".ndjson"):

        def json_rows() -> Iterator[tuple[int, dict[str, Any]]]:
            with path.open(encoding="utf-8", errors="surrogateescape") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as exn:
                        raise ValueError(f"{path}:{n}: invalid JSON ({exn})") from None

        return None, json_rows()
    raise ValueError(f"unsupported table format {path.suffix!r} for {path} (.csv, .tsv, .jsonl)")


def read_table_columns(
    path: Path,
    string_keys: Sequence[str],
    label_key: str | None,
    check_columns: Callable[[list[str]], None],
    bad_rows: BadRows = "error",
    skips: SkipCounter | None = None,
) -> tuple[dict[str, PackedStrings], np.ndarray]:
    """Stream a table into packed ``string_keys`` columns and parsed int64 labels (-1 when
    unknown). ``check_columns(columns)`` runs as soon as the columns are known: before any
    row for CSV/TSV, after the pass for JSONL (whose rows may each add columns).

    A row whose ``string_keys`` cells are not valid UTF-8 raises :class:`NotUTF8Error`
    (file, line, 1-based row, column) with ``bad_rows="error"``; with ``"skip"`` it is left
    out, logged and counted in ``skips`` (a :class:`~zoo.data.samples.SkipCounter`; one is
    made when None), and the total is logged at the end. Invalid bytes in other columns are
    never read, so never fail."""
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    fieldnames, rows = _iter_rows(path)
    if fieldnames is not None:
        check_columns(fieldnames)
    builder = _ColumnBuilder(string_keys, label_key, path)
    skips = skips if skips is not None else SkipCounter(f"{path} (rows)")
    skipped = 0
    seen: dict[str, None] = {}
    n = 0
    for line, row in rows:
        if fieldnames is None:
            seen.update(dict.fromkeys(row))
        try:
            builder.add(row, n, line)
        except NotUTF8Error as bad:
            if bad_rows == "error":
                raise
            skips.record(bad.where, "not valid UTF-8")
            skipped += 1
        n += 1
    if fieldnames is None:
        check_columns(list(seen))
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows whose text is not valid UTF-8 (bad_rows='skip')",
            path,
            skipped,
            n,
        )
    return builder.build()
