"""CLIP training step: the zoo through Lightning vs a plain loop vs open_clip, fp32 and
bf16-mixed, with FLOPs per step and the fraction of the machine's matmul ceiling.

Two (three with ``compile``) Lightning fits host the interleaved contenders:

- fp32 fit: zoo (``32-true``) | plain loop fp32 | open_clip fp32 | fp32 matmul probe;
- bf16 fit: zoo (``bf16-mixed``) | plain fp32 | plain bf16 | plain bf16 with math SDPA (on
  CPU: what the zoo would gain from avoiding the flash kernel) | open_clip bf16 | bf16 probe.
  ``bf16_speedup`` chains the fits through the plain fp32 loop timed in both:
  (zoo32 / plain32)_fp32-fit × (plain32 / zoo16)_bf16-fit;
- compile fit: zoo bf16 with ``encoder.compile()`` | plain bf16 | open_clip bf16 compiled.

Ratios are medians of per-round ratios (:func:`benchmarks.common.paired_ratio`); the
fractions of peak pair each step with the matmul probe of the same round.
"""

from __future__ import annotations

import copy
import time

import torch

from benchmarks.ceiling import matmul_probe
from benchmarks.common import (
    Section,
    count_flops,
    fmt_ratio,
    fmt_time,
    interleave,
    median,
    paired_ratio,
)
from benchmarks.config import BenchConfig
from benchmarks.contenders import (
    lightning_fit,
    open_clip_step,
    with_math_attention,
    zoo_plain_step,
)
from benchmarks.models import (
    build_open_clip,
    build_zoo_clip,
    synthetic_batch,
    without_pooled_last_block,
)

BF16 = torch.bfloat16
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
SPEC_BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}
Times = dict[str, list[float]]


def spec_bf16_peak(device_name: str) -> float | None:
    return next((v for k, v in SPEC_BF16_PEAK.items() if k in device_name), None)


def step_flops(model: torch.nn.Module, batch: dict, zoo: bool) -> int:
    """Forward + backward FLOPs of one step of ``model`` on ``batch`` (fp32)."""
    import open_clip

    from zoo.losses import clip_infonce

    loss = clip_infonce if zoo else open_clip.loss.ClipLoss()

    def run() -> None:
        z_i, z_t, s = model(batch["image"], batch["text"])
        loss(z_i, z_t, s).backward()

    flops = count_flops(run)
    model.zero_grad(set_to_none=True)
    return flops


def adamw_times(model: torch.nn.Module, cfg: BenchConfig) -> dict[str, float]:
    """Optimiser-step time of AdamW fused vs foreach vs for-loop on the model's parameters."""
    steps = {}
    for impl in ("fused", "foreach", "for-loop"):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        kw = {"fused": impl == "fused", "foreach": impl == "foreach"}
        steps[impl] = torch.optim.AdamW(params, lr=1e-4, **kw).step
    times = interleave(steps, warmup=1, repeats=cfg.repeats, device=cfg.device)
    return {k: median(v) for k, v in times.items()}


def frac_of_peak(flops: int, steps: list[float], probes: list[float], n: int) -> float:
    """Median over rounds of (FLOPs / step time) / (probe matmul FLOP/s of that round)."""
    return median([flops * p / (s * 2 * n**3) for s, p in zip(steps, probes)])


