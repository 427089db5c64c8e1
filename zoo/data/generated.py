"""Writing generated datasets safely: a folder appears complete or not at all.

Generated data (the embedded digits, the shifted digits, the CLEVR-like scenes) is written by
``prepare_data`` on one process while others may read or write the same cache. Each writer
fills a private temp folder next to the target, writes the marker file last, and renames the
folder into place; a concurrent writer that finished first wins, and an interrupted copy
(a folder without its marker) is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def write_atomically(folder: Path, marker: str, fill: Callable[[Path], str]) -> None:
    """Build ``folder``: ``fill(tmp)`` writes the content into an empty temp folder and
    returns the marker file's text; the marker ``folder/marker`` is written last, then the
    temp folder is renamed to ``folder``. A ``folder`` that exists without its marker (an
    interrupted copy) is removed first; one that another writer completed meanwhile is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        text = fill(tmp)
        (tmp / marker).write_text(text)
        if folder.exists() and not (folder / marker).is_file():
            shutil.rmtree(folder)  # an interrupted copy
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def locate_written(folder: Path, marker: str, params: object, what: str) -> Path:
    """``folder`` when :func:`write_atomically` completed it with ``params`` (the marker's
    JSON); ``FileNotFoundError`` when it is not written (yet), ``ValueError`` when it was
    written with other parameters. ``what`` names the data in the messages."""
    file = folder / marker
    if not file.is_file():
        raise FileNotFoundError(
            f"the {what} is not written at {folder}: prepare_data() writes it (the Trainer "
            "calls it; outside a Trainer call datamodule.prepare_data() first)"
        )
    written = json.loads(file.read_text())
    if written != params:
        raise ValueError(
            f"{folder} holds a {what} written with {written}, not {params}; use another root "
            "or delete that folder"
        )
    return folder


def dump_json(path: Path, obj: Mapping[str, Any] | list[Any]) -> None:
    """Write an annotation file as compact UTF-8 JSON (the generated COCO layouts' files)."""
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")


def coco_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE segmentations of (N, H, W) boolean masks (``pycocotools.mask.encode``),
    ``counts`` as a string so the JSON holds them as COCO's own files do."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), np.uint8))
    return [{"size": rle["size"], "counts": rle["counts"].decode()} for rle in rles]
