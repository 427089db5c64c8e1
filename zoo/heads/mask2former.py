"""Mask2Former-lite: a masked-attention mask head on one ViT feature map (ViSFT's segment head).

Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022,
as ViSFT (arXiv 2401.10222) instantiates it on a single ViT map. Facts from the official code:
ViSFT ``mmf/models/visft/visft_heads.py`` (the head's arguments), ``msdeformattn.py`` (pixel
decoder), ``mask2former_transformer_decoder.py`` (decoder, copied from facebookresearch/
Mask2Former ``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``).

Pixel decoder, on the ``(B, C_in, H, W)`` map (ViSFT feeds the one ``res5`` map):

1. ``src = GN(Conv1x1(x))`` to ``conv_dim`` channels; ``pos = sine(src) + level_embed``
   (:class:`~zoo.heads.position.SinePositionEmbedding`, ``conv_dim/2`` features per axis).
2. ``encoder_layers`` post-norm encoder layers over the ``H·W`` tokens:
   ``t = LN(t + Attn(q=k=t+pos, v=t))``, ``t = LN(t + W2·ReLU(W1·t))`` (FFN ``encoder_ffn_dim``).
   The encoder output ``memory`` is what the decoder cross-attends to.
3. One FPN level: ``y = ReLU(GN(Conv3x3(GN(Conv1x1_nobias(x)) + memory)))`` and
   ``mask_features = Conv1x1(y)`` (``mask_dim`` channels).

**Deviation (documented):** the official pixel decoder's encoder is multi-scale deformable
attention (``MSDeformAttn``, 4 sampling points per head); at this scale and on one level
standard multi-head attention over all ``H·W`` tokens replaces it (it needs a compiled CUDA
op and gains nothing on a 16×16 map). With only ``res5`` as input, the official FPN level
runs at the input resolution (its "upsampling" interpolates to the same size), so the mask
features have the map's ``H×W``: ``mask_upsample=1`` (the default) is the official
behaviour; ``mask_upsample=s`` bilinearly upsamples the fused map by ``s`` before the 3×3
conv, an option for coarse tiny maps (8×8 tokens).

Masked-attention decoder (``decoder_layers`` layers, ``num_queries`` learnable query features
plus learnable query positions):

- Before the first layer and after each layer the queries predict, through a shared
  ``LayerNorm``: class logits ``Linear(hidden, num_classes + 1)`` (last = no object) and
  masks ``einsum("bqc,bchw->bqhw", MLP_3(q), mask_features)``. That is
  ``decoder_layers + 1`` predictions; the last is the output and the others are
  ``aux_outputs`` (so the loss has ``1 + decoder_layers`` sets of terms).
- Each layer: masked cross-attention to ``memory`` (keys ``memory + pos``, values
  ``memory``, queries ``q + query_pos``), then self-attention, then FFN, all post-norm with
  dropout 0. The cross-attention mask comes from the previous prediction, resized bilinearly
  to the memory's size: a query may attend a pixel only where ``sigmoid(mask) ≥ 0.5``
  (pixels with ``< 0.5`` are blocked), and a query whose mask blocks every pixel attends
  everywhere (:func:`masked_attention_mask`). The mask is detached.

Paper-scale numbers (:data:`MASK2FORMER_VISFT`, ViSFT ``visft_heads.py``): conv / mask dim
256, GroupNorm(32), 8 heads, 6 encoder layers with FFN 512, dropout 0; decoder hidden 256,
FFN 1024, 9 layers, 100 queries, 80 classes (the Mask2Former COCO config has decoder FFN
2048; ViSFT uses 1024).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.heads.mlp import MLPSpec, ProjectionMLP
from zoo.heads.position import SinePositionEmbedding


@dataclass
class Mask2FormerHeadSpec:
    """Sizes of :class:`Mask2FormerLiteHead`; the defaults are ViSFT's paper scale
    (module docstring). ``Mask2FormerHeadSpec.tiny(**overrides)`` is the CPU-sized head; a
    mapping ``{preset: "paper" | "tiny", **overrides}`` resolves through
    :func:`zoo.specs.to_spec`."""

    num_classes: int = 80
    num_queries: int = 100
    conv_dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    encoder_layers: int = 6
    encoder_ffn_dim: int = 512
    hidden_dim: int = 256
    decoder_layers: int = 9
    decoder_ffn_dim: int = 1024
    norm_groups: int = 32
    dropout: float = 0.0
    mask_upsample: int = 1

    def __post_init__(self) -> None:
        name = type(self).__name__
        positive = (
            "num_classes",
            "num_queries",
            "conv_dim",
            "mask_dim",
            "num_heads",
            "encoder_ffn_dim",
            "hidden_dim",
            "decoder_layers",
            "decoder_ffn_dim",
            "norm_groups",
            "mask_upsample",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{name}.{key} must be >= 1, got {getattr(self, key)}")
        if self.encoder_layers < 0:
            raise ValueError(f"{name}.encoder_layers must be >= 0, got {self.encoder_layers}")
        for key in ("conv_dim", "hidden_dim"):
            dim = getattr(self, key)
            # the sine embedding gives dim/2 features per axis, and the heads split dim
            if dim % 2 or dim % self.num_heads:
                raise ValueError(
                    f"{name}.{key}={dim} must be even and divisible by num_heads={self.num_heads}"
                )
        if self.conv_dim % self.norm_groups:
            raise ValueError(
                f"{name}.conv_dim={self.conv_dim} is not divisible by "
                f"norm_groups={self.norm_groups}"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> Mask2FormerHeadSpec:
        """CPU-sized head (8 queries, width 32, 1 encoder + 2 decoder layers, 2× upsampled
        mask features); set ``num_classes`` to the data's classes."""
        return cls(**{**TINY_PRESET, **overrides})

    @staticmethod
    def resolve_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
        """``{preset: "tiny" | "paper", **overrides}`` → the full mapping (``zoo.specs.to_spec``)."""
        from zoo.specs import expand_named_preset

        return expand_named_preset(value, PRESETS, "Mask2FormerHeadSpec")


