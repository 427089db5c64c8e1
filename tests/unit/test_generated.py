"""zoo.data.generated.write_atomically: a generated folder appears complete or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.data.generated import write_atomically


def _fill(text: str = "done"):
    def fill(tmp: Path) -> str:
        (tmp / "data.txt").write_text("payload")
        return text

    return fill


def test_writes_content_and_marker_and_leaves_no_temp_folder(tmp_path):
    target = tmp_path / "copy"
    write_atomically(target, ".complete", _fill("params"))
    assert (target / "data.txt").read_text() == "payload"
    assert (target / ".complete").read_text() == "params"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_an_interrupted_copy_is_replaced(tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    (target / "half-written.txt").write_text("x")  # no marker: an interrupted writer
    write_atomically(target, ".complete", _fill())
    assert sorted(p.name for p in target.iterdir()) == [".complete", "data.txt"]


def test_a_failing_fill_leaves_nothing_behind(tmp_path):
    def broken(tmp: Path) -> str:
        (tmp / "data.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "copy", ".complete", broken)
    assert list(tmp_path.iterdir()) == []


def test_a_copy_finished_by_a_concurrent_writer_is_kept(tmp_path):
    target = tmp_path / "copy"

    def racing(tmp: Path) -> str:  # another process completes the copy while this one fills
        target.mkdir()
        (target / "data.txt").write_text("theirs")
        (target / ".complete").write_text("theirs")
        (tmp / "data.txt").write_text("mine")
        return "mine"

    write_atomically(target, ".complete", racing)
    assert (target / "data.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
