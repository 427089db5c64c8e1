"""Run ``python -m zoo fit`` on the tiny SLIP recipe in a subprocess with a given world size
and strategy, recording losses, optimiser groups, evaluation results and final weights
(``loss_history.LossHistory``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def run_zoo(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def fit_tiny_slip(
    tmp_path: Path,
    name: str,
    world: int,
    strategy: str,
    epochs: int,
    overrides: list[str] = (),
) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """``(record, final state dict, run directory)``; the global batch is 256 for any world
    size, SLIP's CLIP term gathers with gradient (the exact full-batch gradient)."""
    out = tmp_path / name
    history = out / "history.json"
    run_zoo(
        [
            "fit",
            "--config",
            str(ROOT / "recipes/slip/tiny.yaml"),
            *overrides,  # first: callbacks added here run before LossHistory reads metrics
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.devices",
            str(world),
            "--trainer.strategy",
            strategy,
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.callbacks+=tests.distributed.loss_history.LossHistory",
            f"--trainer.callbacks.path={history}",
            "--model.init_args.clip_gather",
            "with_grad",
            "--data.init_args.batch_size",
            str(256 // world),
            "--data.init_args.digits.cache_dir",
            str(tmp_path / "digits"),
        ]
    )
    record = json.loads(history.read_text())
    assert record["world_size"] == world
    return record, torch.load(history.with_suffix(".pt")), out
