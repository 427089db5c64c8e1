"""Memory of a large image–text table (YFCC15M-style CSV: path, title, description, label):
the zoo's packed columns (:mod:`zoo.data.columns`) against the same table held as Python
lists of ``str`` (what ``ImageTextTable`` did before), in the process and in a forked
DataLoader-style worker that reads every row.

- load: seconds to read the CSV into the structure;
- held: bytes the structure keeps alive (``tracemalloc``, after loading);
- worker copy: the growth of a forked child's private dirty memory
  (``/proc/self/smaps_rollup``) after it has read every row once. Python objects get their
  reference counts written on every access, so the child copies their pages; numpy buffers
  are only read.
"""

from __future__ import annotations

import csv
import gc
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Section
from benchmarks.config import BenchConfig


def write_table(path: Path, rows: int) -> int:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "title", "description", "label"])
        for i in range(rows):
            writer.writerow(
                [
                    f"yfcc/{i % 1000:03d}/{i:09d}.jpg",
                    f"photo {i} from a trip",
                    f"a longer user description of photo number {i}, taken on a sunny day",
                    i % 1000,
                ]
            )
    return path.stat().st_size


def _as_lists(path: Path) -> Any:
    """The previous formulation: one str per path, one tuple of str per row, list of int."""
    from zoo.data.samples import parse_label

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    images = [str(r["image"]) for r in rows]
    captions = [(r["title"], r["description"]) for r in rows]
    labels = [parse_label(r["label"]) for r in rows]
    return images, captions, labels


def _packed(path: Path) -> Any:
    from zoo.data.formats import ImageTextTable

    return ImageTextTable(path, caption_keys=["title", "description"])


def _read_all_lists(held: Any) -> None:
    images, captions, labels = held
    for i in range(len(images)):
        images[i], captions[i], labels[i]


def _read_all_packed(table: Any) -> None:
    for i in range(len(table.images)):
        table.images[i], [c[i] for c in table.captions], table.labels[i]


def _private_dirty_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _worker_copy_mib(held: Any, read_all: Callable[[Any], None]) -> float:
    """Fork, read every row in the child, report the child's private-dirty growth."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure and exit without running the parent's cleanup
        os.close(read_fd)
        before = _private_dirty_kib()
        read_all(held)
        grown = _private_dirty_kib() - before
        os.write(write_fd, str(grown).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        grown_kib = int(r.read() or "0")
    os.waitpid(pid, 0)
    return grown_kib / 1024


def _measure(path: Path, load: Callable[[Path], Any], read_all) -> tuple[float, float, float]:
    """(load seconds, held MiB, worker copy MiB); timed without tracemalloc, which slows
    allocation-heavy code several-fold."""
    gc.collect()
    t0 = time.perf_counter()
    held = load(path)
    seconds = time.perf_counter() - t0
    copy = _worker_copy_mib(held, read_all)
    del held
    gc.collect()
    tracemalloc.start()
    held = load(path)
    gc.collect()
    held_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    gc.collect()
    return seconds, held_bytes / 2**20, copy


def measure_table_memory(cfg: BenchConfig) -> Section:
    start = time.perf_counter()
    rows = cfg.table_rows
    sec = Section("table memory")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yfcc_like.csv"
        size = write_table(path, rows)
        import zoo.data.formats  # noqa: F401  (imports are not the table's cost)

        packed = _measure(path, _packed, _read_all_packed)
        lists = _measure(path, _as_lists, _read_all_lists)
    mib = size / 2**20
    sec.add("table", f"{rows:,} rows, {mib:.0f} MiB CSV", "path, title, description, label")
    for name, (seconds, held, copy) in (("packed columns (zoo)", packed), ("lists of str", lists)):
        sec.add(
            f"{name}: load / held / worker copy",
            f"{seconds:.1f} s / {held:.0f} MiB / {copy:.0f} MiB",
            "held = live bytes after loading; worker copy = a forked reader's private growth",
        )
    sec.add(
        "packed / lists held memory",
        f"{packed[1] / lists[1]:.3f}",
        f"per worker: {packed[2]:.0f} vs {lists[2]:.0f} MiB copied",
    )
    sec.summary = {
        "table_rows": rows,
        "table_held_mib_packed": round(packed[1], 1),
        "table_held_mib_lists": round(lists[1], 1),
        "table_worker_copy_mib_packed": round(packed[2], 1),
        "table_worker_copy_mib_lists": round(lists[2], 1),
        "table_load_s_packed": round(packed[0], 2),
        "table_load_s_lists": round(lists[0], 2),
    }
    sec.seconds = time.perf_counter() - start
    return sec