TINY_PRESET: dict[str, Any] = {
    "num_classes": 8,
    "num_queries": 8,
    "conv_dim": 32,
    "mask_dim": 32,
    "num_heads": 4,
    "encoder_layers": 1,
    "encoder_ffn_dim": 64,
    "hidden_dim": 32,
    "decoder_layers": 2,
    "decoder_ffn_dim": 64,
    "norm_groups": 8,
    "mask_upsample": 2,
}
PRESETS: dict[str, dict[str, Any]] = {"paper": {}, "tiny": TINY_PRESET}


#: ViSFT's segmentation head (``visft_heads.py``: ``MSDeformAttnPixelDecoder`` +
#: ``MultiScaleMaskedTransformerDecoder`` arguments).
MASK2FORMER_VISFT = Mask2FormerHeadSpec()

#: CPU-sized head for tests and tiny recipes (set ``num_classes`` to the data's classes).
MASK2FORMER_TINY = Mask2FormerHeadSpec.tiny()


def masked_attention_mask(
    mask_logits: torch.Tensor, size: tuple[int, int], num_heads: int
) -> torch.Tensor:
    """Mask2Former's attention mask from mask logits ``(B, Q, h, w)``.

    Returns bool ``(B·num_heads, Q, H·W)`` for ``nn.MultiheadAttention`` (True = may not
    attend; batch-major, each image's rows repeated per head): the logits are resized
    bilinearly (``align_corners=False``) to ``size = (H, W)``, pixels with
    ``sigmoid < 0.5`` are blocked, and a row that would block every pixel blocks none
    (otherwise its softmax has no support). Detached: no gradient flows through the mask.
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.detach().repeat_interleave(num_heads, dim=0)


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class _AttentionLayer(nn.Module):
    """Post-norm residual attention ``LN(x + Attn(x + pos_q, memory + pos_k, memory))``."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = self.attn(
            _with_pos(x, query_pos),
            _with_pos(memory, key_pos),
            memory,
            attn_mask=attn_mask,
            need_weights=need_weights,
            average_attn_weights=False,
        )
        return self.norm(x + self.dropout(out)), weights


