"""Sine position embedding of a 2-D feature map (DETR's ``PositionEmbeddingSine``).

Dense heads on a ViT reshape the patch tokens to an ``H×W`` map and add this embedding
(ViSFT's ``Joiner``). Per axis, the normalised cumulative coordinate ``y`` (or ``x``) in
``(0, 2π]`` is encoded as ``sin(y / T^(2i/d))`` and ``cos(y / T^(2i/d))`` interleaved, with
``d = num_pos_feats`` channels per axis and temperature ``T = 10000``; the output stacks the
``y`` half then the ``x`` half, so ``channels = 2·num_pos_feats``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEmbedding(nn.Module):
    """Fixed (parameter-free) 2-D sine embedding; ``mask`` marks padded pixels (True = pad)."""

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, feature_map: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``feature_map`` ``(B, C, H, W)`` → embedding ``(B, 2·num_pos_feats, H, W)``."""
        b, _, h, w = feature_map.shape
        if mask is None:
            mask = torch.zeros(b, h, w, dtype=torch.bool, device=feature_map.device)
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=feature_map.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(feature_map.dtype)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ViT patch tokens ``(B, H·W, C)`` (prefix tokens already removed) → map ``(B, C, H, W)``."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} patch tokens do not form a {h}×{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)
