"""Helpers shared by tests that drive the real ``zoo`` command line in-process."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fail(args: list[str], capsys) -> str:
    """Run ``zoo ARGS``, expect a non-zero exit, return what it printed (stderr + stdout)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    return captured.err + captured.out


#: What each evaluation callback prints at the end of a fit (its summary line).
EVAL_LINES = {
    "ZeroShotEval": r"zero-shot top-1: \d+\.\d\d%",
    "LinearProbeEval": r"linear probe \(\w+\) top-1: \d+\.\d\d%",
    "KNNEval": r"kNN \(k=\d+",
    "RetrievalEval": r"retrieval R@",
    "QuestionProbeEval": r"question probes \(\w+\) top-1, fitted on \w+",
    "DetectionEval": r"box mAP: \d+\.\d\d%",
    "SegmentationEval": r"mask mAP: \d+\.\d\d%",
    "CaptionEval": r"BLEU-4: \d+\.\d\d, CIDEr-D: \d+\.\d\d",
    "GeoPriorEval": r"geo prior top-1: \d+\.\d\d% \(image only \d+\.\d\d%",
    "ZeroShotSegmentationEval": r"\w+ mIoU: \d+\.\d\d% \(\d+ classes \+ background",
}


def eval_lines(config: dict[str, Any]) -> dict[str, str]:
    """A recipe's evaluation callbacks → the regex of the line each prints; a named
    ``ZeroShotEval`` (few-shot recipes: ``name: fewshot``) prints ``<name> top-1: …``."""
    lines = {}
    for callback in config["trainer"].get("callbacks") or []:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name not in EVAL_LINES:
            continue
        label = (callback.get("init_args") or {}).get("name", "zeroshot")
        if name == "ZeroShotEval" and label != "zeroshot":
            lines[f"{name}({label})"] = rf"{re.escape(label)} top-1: \d+\.\d\d%"
        else:
            lines[name] = EVAL_LINES[name]
    return lines


def copy_project(dest: Path, extra: Sequence[str] = ()) -> None:
    """The files a clone has (tracked plus untracked-but-not-ignored: not runs/ or caches),
    without the released models, benchmarks and results, plus the ``extra`` folders (e.g.
    ``checkpoints/clip-vit-tiny-digits`` for a recipe that adapts it)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("checkpoints/", "benchmarks/", "results/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for folder in extra:
        shutil.copytree(ROOT / folder, dest / folder)
