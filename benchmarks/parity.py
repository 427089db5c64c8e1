"""bf16-mixed accuracy parity: tiny SLIP zero-shot top-1 in bf16-mixed against fp32.

Each seed fits ``recipes/slip/tiny.yaml`` with ``python -m zoo fit`` in a fresh process,
unchanged except that logging, checkpoints, the progress bar and the linear probe are off
(they do not touch the training or the zero-shot result) and ``trainer.precision`` is set.
The zero-shot top-1 is read from the ``ZeroShotEval`` callback's printed summary.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import Section

ZS_LINE = re.compile(r"zero-shot top-1: ([0-9.]+)%")


def parity_config(
    recipe: str | Path, precision: str, root: Path, max_epochs: int | None = None
) -> Path:
    """The recipe with ``precision`` and only the zero-shot callback, written under ``root``
    (``max_epochs`` shortens the schedule: a smoke test, not the parity measurement)."""
    config = yaml.safe_load(Path(recipe).read_text())
    trainer = config.setdefault("trainer", {})
    if max_epochs:
        trainer["max_epochs"] = max_epochs
    trainer.update(
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root / precision),
        callbacks=[{"class_path": "zoo.eval.ZeroShotEval"}],
    )
    path = root / f"{precision}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_zero_shot(config: Path, seed: int) -> tuple[float, float]:
    """(zero-shot top-1 %, seconds) of one ``zoo fit`` run."""
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo",
            "fit",
            "--config",
            str(config),
            "--seed_everything",
            str(seed),
        ],
        capture_output=True,
        text=True,
    )
    found = ZS_LINE.findall(out.stdout)
    if out.returncode != 0 or not found:
        tail = (out.stdout + out.stderr)[-2000:]
        raise RuntimeError(f"zoo fit failed (exit {out.returncode}):\n{tail}")
    return float(found[-1]), time.perf_counter() - start


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def measure_parity(recipe: str, seeds: tuple[int, ...], max_epochs: int | None = None) -> Section:
    start = time.perf_counter()
    sec = Section("bf16 parity")
    acc: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
    secs: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {p: parity_config(recipe, p, Path(tmp), max_epochs) for p in acc}
        for seed in seeds:  # interleaved: fp32, bf16, fp32, bf16, …
            for precision, config in configs.items():
                top1, s = fit_zero_shot(config, seed)
                acc[precision].append(top1)
                secs[precision].append(s)
    stats = {p: _mean_std(v) for p, v in acc.items()}
    fit_s = {p: sum(v) / len(v) for p, v in secs.items()}
    delta = stats["bf16-mixed"][0] - stats["32-true"][0]
    # standard error of the difference of two means of n seeds each
    se = ((stats["bf16-mixed"][1] ** 2 + stats["32-true"][1] ** 2) / len(seeds)) ** 0.5
    what = f"{len(seeds)} seed(s)" + (f", {max_epochs} epochs (smoke test)" if max_epochs else "")
    for p, v in acc.items():
        runs = ", ".join(f"{x:.2f}" for x in v)
        mean, std = stats[p]
        sec.add(
            f"tiny SLIP zero-shot top-1, {p}",
            f"{mean:.2f} ± {std:.2f}%",
            f"seeds {list(seeds)}: {runs}; {fit_s[p]:.0f} s/fit",
        )
    verdict = "within" if abs(delta) <= 1.0 else "OUTSIDE"
    if len(seeds) < 2:
        resolvable = "; 1 seed: no estimate of the seed-to-seed spread"
    elif se > 0.5:
        resolvable = f"; s.e. {se:.1f} pts: seed noise this large hides a 1-pt gap"
    else:
        resolvable = f"; s.e. {se:.1f} pts"
    sec.add(
        "bf16 parity delta (bf16 − fp32)",
        f"{delta:+.2f} pts",
        f"{verdict} ±1.0 pt, {what}{resolvable}",
    )
    sec.summary = {
        "bf16_parity_delta": round(delta, 2),
        "bf16_parity_se": round(se, 2),
        "bf16_parity_seeds": len(seeds),
        "zs_top1_fp32": round(stats["32-true"][0], 2),
        "zs_top1_bf16": round(stats["bf16-mixed"][0], 2),
        "tiny_fit_s_fp32": round(fit_s["32-true"], 1),
        "tiny_fit_s_bf16": round(fit_s["bf16-mixed"], 1),
    }
    if max_epochs:
        sec.summary["bf16_parity_epochs"] = max_epochs
    sec.seconds = time.perf_counter() - start
    return sec
