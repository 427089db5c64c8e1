"""DETR detection head on a ViT feature map, as ViSFT builds it (Carion et al. 2020; ViSFT 2024).

Data flow (shapes for the paper-scale :class:`DETRHeadSpec`, a ``(B, C_in, H, W)`` map made
from ViT patch tokens with :func:`zoo.heads.position.tokens_to_map`):

1. ``input_proj``: 1×1 conv ``C_in → encoder_dim`` (128).
2. Sine position embedding of the map (:class:`~zoo.heads.position.SinePositionEmbedding`,
   ``encoder_dim / 2`` features per axis, normalised coordinates), as ViSFT's ``Joiner``.
3. Optional learned task token prepended to the encoder sequence (position 0, never padded):
   ViSFT's detection config sets ``use_task_embedding_in_img_encoder: true``, which prepends
   the detection task's row of a task-embedding table; its encoder output is dropped again.
4. Encoder: ``num_encoder_layers`` post-norm layers at ``encoder_dim``; the sine embedding is
   added to queries and keys (not values) of the self-attention in *every* layer, as DETR's
   ``TransformerEncoderLayer.forward_post`` does.
5. ``memory = tokens + encoder(tokens)`` (ViSFT's ``residual_in_encoder: true``; original DETR
   uses ``encoder(tokens)``: ``residual_memory=False``), then ViSFT's two linear maps
   ``encoder_dim → decoder_dim`` (128 → 256), one for the memory and one for the position
   embedding: this is how the 128-wide encoder and the 256-wide decoder coexist
   (ViSFT ``mmf/models/visft/transformer.py``, ``enc2dec_proj`` / ``pos_embed_proj``). With
   equal widths both are identities.
6. Decoder: ``num_decoder_layers`` post-norm layers at ``decoder_dim``; the target starts at
   zero, the learned query embedding (``num_queries × decoder_dim``) is added to queries and
   keys of the self-attention and to the queries of the cross-attention, and the projected
   position embedding to the cross-attention keys, in every layer. The output of every layer
   passes through one shared final LayerNorm (DETR ``return_intermediate``).
7. Class head ``Linear(decoder_dim, num_classes + 1)`` (last index = no-object) and box head,
   a 3-layer ReLU MLP ``decoder_dim → decoder_dim → decoder_dim → 4`` with a sigmoid
   (normalised ``cx, cy, w, h``), both applied to every decoder layer's output. The last layer
   gives ``pred_logits`` / ``pred_boxes``; the earlier ones ``aux_outputs`` (DETR's
   auxiliary decoding losses).

Initialisation follows the official ViSFT code: Xavier-uniform on every ≥2-D weight of the
encoder and the two encoder→decoder maps (``Transformer._reset_parameters``, which runs
before ViSFT builds its per-dataset decoders, so decoder layers keep PyTorch's defaults);
query and task embeddings ``N(0, 1)`` (``nn.Embedding``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.heads.mlp import MLPSpec, ProjectionMLP
from zoo.heads.position import SinePositionEmbedding


@dataclass
class DETRHeadSpec:
    """DETR head hyper-parameters; defaults are ViSFT's detection head at paper scale.

    Sources: ViSFT ``mmf/configs/models/visft/defaults.yaml`` (``encoder_hidden_dim: 128``,
    ``decoder_hidden_dim: 256``, ``enc_layers: 6``, ``dec_layers: 6``, ``nheads: 8``,
    ``dim_feedforward: 1024``, ``dropout: 0.1``, ``pre_norm: false``,
    ``residual_in_encoder: true``, COCO ``num_classes: 91``) and
    ``projects/visft/configs/stage1/eva_g/detection.yaml`` (100 queries,
    ``use_task_embedding_in_img_encoder: true``). ``DETRHeadSpec.tiny()`` is the card's
    DETR-lite for CPU runs (8 queries, 2 + 2 layers). A mapping ``{preset: tiny, **overrides}``
    resolves through :func:`zoo.specs.to_spec`.
    """

    num_classes: int = 91
    num_queries: int = 100
    encoder_dim: int = 128
    decoder_dim: int = 256
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    residual_memory: bool = True
    task_token: bool = True

    def __post_init__(self) -> None:
        if self.encoder_dim % 2:
            raise ValueError(
                f"DETRHeadSpec.encoder_dim must be even (sine embedding), got {self.encoder_dim}"
            )
        for name in ("encoder_dim", "decoder_dim"):
            if getattr(self, name) % self.num_heads:
                raise ValueError(
                    f"DETRHeadSpec.{name}={getattr(self, name)} is not divisible by "
                    f"num_heads={self.num_heads}"
                )
        if self.num_decoder_layers < 1 or self.num_queries < 1 or self.num_classes < 1:
            raise ValueError(
                "DETRHeadSpec needs num_decoder_layers, num_queries and num_classes >= 1"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> DETRHeadSpec:
        """The card's DETR-lite: 8 queries, 2 encoder + 2 decoder layers, narrow widths
        (encoder 32, decoder 64, so the encoder→decoder maps are exercised)."""
        return cls(**{**TINY_PRESET, **overrides})

    @staticmethod
    def resolve_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
        """``{preset: "tiny" | "paper", **overrides}`` → the full mapping (``zoo.specs.to_spec``)."""
        from zoo.specs import expand_named_preset

        return expand_named_preset(value, PRESETS, "DETRHeadSpec")


TINY_PRESET: dict[str, Any] = {
    "num_queries": 8,
    "encoder_dim": 32,
    "decoder_dim": 64,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "ffn_dim": 128,
}
PRESETS: dict[str, dict[str, Any]] = {"paper": {}, "tiny": TINY_PRESET}


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class DETREncoderLayer(nn.Module):
    """Post-norm self-attention layer; the position embedding enters queries and keys only."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        qk = src + pos
        attn = self.self_attn(qk, qk, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DETRDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to the memory, FFN.

    ``query_pos`` is added to the self-attention queries/keys and the cross-attention
    queries; ``pos`` to the cross-attention keys; values never carry a position."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        qk = tgt + query_pos
        attn = self.self_attn(qk, qk, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn(
            tgt + query_pos,
            memory + pos,
            memory,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class DETRHead(nn.Module):
    """DETR head on a ``(B, in_channels, H, W)`` feature map (see the module docstring).

    ``forward(features, mask=None)`` returns ``{"pred_logits": (B, Q, num_classes + 1),
    "pred_boxes": (B, Q, 4) normalised cxcywh, "aux_outputs": [{"pred_logits",
    "pred_boxes"} for each earlier decoder layer, first layer first]}``; ``mask``
    ``(B, H, W)`` marks padded pixels (True = pad), which no query attends to.
    """

    def __init__(self, in_channels: int, spec: DETRHeadSpec | None = None) -> None:
        super().__init__()
        spec = spec if spec is not None else DETRHeadSpec()
        self.spec = spec
        enc, dec = spec.encoder_dim, spec.decoder_dim
        self.input_proj = nn.Conv2d(in_channels, enc, kernel_size=1)
        self.position = SinePositionEmbedding(num_pos_feats=enc // 2, normalize=True)
        self.task_token = nn.Parameter(torch.randn(1, 1, enc)) if spec.task_token else None
        self.encoder = nn.ModuleList(
            DETREncoderLayer(enc, spec.num_heads, spec.ffn_dim, spec.dropout)
            for _ in range(spec.num_encoder_layers)
        )
        self.memory_proj = nn.Linear(enc, dec) if enc != dec else nn.Identity()
        self.pos_proj = nn.Linear(enc, dec) if enc != dec else nn.Identity()
        for module in (self.encoder, self.memory_proj, self.pos_proj):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        layer = DETRDecoderLayer(dec, spec.num_heads, spec.ffn_dim, spec.dropout)
        self.decoder = nn.ModuleList(copy.deepcopy(layer) for _ in range(spec.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dec)
        self.query_embed = nn.Embedding(spec.num_queries, dec)
        self.class_embed = nn.Linear(dec, spec.num_classes + 1)
        self.bbox_embed = ProjectionMLP(
            dec, MLPSpec(hidden_dims=[dec, dec], out_dim=4, norm="none", act="relu")
        )

    def decode(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised decoder states of every layer, ``(num_decoder_layers, B, Q, decoder_dim)``."""
        if features.ndim != 4:
            raise ValueError(
                f"DETRHead expects a (B, C, H, W) feature map, got shape {tuple(features.shape)}"
            )
        if mask is not None and mask.shape != (features.shape[0], *features.shape[2:]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match the feature map "
                f"{tuple(features.shape)}; expected (B, H, W)"
            )
        src = self.input_proj(features)
        pos = self.position(src, mask).flatten(2).transpose(1, 2)  # (B, HW, enc)
        src = src.flatten(2).transpose(1, 2)
        padding = mask.flatten(1) if mask is not None else None
        tokens, token_pos, token_padding = src, pos, padding
        if self.task_token is not None:
            b = src.shape[0]
            tokens = torch.cat([self.task_token.expand(b, -1, -1), src], dim=1)
            token_pos = torch.cat([pos.new_zeros(b, 1, pos.shape[2]), pos], dim=1)
            if padding is not None:
                token_padding = torch.cat([padding.new_zeros(b, 1), padding], dim=1)
        for layer in self.encoder:
            tokens = layer(tokens, token_pos, token_padding)
        memory = tokens[:, 1:] if self.task_token is not None else tokens
        if self.spec.residual_memory:
            memory = src + memory
        memory, pos = self.memory_proj(memory), self.pos_proj(pos)

        query_pos = self.query_embed.weight.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, padding)
            states.append(self.decoder_norm(tgt))
        return torch.stack(states)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        states = self.decode(features, mask)
        logits = self.class_embed(states)  # every layer in one call
        boxes = self.bbox_embed(states).sigmoid()
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": lg, "pred_boxes": bx}
                for lg, bx in zip(logits[:-1].unbind(0), boxes[:-1].unbind(0))
            ],
        }
