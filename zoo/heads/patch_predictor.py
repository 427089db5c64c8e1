"""TiMix's Text-aware Patch Predictor (TPP) and the box-to-patch labels it is trained on.

Official code (github.com/chaoyajiang/TiMiX @ 3363466): ``PredictorLG`` in
``models/clip/model.py``, called after ViT block ``pruning_loc`` (5 in mPLUG-TiMix) on the
patch tokens x ∈ R^{B×N×C} with the text [CLS] feature t:

    x′ = GELU(Linear(LN(x)))                         (C → C)
    local = x′[..., :C/2],  global = mean_patches(x′[..., C/2:])
    h = GELU(Linear(GELU(Linear([local, global, t]))))   (C + D_t → C/2 → C/4)
    log p = log_softmax(Linear(h))                   (C/4 → 2; class 1 = "in the phrase's region")

The official text feature is BERT's [CLS] hidden state, as wide as the ViT (768), so the MLP
input is 2C; on the zoo's dual encoder t is the text tower's pooled feature before the
projection (width D_t, which may differ from C), and the first MLP layer takes C + D_t.
The official mean over patches is weighted by a "policy" that is all ones there: a plain mean.

Labels (:func:`box_patch_labels`): the official region dataset (``dataset/caption_dataset.py``
``get_image_attns``) marks every patch a box overlaps, columns ⌊x/p⌋ … ⌈(x+w)/p⌉ − 1 (rows
likewise), at least one patch per axis: ``rule="overlap"``, the default. ``rule="centre"``
marks the patches whose centre lies inside the box instead.

:func:`vit_forward_split` runs a timm ViT in two parts, so the tower's forward gives both the
pooled feature and the patch tokens after block ``pruning_loc`` (no second forward);
:func:`vit_tokens_until` stops after that block (the PTA step needs nothing later).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

LabelRule = Literal["overlap", "centre"]
LABEL_RULES = ("overlap", "centre")


class TextAwarePatchPredictor(nn.Module):
    """``PredictorLG``: (B, N, C) patch tokens + (B, D_t) text features → (B, N, 2) log p."""

    def __init__(self, dim: int, text_dim: int | None = None):
        super().__init__()
        if dim % 4:
            raise ValueError(f"the patch predictor needs a width divisible by 4, got {dim}")
        text_dim = dim if text_dim is None else text_dim
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim + text_dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
        )
        self.head = nn.Linear(dim // 4, 2)

    def forward(self, patches: Tensor, text: Tensor) -> Tensor:
        x = self.in_conv(patches)
        batch, count, dim = x.shape
        half = dim // 2
        local = x[..., :half]
        glob = x[..., half:].mean(dim=1, keepdim=True).expand(batch, count, dim - half)
        text = text.unsqueeze(1).expand(batch, count, text.shape[-1]).to(x.dtype)
        h = self.out_conv(torch.cat([local, glob, text], dim=-1))
        return torch.log_softmax(self.head(h), dim=-1)


def box_patch_labels(
    boxes: Tensor, image_size: int, patch_size: int, rule: LabelRule = "overlap"
) -> Tensor:
    """(K, 4) boxes ``x1 y1 x2 y2`` in pixels of a square ``image_size`` image → (K, S·S)
    long patch labels (1 inside the region, row-major patches); see the module docstring."""
    if rule not in LABEL_RULES:
        raise ValueError(f"patch label rule must be one of {LABEL_RULES}, got {rule!r}")
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
    grid = image_size // patch_size
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    cells = torch.arange(grid, dtype=torch.float64)
    if rule == "overlap":
        # official get_image_attns: first = min(floor(x/p), S-1), end = max(first+1, min(ceil(x2/p), S))
        first = torch.clamp(torch.floor(boxes[:, :2] / patch_size), max=grid - 1)
        end = torch.maximum(first + 1, torch.clamp(torch.ceil(boxes[:, 2:] / patch_size), max=grid))
        inside_x = (cells >= first[:, :1]) & (cells < end[:, :1])
        inside_y = (cells >= first[:, 1:]) & (cells < end[:, 1:])
    else:
        centres = (cells + 0.5) * patch_size
        inside_x = (centres >= boxes[:, 0:1]) & (centres < boxes[:, 2:3])
        inside_y = (centres >= boxes[:, 1:2]) & (centres < boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1).long()


def _check_vit(visual: nn.Module, block: int) -> None:
    blocks = getattr(visual, "blocks", None)
    if blocks is None or not hasattr(visual, "patch_embed"):
        raise TypeError(
            f"the text-aware patch predictor reads a timm VisionTransformer's patch tokens; "
            f"{type(visual).__name__} has no blocks / patch_embed"
        )
    if not 0 <= block < len(blocks):
        raise ValueError(f"pruning_loc {block} must index one of the tower's {len(blocks)} blocks")


def _embed(visual: nn.Module, images: Tensor) -> Tensor:
    x = visual.patch_embed(images)
    x = visual._pos_embed(x)
    x = visual.patch_drop(x)
    return visual.norm_pre(x)


def vit_tokens_until(visual: nn.Module, images: Tensor, block: int) -> Tensor:
    """The (B, N, C) patch tokens (prefix tokens dropped) after block ``block`` of a timm ViT."""
    _check_vit(visual, block)
    x = visual.blocks[: block + 1](_embed(visual, images))
    return x[:, visual.num_prefix_tokens :]


def vit_forward_split(
    visual: nn.Module, images: Tensor, block: int, pooled_last_block: bool = True
) -> tuple[Tensor, Tensor]:
    """``(visual(images), patch tokens after block ``block``)`` from one forward pass.

    The pooled feature equals the tower's own forward; with ``pooled_last_block`` the last
    block runs on the class token only when it comes after ``block``
    (:mod:`zoo.backbones.pooled`: same features, less compute).
    """
    from zoo.backbones.pooled import _timm_block_on_class_token, timm_vit_prunable

    _check_vit(visual, block)
    x = visual.blocks[: block + 1](_embed(visual, images))
    patches = x[:, visual.num_prefix_tokens :]
    rest = visual.blocks[block + 1 :]
    if len(rest) and pooled_last_block and timm_vit_prunable(visual):
        x = _timm_block_on_class_token(rest[-1], rest[:-1](x))
    else:
        x = rest(x)
    return visual.forward_head(visual.norm(x)), patches
