"""Tiny model specs of the SLIP card's faithfulness tests: ViT patch 4, dim 32, depth 1 on
16×16 images; text transformer width 32, 1 layer, context 8, vocab 50."""

import torch

from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec
from zoo.heads import MLPSpec

VOCAB, CONTEXT = 50, 8


def tiny_encoder_spec() -> DualEncoderSpec:
    return DualEncoderSpec(
        vision=VisionSpec(
            "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2
        ),
        text=TextSpec(
            vocab_size=VOCAB,
            width=32,
            layers=1,
            heads=2,
            context_length=CONTEXT,
            eos_token_id=VOCAB - 1,
        ),
        embed_dim=16,
    )


def tiny_head_spec() -> MLPSpec:
    return MLPSpec(hidden_dims=[64, 64], out_dim=16)


def tiny_batch(n: int = 6, views: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB - 2, (n, CONTEXT), generator=g)
    tokens[:, 0] = VOCAB - 2  # BOS
    tokens[:, 5] = VOCAB - 1  # EOT (largest id: argmax pooling)
    tokens[:, 6:] = 0
    return {
        "image": torch.randn(n, 3, 16, 16, generator=g),
        "text": tokens,
        "views": [torch.randn(n, 3, 16, 16, generator=g) for _ in range(views)],
        "label": torch.arange(n),
    }
