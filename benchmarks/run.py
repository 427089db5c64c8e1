"""``python -m benchmarks.run [--quick] [--json OUT] [--gpu] [--compile] [--only A,B]``.

Runs the sections in order, prints one Markdown table and, as the last line,
``summary: key=value ...``. A section that fails is reported in the table and the others
still run. ``--quick`` finishes in under 6 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from benchmarks.common import Section
from benchmarks.config import BenchConfig, full, gpu, quick
from benchmarks.report import machine_section, render_table, summary_line, write_json

SECTIONS = (
    "startup",
    "ceiling",
    "train",
    "zeroshot",
    "loss",
    "data",
    "table",
    "cnn",
    "parity",
)
GPU_SECTIONS = ("ceiling", "train", "zeroshot", "data", "cnn")


def _startup(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.startup import measure_startup

    return measure_startup(cfg.startup_repeats)


def _ceiling(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.ceiling import measure_ceiling

    sec, state["ceilings"] = measure_ceiling(cfg)
    return sec


def _train(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.train_step import measure_train_step

    sec = measure_train_step(cfg, state.get("ceilings", {}))
    state["demand"] = {
        "fp32": cfg.batch / sec.summary["zoo_fp32_step_s"],
        "bf16": cfg.batch / sec.summary["zoo_bf16_step_s"],
    }
    return sec


def _zeroshot(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.zero_shot import measure_zero_shot

    return measure_zero_shot(cfg)


def _loss(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.loss_scaling import measure_loss_scaling

    return measure_loss_scaling(cfg)


def _data(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.data_pipeline import measure_data_pipeline

    return measure_data_pipeline(cfg, state.get("demand", {}))


def _table(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.table_memory import measure_table_memory

    return measure_table_memory(cfg)


def _cnn(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.channels_last import measure_channels_last

    return measure_channels_last(cfg)


def _parity(cfg: BenchConfig, state: dict[str, Any]) -> Section:
    from benchmarks.parity import measure_parity

    return measure_parity(cfg.parity_recipe, cfg.parity_seeds, cfg.parity_epochs)


RUNNERS: dict[str, Callable[[BenchConfig, dict[str, Any]], Section]] = {
    "startup": _startup,
    "ceiling": _ceiling,
    "train": _train,
    "zeroshot": _zeroshot,
    "loss": _loss,
    "data": _data,
    "table": _table,
    "cnn": _cnn,
    "parity": _parity,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats, 1 seed")
    p.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    p.add_argument("--gpu", action="store_true", help="ViT-B/16 CLIP, batch 256, on CUDA")
    p.add_argument("--compile", action="store_true", help="add a torch.compile fit")
    p.add_argument("--batch", type=int, help="override the training batch size")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> BenchConfig:
    cfg = gpu() if args.gpu else quick() if args.quick else full()
    if args.gpu and args.quick:
        cfg = replace(cfg, repeats=8, quick=True)
    if args.compile:
        cfg = replace(cfg, compile=True)
    if args.batch:
        cfg = replace(cfg, batch=args.batch)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    cfg = build_config(args)
    if cfg.device == "cuda":  # fp32 contenders use TF32 tensor cores, as fp32 training does
        import torch

        torch.set_float32_matmul_precision("high")
    names = args.only.split(",") if args.only else list(GPU_SECTIONS if args.gpu else SECTIONS)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = [machine_section(command.strip())]
    state: dict[str, Any] = {}
    start = time.perf_counter()
    for name in names:
        print(f"[benchmarks] {name} …", file=sys.stderr, flush=True)
        try:
            sec = RUNNERS[name](cfg, state)
        except Exception as exn:  # report and go on: one broken section must not hide the rest
            traceback.print_exc()
            sec = Section(name)
            sec.add(
                "error", f"{type(exn).__name__}", str(exn).splitlines()[0][:120] if str(exn) else ""
            )
        print(f"[benchmarks] {name}: {sec.seconds:.0f} s", file=sys.stderr, flush=True)
        sections.append(sec)
    total = time.perf_counter() - start
    end = Section("total")
    end.add(
        "wall time",
        f"{total:.0f} s",
        ", ".join(f"{s.name} {s.seconds:.0f} s" for s in sections[1:]),
    )
    end.add("load average at end", ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    end.summary = {"total_s": round(total, 1), "load_end": round(os.getloadavg()[0], 2)}
    sections.append(end)
    print(render_table(sections))
    if args.json:
        write_json(args.json, sections, cfg)
    print(summary_line(sections), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