def measure_train_step(cfg: BenchConfig, ceilings: dict[str, float]) -> Section:
    start = time.perf_counter()
    dev, b, n = cfg.device, cfg.batch, cfg.matmul_size
    batch = synthetic_batch(cfg.arch, b, dev)
    total = cfg.warmup + cfg.repeats + 1

    def fit(module, precision: str, others: dict) -> Times:
        return lightning_fit(module, batch, total, precision, others, dev, cfg.warmup)

    zoo32 = build_zoo_clip(cfg.arch).to(dev)
    init = copy.deepcopy(zoo32.state_dict())
    oc = build_open_clip(cfg.arch).to(dev)
    flops = step_flops(copy.deepcopy(zoo32.encoder), batch, zoo=True)
    unpruned = without_pooled_last_block(zoo32)
    full_flops = step_flops(copy.deepcopy(unpruned.encoder), batch, zoo=True)
    oc_flops = step_flops(copy.deepcopy(oc), batch, zoo=False)

    fp32 = fit(
        zoo32,
        "32-true",
        {
            "torch": zoo_plain_step(zoo32, batch, total, None, dev),
            "torch_unpruned": zoo_plain_step(unpruned, batch, total, None, dev),
            "open_clip": open_clip_step(copy.deepcopy(oc), batch, total, None, dev),
            "probe": matmul_probe(n, torch.float32, dev),
        },
    )
    zoo16 = build_zoo_clip(cfg.arch).to(dev)
    zoo16.load_state_dict(init)
    others16 = {
        "torch": zoo_plain_step(zoo16, batch, total, None, dev),
        "torch_bf16": zoo_plain_step(zoo16, batch, total, BF16, dev),
        "open_clip_bf16": open_clip_step(copy.deepcopy(oc), batch, total, BF16, dev),
        "probe": matmul_probe(n, BF16, dev),
    }
    if dev == "cpu":
        plain16 = zoo_plain_step(zoo16, batch, total, BF16, dev)
        others16["torch_bf16_math"] = with_math_attention(plain16)
    bf16 = fit(zoo16, "bf16-mixed", others16)

    overhead = paired_ratio(fp32["zoo"], fp32["torch"])
    fig = {
        "overhead_vs_torch": overhead,
        "speed_vs_open_clip": paired_ratio(fp32["open_clip"], fp32["zoo"]),
        "frac_fp32_peak": frac_of_peak(flops, fp32["zoo"], fp32["probe"], n),
        "bf16_speedup": overhead * paired_ratio(bf16["torch"], bf16["zoo"]),
        "frac_bf16_peak": frac_of_peak(flops, bf16["zoo"], bf16["probe"], n),
    }
    sec = Section("train step")
    _rows(sec, cfg, fp32, bf16, fig, flops, oc_flops, ceilings)
    _pruning_rows(sec, fp32, fig, flops, full_flops)
    adamw = adamw_times(zoo32.encoder, cfg)
    sec.add(
        "AdamW step fused / foreach / for-loop",
        " / ".join(fmt_time(adamw[k]) for k in ("fused", "foreach", "for-loop")),
        f"fused {adamw['for-loop'] / adamw['fused']:.1f}× faster than the for-loop"
        " (open_clip's default on CPU)",
    )
    sec.summary = {k: round(v, 3) for k, v in fig.items()}
    sec.summary.update(
        gflop_per_step=round(flops / 1e9, 1),
        zoo_fp32_step_s=round(median(fp32["zoo"]), 4),
        zoo_bf16_step_s=round(median(bf16["zoo"]), 4),
        adamw_fused_speedup=round(adamw["for-loop"] / adamw["fused"], 2),
    )
    if "torch_bf16_math" in bf16:
        gain = paired_ratio(bf16["torch_bf16"], bf16["torch_bf16_math"])
        sec.add(
            "bf16 step, math SDPA instead of flash",
            f"{gain:.3f}× faster",
            f"bf16_speedup would be ≈ {fig['bf16_speedup'] * gain:.2f} (plain loop, what-if)",
        )
        sec.summary["bf16_math_sdpa_gain"] = round(gain, 3)
    if dev == "cuda":
        _mfu(sec, flops, median(bf16["zoo"]), "bf16")
    if cfg.compile:
        _compile_fit(cfg, sec, init, oc, batch, bf16, flops)
    sec.seconds = time.perf_counter() - start
    return sec


def _rows(sec, cfg, fp32: Times, bf16: Times, fig, flops, oc_flops, ceilings) -> None:
    a, b, n = cfg.arch, cfg.batch, cfg.matmul_size
    shape = (
        f"ViT {a.vision_width}×{a.vision_layers} p{a.patch_size} @{a.img_size}px, "
        f"text {a.text_width}×{a.text_layers} ctx {a.context_length}, batch {b}"
    )
    sec.add("model", shape, f"{flops / 1e9:.0f} GFLOP/step (open_clip {oc_flops / 1e9:.0f})")
    m32 = {k: median(v) for k, v in fp32.items()}
    m16 = {k: median(v) for k, v in bf16.items()}
    sec.add(
        "zoo fp32 step (Lightning)",
        fmt_time(m32["zoo"]),
        f"{b / m32['zoo']:.1f} img/s; median of {cfg.repeats} timed steps",
    )
    sec.add("plain torch fp32 step", fmt_time(m32["torch"]), "same model, loss, fused AdamW")
    sec.add("open_clip fp32 step", fmt_time(m32["open_clip"]), "CLIP + ClipLoss, its AdamW")
    sec.add("overhead_vs_torch", fmt_ratio(fig["overhead_vs_torch"]), "target ≤ 1.02")
    sec.add("speed_vs_open_clip", fmt_ratio(fig["speed_vs_open_clip"]), "target ≥ 1.05")
    probe32 = 2 * n**3 / m32["probe"] / 1e9
    sec.add(
        "frac_fp32_peak",
        fmt_ratio(fig["frac_fp32_peak"]),
        f"target ≥ 0.75; fp32 probe {probe32:.0f} GFLOP/s in the same rounds "
        f"(ceiling section {ceilings.get('fp32', float('nan')):.0f})",
    )
    sec.add("zoo bf16-mixed step (Lightning)", fmt_time(m16["zoo"]), f"{b / m16['zoo']:.1f} img/s")
    sec.add("plain torch bf16 step", fmt_time(m16["torch_bf16"]), "torch.autocast bf16")
    sec.add("open_clip bf16 step", fmt_time(m16["open_clip_bf16"]), "torch.autocast bf16")
    sec.add("bf16_speedup", fmt_ratio(fig["bf16_speedup"]), "target ≥ 2.0")
    sec.add(
        "overhead_vs_torch (bf16)",
        fmt_ratio(paired_ratio(bf16["zoo"], bf16["torch_bf16"])),
        "Lightning bf16-mixed vs the autocast loop",
    )
    sec.add(
        "speed_vs_open_clip (bf16)", fmt_ratio(paired_ratio(bf16["open_clip_bf16"], bf16["zoo"]))
    )
    probe16 = 2 * n**3 / m16["probe"] / 1e9
    sec.add("frac_bf16_peak", fmt_ratio(fig["frac_bf16_peak"]), f"bf16 probe {probe16:.0f} GFLOP/s")


