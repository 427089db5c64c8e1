"""Start-up: wall time of ``python -m zoo --help`` and ``python -c "import zoo"``
(fresh interpreters, median of several), and whether the help imports torch/Lightning."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.common import Section, interleave, median

HELP, IMPORT, BARE = "python -m zoo --help", 'python -c "import zoo"', 'python -c "pass"'
HEAVY_CHECK = (
    "import sys, contextlib, io\n"
    "from zoo.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main(['--help'])\n"
    "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
)


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def heavy_imports_of_help() -> list[str]:
    """Which of torch / lightning ``zoo --help`` imports (should be none)."""
    out = subprocess.run(
        [sys.executable, "-c", HEAVY_CHECK], check=True, capture_output=True, text=True
    )
    import ast

    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def measure_startup(repeats: int) -> Section:
    start = time.perf_counter()
    commands = {
        HELP: lambda: _python("-m", "zoo", "--help"),
        IMPORT: lambda: _python("-c", "import zoo"),
        BARE: lambda: _python("-c", "pass"),
    }
    times = {k: median(v) for k, v in interleave(commands, warmup=1, repeats=repeats).items()}
    heavy = heavy_imports_of_help()
    t0 = time.perf_counter()
    _python("-c", "import lightning")
    lightning_s = time.perf_counter() - t0
    sec = Section("start-up")
    sec.add(HELP, f"{times[HELP]:.3f} s", "target ≤ 1.0 s")
    sec.add(IMPORT, f"{times[IMPORT]:.3f} s")
    sec.add(BARE, f"{times[BARE]:.3f} s", "the interpreter alone, for scale")
    sec.add('python -c "import lightning"', f"{lightning_s:.2f} s", "once; what `zoo fit` pays")
    sec.add("modules --help imports", ", ".join(heavy) or "none", "torch / lightning must stay out")
    sec.summary = {
        "zoo_help_s": round(times[HELP], 3),
        "import_zoo_s": round(times[IMPORT], 3),
        "help_imports_torch": bool(heavy),
        "import_lightning_s": round(lightning_s, 2),
    }
    sec.seconds = time.perf_counter() - start
    return sec
