"""A vision–language model: a timm vision encoder, a projector and a Hugging Face causal LM.

LLaVA's layout (Liu et al., 2023; github.com/haotian-liu/LLaVA ``llava_arch.py``,
``multimodal_projector/builder.py``): the vision tower's token sequence is projected into the
LM's embedding space (``linear`` or ``mlp2x_gelu``) and placed before the text embeddings.
The LM is built from a ``transformers`` config dict (``model_type`` + fields, e.g. a tiny
``LlamaConfig`` or ``GPT2Config``), never downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.backbones.vision import VisionEncoder, VisionSpec

PROJECTORS = ("linear", "mlp2x_gelu")
# Config keys that would make transformers import code shipped with a model.
_REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's ``build_vision_projector``: ``linear`` or ``mlp2x_gelu`` (Linear, GELU, Linear)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"unknown projector {kind!r}; known: {list(PROJECTORS)}")


def language_model_config(config: dict[str, Any]):
    """A ``transformers.PretrainedConfig`` from its dict (``model_type`` names the class)."""
    from transformers import AutoConfig

    config = dict(config)
    bad = sorted(k for k in _REMOTE_CODE_KEYS if k in config)
    if bad:
        raise ValueError(f"language_model config may not ask for remote code: {bad}")
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ValueError("language_model config needs a model_type, e.g. 'llama' or 'gpt2'")
    return AutoConfig.for_model(model_type, **config)


class VisionLanguageModel(nn.Module):
    """``vision`` (:class:`VisionEncoder`), ``projector`` and ``language_model``
    (``AutoModelForCausalLM``). ``logits(images, input_ids)`` are the LM's next-token logits
    over [image tokens, text tokens]; ``features(images)`` the vision tower's pooled features."""

    def __init__(
        self, vision: VisionSpec, language_model: dict[str, Any], projector: str = "mlp2x_gelu"
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.vision = VisionEncoder(vision)
        lm_config = language_model_config(language_model)
        self.language_model = AutoModelForCausalLM.from_config(lm_config)
        self.projector_type = projector
        self.projector = build_projector(
            projector, self.vision.num_features, int(lm_config.hidden_size)
        )

    def to_config(self) -> dict[str, Any]:
        """The fields that rebuild this model (``language_model`` as a diff against the
        config class's defaults, as ``save_pretrained`` writes it)."""
        import dataclasses

        return {
            "vision": dataclasses.asdict(self.vision.spec),
            "projector": self.projector_type,
            "language_model": self.language_model.config.to_diff_dict(),
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision.features(images)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden): the projected vision token sequence."""
        return self.projector(self.vision.tokens(images))

    def logits(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image_embeds = self.image_tokens(images)
        text_embeds = self.language_model.get_input_embeddings()(input_ids)
        embeds = torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(image_embeds.shape[:2])
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask)
        return out.logits

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.logits(images, input_ids, **kwargs)
