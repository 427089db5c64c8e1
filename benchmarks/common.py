"""Shared pieces: interleaved timing, FLOP counting, and the report's section type."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Number = float | int


@dataclass
class Row:
    """One line of the report table."""

    measurement: str
    result: str
    note: str = ""


@dataclass
class Section:
    """A benchmark's rows plus the ``key=value`` figures it adds to the summary line."""

    name: str
    rows: list[Row] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, measurement: str, result: str, note: str = "") -> None:
        self.rows.append(Row(measurement, result, note))


def median(values: list[float]) -> float:
    """The median; NaN for an empty list."""
    return statistics.median(values) if values else float("nan")


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios ``num[i] / den[i]``: contenders timed next to each
    other share that moment's machine load, so pairing cancels most of it."""
    return median([a / b for a, b in zip(num, den)])


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA) so wall-clock timings are complete; no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleave(
    contenders: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Time each contender ``warmup + repeats`` times, interleaved (A B C A B C …).

    The order rotates every round so no contender always runs right after another one.
    Returns the ``repeats`` post-warm-up wall times (seconds) of each contender.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


def flop_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas the counter lacks: the CPU flash-attention kernels SDPA dispatches to
    (``torch.utils.flop_counter`` only knows the CUDA ones, so CPU attention would count 0)."""
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (matmuls, convolutions, attention) by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def fmt_ratio(x: float) -> str:
    return f"{x:.3f}" if x == x else "n/a"


def fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
