"""Tiny model specs of the SLIP card's faithfulness tests: ViT patch 4, dim 32, depth 1 on
16×16 images; text transformer width 32, 1 layer, context 8, vocab 50."""

import math

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


# Hand-computed symmetric InfoNCE (test_clip, test_slip): two image / text embeddings,
# unnormalised, at scale s = 2. After L2 normalisation ẑ_I = [[1, 0], [0, 1]] and
# ẑ_T = [[0.6, 0.8], [0, 1]], so s ẑ_I ẑ_Tᵀ = [[1.2, 0], [1.6, 2]], s ẑ_T ẑ_Iᵀ = [[1.2, 1.6],
# [0, 2]], and the targets are the diagonal: each row's cross-entropy is
# log(Σ exp(logits)) − logit of the target.
Z_IMAGE = [[3.0, 0.0], [0.0, 0.5]]
Z_TEXT = [[3.0, 4.0], [0.0, 2.0]]
CLIP_SCALE = 2.0
_IMAGE_TO_TEXT = (
    (math.log(math.exp(1.2) + math.exp(0.0)) - 1.2)
    + (math.log(math.exp(1.6) + math.exp(2.0)) - 2.0)
) / 2
_TEXT_TO_IMAGE = (
    (math.log(math.exp(1.2) + math.exp(1.6)) - 1.2)
    + (math.log(math.exp(0.0) + math.exp(2.0)) - 2.0)
) / 2
CLIP_HAND_LOSS = (_IMAGE_TO_TEXT + _TEXT_TO_IMAGE) / 2  # 0.45406…


# SLIP's weight-decay rule (p.ndim < 2 or "bias" / "ln" / "bn" in the name: no decay) on the
# tiny encoder, parameter by parameter: matrices and the ViT's 3-D position embedding and
# class token decay; biases, norm gains and the logit scale do not.
_VIS, _TXT = "encoder.visual.", "encoder.text.model."
_LAYER = _TXT + "encoder.layers.0."
TINY_ENCODER_DECAY = [
    "encoder.image_projection",
    "encoder.text_projection",
    _VIS + "cls_token",
    _VIS + "pos_embed",
    _VIS + "patch_embed.proj.weight",
    _VIS + "blocks.0.attn.qkv.weight",
    _VIS + "blocks.0.attn.proj.weight",
    _VIS + "blocks.0.mlp.fc1.weight",
    _VIS + "blocks.0.mlp.fc2.weight",
    _TXT + "embeddings.token_embedding.weight",
    _TXT + "embeddings.position_embedding.weight",
    _LAYER + "self_attn.k_proj.weight",
    _LAYER + "self_attn.v_proj.weight",
    _LAYER + "self_attn.q_proj.weight",
    _LAYER + "self_attn.out_proj.weight",
    _LAYER + "mlp.fc1.weight",
    _LAYER + "mlp.fc2.weight",
]
TINY_ENCODER_NO_DECAY = [
    "encoder.logit_scale",
    _VIS + "patch_embed.proj.bias",
    _VIS + "blocks.0.norm1.weight",
    _VIS + "blocks.0.norm1.bias",
    _VIS + "blocks.0.attn.qkv.bias",
    _VIS + "blocks.0.attn.proj.bias",
    _VIS + "blocks.0.norm2.weight",
    _VIS + "blocks.0.norm2.bias",
    _VIS + "blocks.0.mlp.fc1.bias",
    _VIS + "blocks.0.mlp.fc2.bias",
    _VIS + "norm.weight",
    _VIS + "norm.bias",
    _LAYER + "self_attn.k_proj.bias",
    _LAYER + "self_attn.v_proj.bias",
    _LAYER + "self_attn.q_proj.bias",
    _LAYER + "self_attn.out_proj.bias",
    _LAYER + "layer_norm1.weight",
    _LAYER + "layer_norm1.bias",
    _LAYER + "mlp.fc1.bias",
    _LAYER + "mlp.fc2.bias",
    _LAYER + "layer_norm2.weight",
    _LAYER + "layer_norm2.bias",
    _TXT + "final_layer_norm.weight",
    _TXT + "final_layer_norm.bias",
]
