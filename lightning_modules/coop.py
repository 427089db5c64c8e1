"""CoOp: context optimisation for a frozen CLIP (Zhou, Yang, Loy, Liu, "Learning to Prompt for
Vision-Language Models", IJCV 2022, arXiv 2109.01134; official code
github.com/KaiyangZhou/CoOp @ ff61507, ``trainers/coop.py``).

    t_c = [SOS][V]_1 … [V]_M [CLASS_c][.][EOS]                        (§3.2, Eq. 2)
    p(y = c | x) = exp(s·cos(f, g(t_c))) / Σ_j exp(s·cos(f, g(t_j)))  (Eq. 3)
    L = CE(p(· | x), y); only [V]_1…M are trained

- t_c: :meth:`zoo.fewshot.prompts.PromptLearner.prompts` (token-embedding space: the frozen
  token embeddings of ``"X X … X <name>."`` with the M context slots replaced by ``ctx``);
  ``class_token_position`` ``end`` (default) / ``middle`` / ``front``; ``class_specific``
  (CSC) learns one context per class instead of one shared context;
- g: CLIP's frozen text transformer on the embeddings, pooled at EOT, projected
  (:meth:`zoo.backbones.DualEncoder.encode_text_embeddings`); f: CLIP's frozen image feature;
  s = exp(logit scale) of the CLIP (100 for OpenAI weights): :class:`~zoo.fewshot.prompts.CoOpHead`;
- init: N(0, 0.02²) (``init_std``) or the word embeddings of ``ctx_init`` (e.g.
  ``"a photo of a"``, M = 4: the ``*_ctxv1`` configs); M = 16 by default;
- the loss is cross-entropy (:meth:`zoo.fewshot.module.FewShotModule.loss_terms`);
- both CLIP towers are frozen (:class:`zoo.freeze.FrozenTower`, gradients flow *through* the
  text tower into ``ctx``; ``zoo fit``'s ``FrozenTowerCheck`` proves them bit-identical);
  the optimiser sees ``head.learner.ctx`` only;
- optimiser (Dassl defaults + ``configs/trainers/CoOp/*.yaml``): SGD, lr 0.002, momentum
  0.9, weight decay 5e-4 on every trained tensor (Dassl decays all parameters: ``groups:
  all``), cosine over ``max_epoch`` (Dassl ``CosineAnnealingLR(T_max=MAX_EPOCH)``) after
  one warm-up epoch at the constant lr 1e-5, the lr changed once per epoch
  (``constant_warmup_cosine``, ``interval: epoch``: epoch 0 at 1e-5, epoch 1 at 0.002, then
  the cosine); batch 32. Epochs by shots (50 for 1 shot, 100 for 2 and 4, 200 for 8 and
  16; ImageNet 50 for all) are the recipes' ``trainer.max_epochs``;
- precision: the trainer's (``trainer.precision``); the official CoOp configs run CLIP in
  fp16 unless ``PREC`` is ``fp32`` / ``amp``; the recipes use ``16-mixed`` on GPU.

New class names (base-to-new evaluation, cross-dataset transfer): a unified context writes
prompts for any name (:meth:`CoOp.class_weights_for`), as the official code does when it is
evaluated on the "new" half; a class-specific context cannot
(:class:`~zoo.protocols.ProtocolUnavailable`). The dataset's templates are not used: the
learned context replaces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from zoo.fewshot.clip_source import CLIPSource
from zoo.fewshot.module import DASSL_SGD_OPTIM, FewShotModule
from zoo.fewshot.prompts import ClassTokenPosition, CoOpHead, PromptLearner
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import ProtocolUnavailable, Template, Tokenizer

# Dassl OPTIM defaults (SGD momentum 0.9, weight decay 5e-4, all parameters decayed) and
# configs/trainers/CoOp/*.yaml: lr 0.002, cosine, WARMUP_EPOCH 1 of type "constant" at
# WARMUP_CONS_LR 1e-5, stepped once per epoch.
COOP_OPTIM = DASSL_SGD_OPTIM


class CoOp(FewShotModule):
    """CoOp on a frozen CLIP (see the module docstring).

    Args:
        clip: the frozen CLIP (:class:`~zoo.fewshot.clip_source.CLIPSource`).
        n_ctx: M, the number of context vectors (16; ignored with ``ctx_init``).
        ctx_init: init phrase (``"a photo of a"``) or ``None`` for N(0, ``init_std``²).
        class_specific: CSC, one context per class.
        class_token_position: ``end``, ``middle`` or ``front``.
        init_std: the random init's standard deviation (0.02).
        optim: merged onto :data:`COOP_OPTIM`.
    """

    def __init__(
        self,
        clip: CLIPSource | dict[str, Any] | None = None,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        init_std: float = 0.02,
        optim: OptimSpec = COOP_OPTIM,
    ):
        super().__init__(clip, merge_onto(COOP_OPTIM, optim))
        self.save_hyperparameters()
        self.n_ctx, self.ctx_init = n_ctx, ctx_init
        self.class_specific, self.class_token_position = class_specific, class_token_position
        self.init_std = init_std

    def prompt_learner(self, classnames: list[str], tokenizer: Tokenizer | None) -> PromptLearner:
        return PromptLearner(
            classnames,
            tokenizer,
            self.encoder,
            n_ctx=self.n_ctx,
            ctx_init=self.ctx_init,
            class_specific=self.class_specific,
            class_token_position=self.class_token_position,
            init_std=self.init_std,
        )

    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> CoOpHead:
        return CoOpHead(self.prompt_learner(classnames, tokenizer))

    def class_weights_for(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        tokenizer: Tokenizer | None,
    ) -> Tensor:
        """The learned context with other class names (unified context only): the prompts
        ``[SOS] V_1…V_M [name] . [EOS]`` of the new names through the frozen text tower."""
        assert self.head is not None, "configure_classes() first"
        learner = self.head.learner
        if tokenizer is None:
            raise ProtocolUnavailable(
                f"{type(self).__name__} writes prompts for new class names with the "
                "datamodule's tokenizer, and the datamodule has none"
            )
        layout = learner.layout_for(classnames, tokenizer, self.encoder)
        return learner.text_features(self.encoder, layout=layout)
