"""The ViSFT backbone: a timm ViT (EVA-ViT-G / EVA02-E at paper scale), its patch tokens as a
map for the dense heads, and LoRA on the q and v thirds of its fused qkv.

ViSFT reshapes the ViT's output tokens (after the final norm, class token dropped) to the
``H/p × W/p`` patch grid and hands that map to every head (the official ``Joiner``; each head
adds its own sine position embedding, :mod:`zoo.heads.position`).

Stage 2 wraps the qkv Linear of every block in LoRA through peft
(:func:`zoo.lora.apply_lora` with ``qv_only``, loralib's ``MergedLinear(enable_lora=[True,
False, True])``). timm's EVA attention with q/v biases computes ``F.linear(x, qkv.weight,
bias)`` itself, bypassing the wrapped module, so a LoRA layer there would be silently
ignored; :func:`route_qkv_through_module` switches those blocks to calling the Linear and
adding the bias after (timm's own ``qkv_bias_separate`` path: the same ``Wx + b``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from zoo.backbones.vision import VisionSpec, build_vision_tower
from zoo.heads.position import tokens_to_map


def build_backbone(spec: VisionSpec) -> nn.Module:
    """The timm ViT of ``spec`` (no classifier), weights from ``spec.checkpoint`` if given."""
    model = build_vision_tower(spec)
    if not hasattr(model, "patch_embed") or not hasattr(model, "forward_features"):
        raise ValueError(
            f"ViSFT needs a timm ViT with patch tokens (patch_embed, forward_features); "
            f"{spec.model_name!r} is a {type(model).__name__}"
        )
    return model


def patch_grid(vit: nn.Module) -> tuple[int, int]:
    grid = getattr(vit.patch_embed, "grid_size", None)
    if grid is None:
        raise ValueError(f"{type(vit).__name__}.patch_embed has no grid_size")
    return int(grid[0]), int(grid[1])


def feature_map(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H/p, W/p)``: the final normalised patch tokens on their grid."""
    tokens = vit.forward_features(images)
    prefix = int(getattr(vit, "num_prefix_tokens", 0))
    return tokens_to_map(tokens[:, prefix:], patch_grid(vit))


def pooled_features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The ViT's own pooled feature (class token or average, as the model pools)."""
    return vit.forward_head(vit.forward_features(images), pre_logits=True)


def route_qkv_through_module(vit: nn.Module) -> int:
    """Make EVA attention call its ``qkv`` Linear (so LoRA on it takes effect); returns how
    many blocks were switched. The output is unchanged: ``qkv(x) + cat(q_bias, k_bias,
    v_bias)`` equals ``F.linear(x, W, cat(...))``."""
    switched = 0
    for module in vit.modules():
        if hasattr(module, "qkv_bias_separate") and getattr(module, "q_bias", None) is not None:
            module.qkv_bias_separate = True
            switched += 1
    return switched


def state_sha256(module: nn.Module) -> str:
    """One sha256 over every tensor of ``module``'s state dict (names, dtypes, shapes, bytes):
    which backbone a stage-1 head was trained on."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The LoRA matrices of a peft-wrapped model (``lora_A`` / ``lora_B``)."""
    return [(n, p) for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]


def unwrap(model: Any) -> nn.Module:
    """The timm model inside a peft ``PeftModel`` (or the model itself)."""
    base = getattr(model, "base_model", None)
    return base.model if base is not None and hasattr(base, "model") else model
