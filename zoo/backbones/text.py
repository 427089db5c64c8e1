"""The CLIP text transformer, built from a ``transformers.CLIPTextConfig`` (no download).

Pooling follows OpenAI CLIP and SLIP: the feature at the EOT token, found as the argmax of
the token ids (EOT has the largest id in the CLIP BPE vocabulary), after ``final_layer_norm``.
``pooling="eos"`` takes the first ``eos_token_id`` instead (current Hugging Face behaviour).
``pooled_last_block`` (default on) runs the last layer at the pooled rows only: the same
features with 1/layers less compute (``zoo.backbones.pooled``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zoo.backbones.pooled import clip_text_layer_at, clip_text_layer_prunable


@dataclass
class TextSpec:
    """Shape of the causal CLIP text transformer (defaults: CLIP / SLIP, width 512, 12 layers)."""

    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    pooling: Literal["argmax", "eos"] = "argmax"
    attn_implementation: str = "sdpa"
    pooled_last_block: bool = True


class CLIPTextTower(nn.Module):
    """Causal text transformer with EOT pooling; wraps ``transformers.CLIPTextModel``."""

    def __init__(self, spec: TextSpec):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig(
            vocab_size=spec.vocab_size,
            hidden_size=spec.width,
            intermediate_size=int(spec.width * spec.mlp_ratio),
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            max_position_embeddings=spec.context_length,
            hidden_act=spec.act,
            layer_norm_eps=spec.layer_norm_eps,
            eos_token_id=spec.eos_token_id,
            bos_token_id=spec.eos_token_id - 1,
            pad_token_id=0,
        )
        config._attn_implementation = spec.attn_implementation
        self.spec = spec
        self.model = CLIPTextModel(config)
        self.width = spec.width
        self.context_length = spec.context_length

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embeddings.token_embedding

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled EOT features (B, width) for token ids (B, L)."""
        return self.forward_embeddings(self.token_embedding(tokens), self.eot_index(tokens))

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled position: argmax of the ids (OpenAI / SLIP), or the first ``eos_token_id``
        (Hugging Face models whose EOS is not the largest id)."""
        if self.spec.pooling == "eos":
            return (tokens == self.spec.eos_token_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def forward_embeddings(
        self, token_embeds: torch.Tensor, eot_index: torch.Tensor
    ) -> torch.Tensor:
        """Run the transformer on token embeddings (prompt learning: CoOp/CoCoOp).

        ``token_embeds`` (B, L, width) replace the token-embedding lookup; positional
        embeddings are added here; ``eot_index`` (B,) selects the pooled position.
        """
        from transformers.masking_utils import create_causal_mask

        hidden = self.model.embeddings(inputs_embeds=token_embeds)
        mask = create_causal_mask(
            config=self.model.config, inputs_embeds=hidden, attention_mask=None, cache=None
        )
        layers = self.model.encoder.layers
        if self.spec.pooled_last_block and len(layers) and clip_text_layer_prunable(layers[-1]):
            # The last layer runs at the EOT rows only (zoo.backbones.pooled): same output.
            for layer in layers[:-1]:
                hidden = layer(hidden, mask, is_causal=True)
            return self.model.final_layer_norm(clip_text_layer_at(layers[-1], hidden, eot_index))
        hidden = self.model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        hidden = self.model.final_layer_norm(hidden.last_hidden_state)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_index]
