"""CLIP-Adapter (Gao et al., 2021, "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", IJCV 2023, arXiv 2110.04544; official code github.com/gaopengcuhk/CLIP-Adapter
@ 08d07f8, ``clip_adapter.py``, a trainer for CoOp's Dassl code base).

The frozen CLIP's image feature f (unnormalised, the image tower's output) goes through a
bottleneck adapter and is blended back with itself:

    A(f) = ReLU(ReLU(f W₁) W₂),  W₁: d → d/4, W₂: d/4 → d, no biases      (``Adapter``)
    x = α·A(f) + (1 − α)·f,  α = 0.2                        (``CustomCLIP.forward``, ``ratio``)
    logits = exp(t) · x̂ Wᵀ,  x̂ = x / ‖x‖                    (CLIP's logit scale, 100 for OpenAI)
    L = CE(logits, y)                                        (``forward_backward``)

W is the frozen zero-shot text classifier of the dataset's hand-written prompt (CoOp's
``CUSTOM_TEMPLATES``, e.g. "a photo of a {}." on ImageNet; the datamodule's ``templates``).
Only the adapter trains: the code turns off every gradient whose name lacks ``adapter`` and
gives the optimiser ``model.adapter`` alone. The head is
:class:`zoo.backbones.clip_head.AdapterHead`; ``ratio`` is the code's fixed α, and
``learnable_ratio`` makes it a trained parameter initialised to ``ratio`` (an option, off by
default: the paper's α is fixed).

Training hyper-parameters: the repository ships no config; its README says to run it as a
CoOp trainer with CoOp's commands, so the defaults are CoOp's ``configs/trainers/CoOp/rn50*.yaml``
with Dassl's defaults (github.com/KaiyangZhou/CoOp @ ff61507): SGD lr 0.002, momentum 0.9,
weight decay 5e-4 on every trainable parameter (Dassl's ``build_optimizer``), one warm-up
epoch at a constant 1e-5, then cosine over ``max_epoch`` stepped per epoch; batch 32,
``RandomResizedCrop`` (scale 0.08-1) + flip at 224 px bicubic; ``max_epoch`` 200
(``rn50.yaml``) or 50 on ImageNet (``rn50_ep50.yaml``, CoOp's ImageNet script): the
recipes set the epochs. The CLIP-Adapter paper's own training values are not recorded in the
sources this zoo follows.

The model protocols: ``features(images, "embed")`` is the adapted feature x and
``class_weights`` the text classifier, so :class:`zoo.eval.ZeroShotEval` (``name: fewshot``)
scores the adapted model; ``class_logits`` returns the training logits (CLIP's scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.backbones.clip_head import AdapterHead
from zoo.fewshot.clip_source import CLIPSource
from zoo.fewshot.module import DASSL_SGD_OPTIM, FewShotModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import FeatureKind, Tokenizer

# CoOp's configs/trainers/CoOp/rn50.yaml + Dassl defaults (SGD momentum 0.9, weight decay
# 5e-4, one decayed group), the configs CLIP-Adapter's README says to run it with.
CLIP_ADAPTER_OPTIM = DASSL_SGD_OPTIM


class ClipAdapter(FewShotModule):
    """CLIP-Adapter on a frozen CLIP (see the module docstring).

    Args:
        clip: the frozen CLIP (:class:`~zoo.fewshot.clip_source.CLIPSource`).
        reduction: the bottleneck's reduction factor (the code's 4).
        ratio: the residual ratio α (the code's 0.2); 0 reproduces zero-shot CLIP.
        learnable_ratio: train α as a parameter initialised to ``ratio`` (not in the paper).
        optim: the optimiser (defaults: :data:`CLIP_ADAPTER_OPTIM`).
    """

    def __init__(
        self,
        clip: CLIPSource | dict[str, Any] | None = None,
        reduction: int = 4,
        ratio: float = 0.2,
        learnable_ratio: bool = False,
        optim: OptimSpec = CLIP_ADAPTER_OPTIM,
    ):
        super().__init__(clip, merge_onto(CLIP_ADAPTER_OPTIM, optim))
        self.save_hyperparameters()
        if reduction < 1 or self.encoder.embed_dim // reduction < 1:
            raise ValueError(
                f"model.reduction must be in [1, {self.encoder.embed_dim}], got {reduction}"
            )
        self.reduction, self.ratio, self.learnable_ratio = reduction, ratio, learnable_ratio

    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> AdapterHead:
        head = AdapterHead(
            self.encoder.embed_dim, classnames, self.reduction, self.ratio, self.learnable_ratio
        )
        if tokenizer is not None:  # None: rebuilt from a checkpoint, whose state fills W
            if not templates:
                raise ValueError("CLIP-Adapter needs the dataset's prompt (data.templates)")
            head.text_weights.copy_(self.zeroshot_weights(classnames, templates, tokenizer))
        return head

    @property
    def adapter_head(self) -> AdapterHead:
        assert isinstance(self.head, AdapterHead), "configure_classes() first"
        return self.head

    def image_features(self, images: Tensor) -> Tensor:
        # nothing before the frozen image tower trains: no activations kept for backward
        with torch.no_grad():
            return self.encoder.encode_image(images)

    # --- the model protocols -------------------------------------------------------------------
    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        """``embed``: the adapted feature x = α·A(f) + (1 − α)·f; ``trunk``: the frozen one."""
        if kind == "embed":
            return self.adapter_head.adapt(self.image_features(images))
        return super().features(images, kind)

    def class_logits(self, features: Tensor, class_weights: Tensor) -> Tensor:
        """``exp(t) · x̂ Wᵀ`` of adapted features: the logits the adapter was trained on."""
        return self.adapter_head.scaled_logits(self.encoder, features, class_weights)

    def class_weights_for(
        self, classnames: Sequence[str], templates: Sequence[Any], tokenizer: Tokenizer | None
    ) -> Tensor:
        """Other class names: the frozen zero-shot classifier of their prompts (the adapter
        acts on the image side only, so it applies to any classifier)."""
        if tokenizer is None:
            return super().class_weights_for(classnames, templates, tokenizer)
        return self.zeroshot_weights(list(classnames), list(templates), tokenizer)
