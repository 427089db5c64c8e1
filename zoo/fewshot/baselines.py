"""The training-free baseline of the few-shot protocol: zero-shot CLIP.

``ZeroShotCLIP`` is a :class:`~zoo.fewshot.module.FewShotModule` whose head holds the frozen
CLIP's text classifier for the dataset's template(s) and trains nothing: CoOp's
``ZeroshotCLIP`` (one hand-written template per dataset, ``trainers/coop.py``) or, with
several templates, Tip-Adapter's ImageNet ensemble (each prompt L2-normalised, averaged,
renormalised). Logits are ``s·f̂ Wᵀ`` with s the CLIP's ``exp(logit_scale)`` (100 for the
OpenAI weights). It fits with ``trainer.max_epochs: 0``; the evaluation callbacks
(``ZeroShotEval``, ``LinearProbeEval``) then run at fit end on the same splits as every
adapted method, so the baselines share the protocol.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoo.backbones import DualEncoder
from zoo.backbones.clip_head import ClipHead, register_clip_head
from zoo.fewshot.clip_source import CLIPSource
from zoo.fewshot.module import FewShotModule
from zoo.protocols import Tokenizer


@register_clip_head
class ZeroShotHead(ClipHead):
    """The frozen text classifier (buffer ``text_weights``, (C, D) unit rows):
    ``logits = exp(t)·normalize(f) Wᵀ``."""

    type_name = "zeroshot"

    def __init__(self, embed_dim: int, classnames: list[str]):
        super().__init__(classnames)
        self.embed_dim = int(embed_dim)
        self.register_buffer("text_weights", torch.zeros(len(self.classnames), self.embed_dim))

    def to_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "classnames": list(self.classnames)}

    def class_weights(self, encoder: DualEncoder) -> torch.Tensor:
        return self.text_weights

    def logits(self, encoder: DualEncoder, image_features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(image_features, dim=-1)
        return encoder.logit_scale.exp() * f @ self.text_weights.t()


class ZeroShotCLIP(FewShotModule):
    """Zero-shot CLIP on the few-shot protocol's splits (nothing trains)."""

    def __init__(self, clip: CLIPSource | dict[str, Any] | None = None):
        super().__init__(clip)
        self.save_hyperparameters()

    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> ZeroShotHead:
        head = ZeroShotHead(self.encoder.embed_dim, classnames)
        if tokenizer is not None:
            if not templates:
                raise ValueError("zero-shot CLIP needs prompt templates (data.templates)")
            head.text_weights.copy_(self.zeroshot_weights(classnames, templates, tokenizer))
        return head
