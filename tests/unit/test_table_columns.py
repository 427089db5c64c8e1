"""Packed table columns (zoo.data.columns): the same strings and labels as the table, held
in a few numpy buffers instead of one Python object per row."""

import csv
import gc
import json

import numpy as np
import pytest

from zoo.data.columns import PackedStrings, read_table_columns
from zoo.data.formats import ImageTextTable


def test_packed_strings_round_trip():
    values = ["a photo of a 7", "", None, "ünïcødé ✓ 数字", "x" * 1000]
    packed = PackedStrings.from_values(values)
    assert list(packed) == ["a photo of a 7", "", "", "ünïcødé ✓ 数字", "x" * 1000]
    assert packed[-2] == "ünïcødé ✓ 数字"
    with pytest.raises(IndexError):
        packed[5]
    text_bytes = sum(len((v or "").encode()) for v in values)
    assert packed.nbytes == text_bytes + 8 * (len(values) + 1)


def _write_csv(path, rows: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "title", "description", "label"])
        for i in range(rows):
            writer.writerow([f"img/{i:07d}.jpg", f"title {i}", f"a longer description {i}", i % 10])


def test_table_holds_no_per_row_python_objects(tmp_path):
    rows = 20_000
    _write_csv(tmp_path / "t.csv", rows)
    gc.collect()
    before = len(gc.get_objects())
    table = ImageTextTable(tmp_path / "t.csv", caption_keys=["title", "description"])
    gc.collect()
    assert len(gc.get_objects()) - before < 200  # independent of the 20k rows
    assert len(table) == rows
    assert table.images[12345] == "img/0012345.jpg"
    assert [c[7] for c in table.captions] == ["title 7", "a longer description 7"]
    assert table.labels.dtype == np.int64 and table.labels[:12].tolist() == [*range(10), 0, 1]


def test_jsonl_columns_known_after_the_pass_and_bad_labels_name_the_row(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [{"image": "a.png", "caption": "one", "label": 1}, {"image": "b.png", "label": ""}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    seen = []
    columns, labels = read_table_columns(path, ["image", "caption"], "label", seen.append)
    assert seen == [["image", "caption", "label"]]
    assert list(columns["caption"]) == ["one", ""] and labels.tolist() == [1, -1]

    path.write_text(json.dumps({"image": "a.png", "caption": "c", "label": "seven"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0: label 'seven' is not an integer"):
        read_table_columns(path, ["image", "caption"], "label", lambda columns: None)


def test_csv_missing_column_fails_before_reading_rows(tmp_path):
    _write_csv(tmp_path / "t.csv", 3)
    with pytest.raises(ValueError, match="column 'caption' not found"):
        ImageTextTable(tmp_path / "t.csv", caption_keys="caption")