class _FeedForward(nn.Module):
    """Post-norm residual FFN ``LN(x + W2·ReLU(W1·x))``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout(out))


def _xavier_matrices(module: nn.Module) -> None:
    # the official layers' _reset_parameters: xavier-uniform on every weight matrix
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _c2_xavier(conv: nn.Conv2d) -> None:
    # detectron2's c2_xavier_fill: kaiming-uniform with a=1, zero bias
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _AttentionLayer(dim, num_heads, dropout)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)
        _xavier_matrices(self)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.self_attn(tokens, tokens, query_pos=pos, key_pos=pos)
        return self.ffn(tokens)


class Mask2FormerPixelDecoder(nn.Module):
    """Single-level pixel decoder: ``(B, C_in, H, W)`` → ``(memory (B, conv_dim, H, W),
    mask_features (B, mask_dim, s·H, s·W))`` with ``s = mask_upsample`` (module docstring)."""

    def __init__(self, in_channels: int, spec: Mask2FormerHeadSpec) -> None:
        super().__init__()
        c = spec.conv_dim
        self.mask_upsample = spec.mask_upsample
        self.input_proj = nn.Sequential(
            nn.Conv2d(in_channels, c, kernel_size=1), nn.GroupNorm(spec.norm_groups, c)
        )
        nn.init.xavier_uniform_(self.input_proj[0].weight, gain=1)
        nn.init.zeros_(self.input_proj[0].bias)
        self.position = SinePositionEmbedding(num_pos_feats=c // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.randn(1, c))
        self.layers = nn.ModuleList(
            _EncoderLayer(c, spec.num_heads, spec.encoder_ffn_dim, spec.dropout)
            for _ in range(spec.encoder_layers)
        )
        self.lateral = nn.Sequential(
            nn.Conv2d(in_channels, c, kernel_size=1, bias=False), nn.GroupNorm(spec.norm_groups, c)
        )
        self.output = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(spec.norm_groups, c),
            nn.ReLU(),
        )
        self.mask_features = nn.Conv2d(c, spec.mask_dim, kernel_size=1)
        for conv in (self.lateral[0], self.output[0], self.mask_features):
            _c2_xavier(conv)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.input_proj(features)
        b, c, h, w = src.shape
        pos = self.position(src) + self.level_embed[0][None, :, None, None]
        tokens = src.flatten(2).transpose(1, 2)
        pos_tokens = pos.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens, pos_tokens)
        memory = tokens.transpose(1, 2).reshape(b, c, h, w)
        fused = self.lateral(features) + memory
        if self.mask_upsample > 1:
            fused = F.interpolate(
                fused, scale_factor=self.mask_upsample, mode="bilinear", align_corners=False
            )
        return memory, self.mask_features(self.output(fused))


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's transformer decoder on one level (module docstring)."""

    def __init__(self, spec: Mask2FormerHeadSpec) -> None:
        super().__init__()
        d = spec.hidden_dim
        self.num_heads = spec.num_heads
        self.position = SinePositionEmbedding(num_pos_feats=d // 2, normalize=True)
        self.input_proj: nn.Module = nn.Identity()
        if spec.conv_dim != d:
            self.input_proj = nn.Conv2d(spec.conv_dim, d, kernel_size=1)
            _c2_xavier(self.input_proj)
        self.level_embed = nn.Parameter(torch.randn(1, d))
        self.query_feat = nn.Embedding(spec.num_queries, d)
        self.query_embed = nn.Embedding(spec.num_queries, d)
        self.cross_attention = nn.ModuleList(
            _AttentionLayer(d, spec.num_heads, 0.0) for _ in range(spec.decoder_layers)
        )
        self.self_attention = nn.ModuleList(
            _AttentionLayer(d, spec.num_heads, 0.0) for _ in range(spec.decoder_layers)
        )
        self.ffn = nn.ModuleList(
            _FeedForward(d, spec.decoder_ffn_dim, 0.0) for _ in range(spec.decoder_layers)
        )
        for layers in (self.cross_attention, self.self_attention, self.ffn):
            for layer in layers:
                _xavier_matrices(layer)
        self.decoder_norm = nn.LayerNorm(d)
        self.class_embed = nn.Linear(d, spec.num_classes + 1)
        self.mask_embed = ProjectionMLP(
            d, MLPSpec(hidden_dims=[d, d], out_dim=spec.mask_dim, norm="none", act="relu")
        )

    def _predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.decoder_norm(queries)
        logits = self.class_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        return logits, masks, masked_attention_mask(masks, size, self.num_heads)

    def forward(
        self, memory: torch.Tensor, mask_features: torch.Tensor, return_attention: bool = False
    ) -> dict[str, object]:
        src = self.input_proj(memory)
        b, _, h, w = src.shape
        pos = self.position(src).flatten(2).transpose(1, 2)
        src = src.flatten(2).transpose(1, 2) + self.level_embed[0]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        queries = self.query_feat.weight[None].expand(b, -1, -1)

        logits, masks, blocked = self._predict(queries, mask_features, (h, w))
        predictions = [(logits, masks)]
        attention: list[torch.Tensor] = []
        for cross, self_attn, ffn in zip(self.cross_attention, self.self_attention, self.ffn):
            queries, weights = cross(
                queries,
                src,
                query_pos=query_pos,
                key_pos=pos,
                attn_mask=blocked,
                need_weights=return_attention,
            )
            if weights is not None:
                attention.append(weights)
            queries, _ = self_attn(queries, queries, query_pos=query_pos, key_pos=query_pos)
            queries = ffn(queries)
            logits, masks, blocked = self._predict(queries, mask_features, (h, w))
            predictions.append((logits, masks))

        out: dict[str, object] = {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in predictions[:-1]],
        }
        if return_attention:
            out["cross_attention"] = attention
        return out


