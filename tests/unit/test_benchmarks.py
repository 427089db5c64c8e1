"""Smoke tests of the benchmark plumbing at tiny sizes (no timing assertions)."""

from __future__ import annotations

import torch

from benchmarks.common import Row, Section, count_flops, interleave
from benchmarks.config import Arch
from benchmarks.loss_scaling import measure_rank
from benchmarks.memory import TensorMemory
from benchmarks.models import EOT, build_open_clip, build_zoo_clip, synthetic_batch
from benchmarks.report import SUMMARY_KEYS, render_table, summary_line

TINY = Arch(
    img_size=16,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    context_length=8,
    vocab_size=49408,
    embed_dim=16,
)


def test_flop_counter_on_a_known_matmul():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_flops(lambda: a @ b) == 2 * 64 * 32 * 16


def test_flop_counter_counts_cpu_attention():
    q = torch.randn(2, 4, 10, 8)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 2 * 4 * 10 * 8 * 10)  # QKᵀ and PV


def test_interleave_returns_repeats_per_contender():
    calls: list[str] = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert calls[:4] == ["a", "b", "b", "a"]  # the order rotates each round


def test_summary_line_is_last_and_has_required_keys():
    sec = Section("x", [Row("m", "1", "n")], {"overhead_vs_torch": 1.01, "extra": 3})
    line = summary_line([sec])
    assert line.startswith("summary: overhead_vs_torch=1.01 ")
    for key in SUMMARY_KEYS:
        assert f" {key}=" in f" {line[len('summary:') :]}"
    assert "speed_vs_open_clip=n/a" in line and line.endswith("extra=3")
    assert "| x | m | 1 | n |" in render_table([sec])


def test_tensor_memory_counts_and_frees():
    x = torch.randn(256, 256, requires_grad=True)
    with TensorMemory() as mem:
        y = (x * 2).exp().sum()
        y.backward()
    assert mem.peak >= 2 * 256 * 256 * 4
    assert mem.current <= 256 * 256 * 4 + 64  # x.grad (and scalars) remain


def test_loss_memory_is_local_times_global():
    """Single process: the local-loss memory grows with B_local · B_global (here B²)."""
    small = measure_rank(64, 8, 1, ("no_grad",))["no_grad"]["peak_bytes"]
    large = measure_rank(128, 8, 1, ("no_grad",))["no_grad"]["peak_bytes"]
    assert 3.0 < large / small < 4.5  # logits dominate: (128·128) / (64·64) = 4


def test_tiny_models_and_batch_agree():
    batch = synthetic_batch(TINY, 3)
    assert batch["text"].shape == (3, 8)
    assert (batch["text"].argmax(dim=-1) == (batch["text"] == EOT).int().argmax(dim=-1)).all()
    zoo = build_zoo_clip(TINY).encoder
    oc = build_open_clip(TINY)
    for model in (zoo, oc):
        z_i, z_t, scale = model(batch["image"], batch["text"])
        assert z_i.shape == z_t.shape == (3, 16)


def test_table_memory_section_shows_packed_columns_are_not_copied_into_workers():
    """Measured property (not timing): a forked reader copies the Python-list table's
    pages but not the packed columns'."""
    from dataclasses import replace

    from benchmarks.config import quick
    from benchmarks.table_memory import measure_table_memory

    sec = measure_table_memory(replace(quick(), table_rows=50_000))
    s = sec.summary
    assert s["table_held_mib_packed"] < s["table_held_mib_lists"]
    assert s["table_worker_copy_mib_packed"] < 0.25 * s["table_worker_copy_mib_lists"]
