"""The machine's matmul ceiling: fp32 and bf16 GFLOP/s of one large square matmul."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from benchmarks.common import Section, interleave, median
from benchmarks.config import BenchConfig


def matmul_probe(n: int, dtype: torch.dtype, device: str = "cpu") -> Callable[[], None]:
    """A closure running one ``n × n`` matmul (2n³ FLOPs) in ``dtype``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> None:
        torch.mm(a, b, out=out)

    return run


def gflops(n: int, seconds: float) -> float:
    return 2 * n**3 / seconds / 1e9


def measure_ceiling(cfg: BenchConfig) -> tuple[Section, dict[str, float]]:
    """fp32 and bf16 matmul GFLOP/s, interleaved; returns the section and the ceilings."""
    start = time.perf_counter()
    n = cfg.matmul_size
    probes = {
        "fp32": matmul_probe(n, torch.float32, cfg.device),
        "bf16": matmul_probe(n, torch.bfloat16, cfg.device),
    }
    if cfg.device == "cuda":  # TF32 is what fp32 training uses on tensor-core GPUs
        torch.backends.cuda.matmul.allow_tf32 = True
    reps = 2 * cfg.repeats
    times = interleave(probes, warmup=2, repeats=reps, device=cfg.device)
    ceilings = {k: gflops(n, median(v)) for k, v in times.items()}
    best = {k: gflops(n, min(v)) for k, v in times.items()}
    sec = Section("ceiling")
    for k in probes:
        sec.add(
            f"{k} matmul ceiling ({n}×{n})",
            f"{ceilings[k]:.0f} GFLOP/s",
            f"median of {reps}; best {best[k]:.0f}",
        )
    sec.summary = {
        "fp32_gflops": round(ceilings["fp32"], 1),
        "bf16_gflops": round(ceilings["bf16"], 1),
    }
    sec.seconds = time.perf_counter() - start
    return sec, ceilings