class Mask2FormerLiteHead(nn.Module):
    """Pixel decoder + masked-attention decoder on one ``(B, in_channels, H, W)`` map.

    ``forward`` returns ``{"pred_logits": (B, Q, num_classes + 1), "pred_masks": (B, Q,
    s·H, s·W), "aux_outputs": [{"pred_logits", "pred_masks"}] * decoder_layers}`` (mask
    logits, before sigmoid; ``aux_outputs[0]`` is the prediction of the learnable queries
    before the first layer). With ``return_attention=True`` it adds ``"cross_attention"``:
    per layer the cross-attention weights ``(B, num_heads, Q, H·W)``.
    """

    def __init__(self, in_channels: int, spec: Mask2FormerHeadSpec | None = None) -> None:
        super().__init__()
        self.spec = spec if spec is not None else Mask2FormerHeadSpec()
        self.in_channels = in_channels
        self.pixel_decoder = Mask2FormerPixelDecoder(in_channels, self.spec)
        self.decoder = MaskedAttentionDecoder(self.spec)

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, object]:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"Mask2FormerLiteHead expects a (B, {self.in_channels}, H, W) feature map, "
                f"got shape {tuple(features.shape)}"
            )
        memory, mask_features = self.pixel_decoder(features)
        return self.decoder(memory, mask_features, return_attention=return_attention)


def instance_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    image_size: tuple[int, int],
    top_k: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Mask2Former's instance inference (``maskformer_model.py``, ``instance_inference``).

    Per image: class scores ``softmax(logits)[:, :-1]``; the ``top_k`` (query, class) pairs
    over all ``Q·C`` scores; their masks upsampled bilinearly to ``image_size`` and
    thresholded at logit 0; score = class score × the mean sigmoid inside the binary mask.
    Returns per image ``{"masks": bool (K, H, W), "scores": (K,), "labels": int64 (K,)}``,
    the input ``torchmetrics``' ``MeanAveragePrecision(iou_type="segm")`` takes.
    """
    b, q, c1 = pred_logits.shape
    num_classes = c1 - 1
    k = min(top_k, q * num_classes)
    scores = pred_logits.softmax(-1)[..., :-1].flatten(1)
    top_scores, top_index = scores.topk(k, dim=1, sorted=False)
    labels = top_index % num_classes
    queries = torch.div(top_index, num_classes, rounding_mode="floor")
    masks = torch.gather(
        pred_masks, 1, queries[..., None, None].expand(-1, -1, *pred_masks.shape[-2:])
    )
    masks = F.interpolate(masks, size=image_size, mode="bilinear", align_corners=False)
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid() * binary).flatten(2).sum(-1) / (binary.flatten(2).sum(-1) + 1e-6)
    final = top_scores * mask_scores
    return [{"masks": binary[i].bool(), "scores": final[i], "labels": labels[i]} for i in range(b)]
