"""The contenders' models: the zoo's CLIP (timm ViT + transformers text) and open_clip's
``CLIP`` at the same shape, a synthetic batch, and open_clip's own optimiser recipe."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from benchmarks.config import Arch

BOS, EOT = 49406, 49407


def zoo_encoder_spec(arch: Arch) -> Any:
    """The zoo's ``DualEncoderSpec`` for ``arch`` (SDPA attention in both towers)."""
    from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec

    return DualEncoderSpec(
        vision=VisionSpec(
            model_name="vit_small_patch16_224",
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.vision_width,
            depth=arch.vision_layers,
            num_heads=arch.vision_heads,
        ),
        text=TextSpec(
            vocab_size=arch.vocab_size,
            width=arch.text_width,
            layers=arch.text_layers,
            heads=arch.text_heads,
            context_length=arch.context_length,
        ),
        embed_dim=arch.embed_dim,
    )


def build_zoo_clip(arch: Arch, seed: int = 0) -> Any:
    """``lightning_modules.clip.CLIP`` (the zoo's paper module) at ``arch``."""
    from lightning_modules.clip import CLIP

    torch.manual_seed(seed)
    return CLIP(encoder=zoo_encoder_spec(arch))


def without_pooled_last_block(module: Any) -> Any:
    """A copy of a zoo CLIP module computing every row of both towers' last blocks (the
    unpruned formulation, FLOP-for-FLOP what open_clip computes)."""
    import copy

    module = copy.deepcopy(module)
    module.encoder.pooled_last_block = False
    module.encoder.text.spec.pooled_last_block = False
    return module


def build_open_clip(arch: Arch, seed: int = 0) -> nn.Module:
    """open_clip's ``CLIP`` with the same widths, depths, heads, patch and context."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=arch.vision_layers,
        width=arch.vision_width,
        head_width=arch.vision_width // arch.vision_heads,
        patch_size=arch.patch_size,
        image_size=arch.img_size,
    )
    text = CLIPTextCfg(
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_heads,
        layers=arch.text_layers,
    )
    return open_clip.CLIP(arch.embed_dim, vision, text)


def synthetic_batch(
    arch: Arch, batch: int, device: str = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random images and CLIP-BPE-like token rows (BOS, ids, EOT = the largest id, zero
    padding), plus the ``skipped`` counter the zoo's collate adds to every batch."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, arch.img_size, arch.img_size, generator=g)
    ctx = arch.context_length
    lengths = torch.randint(1, ctx - 1, (batch,), generator=g)
    tokens = torch.randint(1, BOS, (batch, ctx), generator=g)
    pos = torch.arange(ctx).expand(batch, ctx)
    tokens = torch.where(pos > lengths[:, None], torch.zeros_like(tokens), tokens)
    tokens[:, 0] = BOS
    tokens[torch.arange(batch), lengths] = EOT
    return {
        "image": images.to(device),
        "text": tokens.to(device),
        "skipped": torch.zeros((), dtype=torch.long, device=device),
    }


def open_clip_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """open_clip's ``training/main.py`` recipe: AdamW (0.9, 0.98), no decay for gains,
    biases and the logit scale, default (non-fused) implementation."""

    def exclude(n: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def open_clip_cosine_lr(step: int, total: int, warmup: int, base_lr: float) -> float:
    """open_clip's ``cosine_lr`` schedule (assigned to the groups every step)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e = step - warmup
    return 0.5 * (1 + math.cos(math.pi * e / max(total - warmup, 1))) * base_lr