def _pruning_rows(sec: Section, fp32: Times, fig: dict, flops: int, full_flops: int) -> None:
    """What the pooled-row last block (zoo.backbones.pooled) contributes, measured with
    the plain loop with and without it in the same rounds."""
    gain = paired_ratio(fp32["torch_unpruned"], fp32["torch"])
    sec.add(
        "pooled-row last block: step gain",
        f"{gain:.3f}× faster",
        f"plain loop without it: {fmt_time(median(fp32['torch_unpruned']))}, "
        f"{full_flops / 1e9:.0f} GFLOP/step ({1 - flops / full_flops:.1%} fewer with it)",
    )
    sec.add(
        "speed_vs_open_clip at equal FLOPs",
        fmt_ratio(fig["speed_vs_open_clip"] / gain),
        "zoo without the pooled-row last block (chained through the plain loops)",
    )
    sec.summary["pooled_block_gain"] = round(gain, 3)
    sec.summary["speed_vs_open_clip_unpruned"] = round(fig["speed_vs_open_clip"] / gain, 3)


def _mfu(sec: Section, flops: int, step_s: float, tag: str) -> None:
    peak = spec_bf16_peak(torch.cuda.get_device_name(0))
    if peak:
        mfu = flops / step_s / peak
        sec.add(
            f"MFU ({tag}, vs data-sheet dense bf16 peak)",
            fmt_ratio(mfu),
            f"{peak / 1e12:.0f} TFLOP/s",
        )
        sec.summary[f"mfu_{tag}"] = round(mfu, 3)


def _compile_fit(cfg, sec: Section, init, oc, batch, bf16: Times, flops: int) -> None:
    """bf16 fit with ``encoder.compile()``; compile_speedup chains through plain bf16."""
    dev, total = cfg.device, cfg.warmup + cfg.repeats + 1
    zooc = build_zoo_clip(cfg.arch).to(dev)
    zooc.load_state_dict(init)
    ocs = open_clip_step(copy.deepcopy(oc), batch, total, BF16, dev)
    ocs.model.compile()  # type: ignore[attr-defined]
    plain = zoo_plain_step(zooc, batch, total, BF16, dev)
    zooc.encoder.compile()
    t0 = time.perf_counter()
    comp = lightning_fit(
        zooc,
        batch,
        total,
        "bf16-mixed",
        {"torch_bf16": plain, "open_clip_bf16_c": ocs},
        dev,
        cfg.warmup,
    )
    fit_s = time.perf_counter() - t0
    speedup = paired_ratio(bf16["zoo"], bf16["torch_bf16"]) * paired_ratio(
        comp["torch_bf16"], comp["zoo"]
    )
    step = median(comp["zoo"])
    sec.add("zoo bf16 compiled step", fmt_time(step), f"fit incl. compiles {fit_s:.0f} s")
    sec.add("compile_speedup", fmt_ratio(speedup), "zoo bf16 eager / compiled")
    sec.add(
        "speed_vs_open_clip (bf16, both compiled)",
        fmt_ratio(paired_ratio(comp["open_clip_bf16_c"], comp["zoo"])),
    )
    sec.summary["compile_speedup"] = round(speedup, 3)
    if dev == "cuda":
        _mfu(sec, flops, step, "bf16_compiled")
