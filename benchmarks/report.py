"""The machine description, the results table, the ``summary:`` line and the JSON file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import Section

# Figures every summary line carries (``n/a`` when their section did not run).
SUMMARY_KEYS = (
    "overhead_vs_torch",
    "speed_vs_open_clip",
    "frac_fp32_peak",
    "bf16_speedup",
    "frac_bf16_peak",
    "bf16_parity_delta",
    "zoo_help_s",
    "import_zoo_s",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + (" (dirty tree)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine_section(command: str) -> Section:
    import torch

    sec = Section("machine")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    sec.add(
        "cpu", f"{_cpu_model()}, {os.cpu_count()} cores", f"torch threads {torch.get_num_threads()}"
    )
    if torch.cuda.is_available():
        sec.add("gpu", torch.cuda.get_device_name(0), f"CUDA {torch.version.cuda}")
    sec.add("software", f"torch {torch.__version__}", f"python {platform.python_version()}")
    sec.add("load average at start", load, "1, 5, 15 min; > 0.5 means other work shares the cores")
    sec.add("command", command, dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    sec.add("commit", git_commit())
    sec.summary = {"load_start": round(os.getloadavg()[0], 2)}
    return sec


def render_table(sections: list[Section]) -> str:
    """One Markdown table of every section's rows."""
    lines = ["| section | measurement | result | note |", "|---|---|---|---|"]
    for sec in sections:
        for row in sec.rows:
            cells = [sec.name, row.measurement, row.result, row.note]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def merged_summary(sections: list[Section]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for sec in sections:
        merged.update(sec.summary)
    return merged


def summary_line(sections: list[Section]) -> str:
    """``summary: key=value ...``: the required keys first, then every other figure."""
    merged = merged_summary(sections)
    keys = list(SUMMARY_KEYS) + [k for k in merged if k not in SUMMARY_KEYS]
    return "summary: " + " ".join(f"{k}={_fmt(merged.get(k, 'n/a'))}" for k in keys)


def write_json(path: str | Path, sections: list[Section], config: Any) -> None:
    data = {
        "summary": merged_summary(sections),
        "sections": [asdict(s) for s in sections],
        "config": asdict(config),
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
