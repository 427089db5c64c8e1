"""Zero-shot evaluation throughput (images/s): the zoo's feature extraction + classifier
(``zoo.eval.features.extract_features`` → ``zoo.eval.zeroshot.zeroshot_logits``) against
open_clip's ``encode_image(normalize=True)`` + ``100 · f @ W.T`` at the same shape."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.common import Section, fmt_ratio, interleave, median, paired_ratio
from benchmarks.config import BenchConfig
from benchmarks.contenders import autocast
from benchmarks.models import build_open_clip, build_zoo_clip, synthetic_batch


def measure_zero_shot(cfg: BenchConfig) -> Section:
    from zoo.eval.features import extract_features
    from zoo.eval.zeroshot import zeroshot_logits

    start = time.perf_counter()
    dev, b = cfg.device, cfg.zs_batch
    batch = synthetic_batch(cfg.arch, b, dev)
    images = batch["image"]
    loader = [{"image": images, "label": torch.zeros(b, dtype=torch.long, device=dev)}]
    encoder = build_zoo_clip(cfg.arch).encoder.to(dev).eval()
    oc = build_open_clip(cfg.arch).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    classifier = F.normalize(torch.randn(cfg.zs_classes, cfg.arch.embed_dim, generator=g), dim=-1)
    classifier = classifier.to(dev)

    def zoo(dtype: torch.dtype | None = None):
        def run() -> None:
            with autocast(dev, dtype):
                feats, _, _ = extract_features(encoder.encode_image, loader, dev, model=encoder)
            zeroshot_logits(feats, classifier).argmax(dim=-1)

        return run

    def open_clip(dtype: torch.dtype | None = None):
        def run() -> None:
            with torch.no_grad(), autocast(dev, dtype):
                feats = oc.encode_image(images, normalize=True)
                (100.0 * feats.float() @ classifier.T).argmax(dim=-1)

        return run

    contenders = {
        "zoo": zoo(),
        "open_clip": open_clip(),
        "zoo_bf16": zoo(torch.bfloat16),
        "open_clip_bf16": open_clip(torch.bfloat16),
    }
    times = interleave(contenders, cfg.warmup, cfg.repeats, device=dev)
    rate = {k: b / median(v) for k, v in times.items()}
    sec = Section("zero-shot")
    for k, label, note in (
        ("zoo", "zoo fp32", "extract_features + zeroshot_logits, 1000 classes"),
        ("open_clip", "open_clip fp32", "encode_image(normalize) + 100·f @ Wᵀ"),
        ("zoo_bf16", "zoo bf16", "bf16 autocast"),
        ("open_clip_bf16", "open_clip bf16", "bf16 autocast"),
    ):
        sec.add(f"zero-shot {label}", f"{rate[k]:.1f} img/s", note)
    ratio = paired_ratio(times["open_clip"], times["zoo"])
    ratio16 = paired_ratio(times["open_clip_bf16"], times["zoo_bf16"])
    sec.add("zs_speed_vs_open_clip", fmt_ratio(ratio), f"bf16: {ratio16:.3f}; batch {b}")
    sec.summary = {
        "zs_img_s": round(rate["zoo"], 1),
        "zs_speed_vs_open_clip": round(ratio, 3),
        "zs_bf16_img_s": round(rate["zoo_bf16"], 1),
    }
    sec.seconds = time.perf_counter() - start
    return sec
