"""Channels-last for convolutional towers: a timm ResNet-50 image tower's training step
(forward + backward of ``DualEncoder.image_trunk`` + projection) with NHWC weights and
inputs (the zoo's default for CNN towers, ``VisionSpec.channels_last``) against NCHW, in
fp32 and under bf16 autocast, interleaved in the same rounds."""

from __future__ import annotations

import contextlib
import time

import torch

from benchmarks.common import Section, fmt_time, interleave, median, paired_ratio
from benchmarks.config import BenchConfig

PX = 112


def _tower_step(channels_last: bool, batch: int, bf16: bool, device: str):
    from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec, build_dual_encoder

    torch.manual_seed(0)
    spec = DualEncoderSpec(
        vision=VisionSpec("resnet50", img_size=PX, channels_last=channels_last),
        text=TextSpec(vocab_size=1000, width=64, layers=1, heads=2, context_length=8),
        embed_dim=256,
    )
    encoder = build_dual_encoder(spec).to(device)
    images = torch.randn(batch, 3, PX, PX, device=device)

    def step() -> None:
        ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = encoder.encode_image(images).float().square().mean()
        loss.backward()
        encoder.zero_grad(set_to_none=True)

    return step


def measure_channels_last(cfg: BenchConfig) -> Section:
    start = time.perf_counter()
    sec = Section("channels-last")
    batch = cfg.cnn_batch
    for tag, bf16 in (("fp32", False), ("bf16", True)):
        times = interleave(
            {
                "nhwc": _tower_step(True, batch, bf16, cfg.device),
                "nchw": _tower_step(False, batch, bf16, cfg.device),
            },
            warmup=1,
            repeats=cfg.cnn_repeats,
            device=cfg.device,
        )
        gain = paired_ratio(times["nchw"], times["nhwc"])
        sec.add(
            f"ResNet-50 tower step {tag}, channels-last / NCHW",
            f"{fmt_time(median(times['nhwc']))} / {fmt_time(median(times['nchw']))}",
            f"{gain:.3f}× faster with channels-last; batch {batch}, {PX} px, fwd + bwd",
        )
        sec.summary[f"channels_last_gain_{tag}"] = round(gain, 3)
    sec.seconds = time.perf_counter() - start
    return sec
