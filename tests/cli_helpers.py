"""Helpers shared by tests that drive the real ``zoo`` command line in-process."""

from __future__ import annotations

import pytest

from zoo.cli import main


def fail(args: list[str], capsys) -> str:
    """Run ``zoo ARGS``, expect a non-zero exit, return what it printed (stderr + stdout)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    return captured.err + captured.out
