"""CoCoOp: conditional prompt learning for a frozen CLIP (Zhou, Yang, Loy, Liu, "Conditional
Prompt Learning for Vision-Language Models", CVPR 2022, arXiv 2203.05557; official code
github.com/KaiyangZhou/CoOp @ ff61507, ``trainers/cocoop.py``).

    π(x) = h_θ(f̂(x)),  h_θ = Linear(d, d/16) → ReLU → Linear(d/16, width)      (§3.2)
    v_m(x) = v_m + π(x),  t_c(x) = [SOS] v_1(x) … v_M(x) [CLASS_c] [.] [EOS]
    p(y = c | x) = exp(s·cos(f, g(t_c(x)))) / Σ_j exp(s·cos(f, g(t_j(x))))     (Eq. 3)
    L = CE(p(· | x), y); trained: the context v and the meta-net θ

- the meta-net reads the L2-normalised image feature f̂ (the official code normalises the
  feature before ``prompt_learner(image_features)``): :func:`zoo.fewshot.prompts.meta_net`;
- every image gets its own C prompts; all ``B × C`` prompts of a batch run through the frozen
  text tower in one pass (:meth:`zoo.fewshot.prompts.CoCoOpHead.logits`; the official code
  loops over the images), in chunks of at most ``max_prompts`` prompts;
- defaults (``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``): M = 4
  initialised from ``"a photo of a"``, batch 1, 10 epochs, SGD lr 0.002, momentum 0.9,
  weight decay 5e-4 on every trained tensor (Dassl), cosine per epoch after one warm-up
  epoch at the constant 1e-5 (:data:`COCOOP_OPTIM`, as CoOp's);
- both CLIP towers are frozen (:class:`zoo.freeze.FrozenTower`);
- precision: the official config runs CLIP and the meta-net in fp16 (``PREC: fp16``) on
  GPU; here the trainer's ``precision`` decides (the GPU recipes use ``16-mixed``: fp16
  autocast with fp32 master weights, the safer variant of the same arithmetic).

Evaluation. The classifier depends on the image, so a plain ``(C, D)`` matrix cannot be it:

- ``class_weights(classnames, templates)`` returns the prompts' text features with zero
  shift (π(x) = 0, the context v alone): what the context says without an image, useful to
  inspect, **not** the classifier;
- ``class_logits(features, class_weights)`` (:class:`zoo.protocols.ClassLogits`) is the real
  classifier: it shifts the context by π(f̂) per image and scores each image against its own
  prompts. :class:`zoo.eval.ZeroShotEval` calls it, so the ``fewshot`` accuracy is CoCoOp's.
  The class names are those the ``class_weights`` came from (the trained classes, or new
  names for base-to-new evaluation: the learned context and meta-net write prompts for any
  name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.fewshot.clip_source import CLIPSource
from zoo.fewshot.module import DASSL_SGD_OPTIM, FewShotModule
from zoo.fewshot.prompts import ClassTokenPosition, CoCoOpHead, PromptLayout, PromptLearner
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import ProtocolUnavailable, Template, Tokenizer

# Dassl OPTIM defaults and configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml: SGD,
# lr 0.002, momentum 0.9, weight decay 5e-4, cosine per epoch, 1 constant warm-up epoch at 1e-5.
COCOOP_OPTIM = DASSL_SGD_OPTIM


class CoCoOp(FewShotModule):
    """CoCoOp on a frozen CLIP (see the module docstring).

    Args:
        clip: the frozen CLIP (:class:`~zoo.fewshot.clip_source.CLIPSource`).
        n_ctx: M (ignored with ``ctx_init``; the paper's default is the 4 words of
            ``"a photo of a"``).
        ctx_init: init phrase, or ``None`` for N(0, ``init_std``²).
        class_token_position: ``end`` (the official CoCoOp code has only ``end``).
        init_std: the random init's standard deviation (0.02).
        max_prompts: at most this many prompts per text-tower pass (memory bound).
        optim: merged onto :data:`COCOOP_OPTIM`.
    """

    def __init__(
        self,
        clip: CLIPSource | dict[str, Any] | None = None,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        class_token_position: ClassTokenPosition = "end",
        init_std: float = 0.02,
        max_prompts: int = 8192,
        optim: OptimSpec = COCOOP_OPTIM,
    ):
        super().__init__(clip, merge_onto(COCOOP_OPTIM, optim))
        self.save_hyperparameters()
        self.n_ctx, self.ctx_init = n_ctx, ctx_init
        self.class_token_position, self.init_std = class_token_position, init_std
        self.max_prompts = max_prompts
        # (class_weights rows, their prompt layout): the class lists class_weights was last
        # asked for, so that class_logits scores the same names (see the module docstring).
        self._scored: list[tuple[Tensor, PromptLayout | None]] = []

    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> CoCoOpHead:
        learner = PromptLearner(
            classnames,
            tokenizer,
            self.encoder,
            n_ctx=self.n_ctx,
            ctx_init=self.ctx_init,
            class_token_position=self.class_token_position,
            init_std=self.init_std,
        )
        return CoCoOpHead(learner, self.encoder.embed_dim, self.max_prompts)

    # --- evaluation protocols -----------------------------------------------------------------
    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """The zero-shift prompts' text features (π(x) = 0) of ``classnames``; remembered so
        that :meth:`class_logits` scores those same classes with the image-conditioned
        prompts."""
        assert self.head is not None, "configure_classes() first"
        if list(classnames) == self.classnames:
            weights, layout = self.head.class_weights(self.encoder), None
        else:
            if tokenizer is None:
                raise ProtocolUnavailable(
                    f"{type(self).__name__} writes prompts for new class names with the "
                    "datamodule's tokenizer, and the datamodule has none"
                )
            layout = self.head.learner.layout_for(classnames, tokenizer, self.encoder)
            weights = self.head.learner.text_features(self.encoder, layout=layout)
        self._scored = [(weights.detach().float().cpu(), layout), *self._scored[:3]]
        return weights

    def class_weights_for(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        tokenizer: Tokenizer | None,
    ) -> Tensor:
        return self.class_weights(classnames, templates, tokenizer=tokenizer)

    def class_logits(self, features: Tensor, class_weights: Tensor) -> Tensor:
        """(B, C) CoCoOp logits of ``features(images, "embed")`` for the classes whose
        :meth:`class_weights` these are: every image against its own shifted prompts."""
        assert self.head is not None, "configure_classes() first"
        key = class_weights.detach().float().cpu()
        for weights, layout in self._scored:
            if weights.shape == key.shape and torch.equal(weights, key):
                return self.head.logits_for(self.encoder, features, layout)
        own = self.head.class_weights(self.encoder).detach().float().cpu()
        if own.shape == key.shape and torch.equal(own, key):
            return self.head.logits_for(self.encoder, features, None)
        raise ProtocolUnavailable(
            f"{type(self).__name__}.class_logits scores the classes of a class_weights() call; "
            "these class weights come from none of them"
        )
