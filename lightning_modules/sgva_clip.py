"""SgVA-CLIP: semantic-guided visual adapting of a frozen CLIP (Peng, Yang, Xiao, Wang, Xu,
"SgVA-CLIP: Semantic-guided Visual Adapting of Vision-Language Models for Few-shot Image
Classification", IEEE TMM 2024, arXiv 2211.16191; official code
github.com/FannierPeng/SgVA-CLIP @ caa63d5, reference run ``--loss newi2i+kd+i2t
--para-update prompt+v_adapter --visual-pre T --adapter-dim _dim_x2 --test-head Fuse_af
--n-ctx 4 --temp 5``).

Trained: CoOp context vectors (n_ctx 4) and a visual adapter on the recovered pre-projection
feature; the CLIP towers are frozen (:class:`zoo.freeze.FrozenTower`). With the notation of
:mod:`zoo.fewshot.sgva` (x̂ the adapted, normalised pre-projection feature; p̂_c the episode
prototypes; t_k the prompts' text features; s = exp(CLIP's logit scale); f̄ the normalised
frozen image feature), on an episode whose support and queries are given by the batch's
``"support"`` mask (:mod:`zoo.fewshot.episodes`; no separate queries: the support images are
the queries, as in the official training episodes):

    l^{vv}_{q,c} = s⟨x̂_q, p̂_c⟩        c over the episode's N classes     ``newi2i``
    l^{vt}_{q,k} = s⟨x̂_q Wᵀ + b, t_k⟩   k over all C classes              (re-projected)
    l^{it}_{q,k} = s⟨f̄_q, t_k⟩          k over all C classes              ``i2t``
    L_prompt  = CE(l^{it}, y)                    cross-modal contrastive (prompt optimiser)
    L_adapter = CE(l^{vv}, y_epi) + L_KD          vision-specific + implicit KD (adapter optimiser)
    L_KD      = −Σ_k softmax(l^{it}/T)_k log softmax(l^{vt}/T)_k,  T = 5, no T²

(the mapping of the code's loss names to the paper's "vision-specific contrastive",
"cross-modal contrastive" and "implicit knowledge distillation" is the card's inference from
the abstract). Inference (``Fuse_af``): ``λ·s⟨x̂, p̂_c⟩ + (1 − λ)·s⟨f̄, t_c⟩``, λ = 0.5, with
prototypes of the whole K-shot training set under the evaluation transform
(:class:`zoo.fewshot.sgva.SgVAHead`); validation scores the same fused classifier.

Code → here:

- ``CustomCLIP.forward`` / ``Weight_Adapter`` / ``ViTeCLSHead``: :mod:`zoo.fewshot.sgva`;
  :meth:`SgVACLIP.episode_logits` computes every logit above from one pass of the frozen
  image tower (the official code runs the tower twice on the same tensor, once as
  support, once as query: identical features);
- **"unique" queries**: the official ``L_prompt`` is the cross-entropy of
  ``logits_query_img2text_unique``, the queries rearranged by ``get_unique_N`` into K rows of
  N queries of distinct classes; the rows use every query exactly once (``get_unique_N``
  returns when all are used), so the mean cross-entropy is that of all queries in any
  order, which is what :meth:`SgVACLIP.episode_terms` computes;
- **two optimisers, one after the other** (``main.py``): ``prompt_optimizer`` (SGD over the
  prompt learner) steps on ``L_prompt``, then ``adapter_optimizer`` (SGD over the adapter)
  on ``L_adapter``. Here Lightning's manual optimisation in the same order: backward of
  ``L_prompt``, prompt step, backward of ``L_adapter``, adapter step;
- **teacher** (card, open question 1): the official ``L_KD`` does not detach the teacher
  l^{it} (nor the text features inside l^{vt}), but its gradient on the context only lands
  in ``ctx.grad`` after the prompt optimiser has stepped, and ``prompt_optimizer.zero_grad()``
  clears it before the next step: the context never moves because of ``L_KD``, i.e. the
  teacher is in effect stop-gradient. ``detach_teacher=True`` (default) states this
  explicitly: ``L_adapter`` is computed on detached text features, so it reaches the adapter
  only and each optimiser gets exactly the official gradient.
  ``detach_teacher=False`` lets ``L_KD``'s gradient reach the context (through the teacher
  and the student's text features): one backward of ``L_prompt + L_adapter``, and the prompt
  optimiser steps on ``L_prompt + L_KD``, the literal un-detached objective — not what the
  official code trains. Under ``16-mixed`` the adapter's gradients are then unscaled with
  the loss scale as updated after the prompt step, which is wrong on the rare steps where
  the scaler changes it (an overflow, or its growth every 2,000 steps): use ``bf16-mixed``
  or ``32-true`` with this flag;
- **prototypes** for validation and inference: ``get_image_prototypes`` averages x̂ over the
  K-shot training set with the evaluation transform (``dataset_train_notfm``). Here
  :meth:`SgVACLIP.refresh_prototypes` does it from the frozen features of the datamodule's
  ``eval_dataloader("train")`` (extracted once per fit: the tower is frozen), whenever the
  adapter has changed since the last time (validation start, epoch end before checkpoints,
  the evaluation callbacks, export); they are stored in the head (buffer ``prototypes``);
- **learning rates** (``main.py`` ``meta_train``, by ``--train-shot`` and ``--dataset``):
  16 shots: adapter 1e-3 / prompt 1e-3 by default; Food101, DTD, StanfordCars, FGVCAircraft,
  UCF101, Caltech101, OxfordPets, EuroSAT 3.5e-3 / 3.5e-3 (FGVCAircraft is then overwritten
  to 5e-3 / 5e-3 by a later branch that is never reached, as the first ``if`` matches);
  Flowers102 3e-3 / 5e-3; SUN397 2.5e-3 / 3.5e-3; ImageNet 4e-2 / 5e-2. Both SGD with
  momentum 0.9, Nesterov, weight decay 5e-4 on every trained tensor (α included), 100
  epochs (``--num-epoch``). The defaults here are the 16-shot defaults; the recipes set the
  dataset's values;
- **schedule**: ``--lr-decay cosine --warm-up True`` builds, per optimiser, a constant
  warm-up at 1e-5 for one epoch around a cosine (adapter: ``CosineAnnealingLR(T_max=100)``;
  prompt: ``CosineAnnealingWarmRestarts(T_0=5, T_mult=2)``), stepped per epoch. The
  defaults here are that warm-up then the cosine over the run (``constant_warmup_cosine``,
  ``interval: epoch``, as CoOp in this zoo) for both optimisers. Two differences in the
  official script, kept out of the defaults: the warm-up schedulers are built with
  ``last_epoch=num_epoch`` (past the warm-up, so there is none), and for this loss the epoch
  loop steps only the scheduler of the unused joint optimiser, never the prompt and adapter
  schedulers, so the reference run trains at a constant learning rate (0.905 × lr for the
  prompt and ≈ lr for the adapter, set once when the schedulers are built). A recipe
  reproduces that with ``schedule: constant`` and ``warmup_epochs: 0`` in both optimiser
  blocks;
- **model selection**: the official script validates every 5 epochs and keeps the best
  validation model (for ImageNet its "val" split is the K-shot training images themselves).
  Here the run ends with the last weights; add a ``ModelCheckpoint(monitor="val/acc")`` to
  select as the official script does;
- **precision**: the official code runs CLIP in fp16 (``--prec fp16``); here the trainer's
  precision; the pre-projection recovery is always computed in float32.

Lightning's ``global_step`` counts optimiser steps: two per episode here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.fewshot.clip_source import CLIPSource, projection_affine
from zoo.fewshot.module import FewShotModule
from zoo.fewshot.prompts import PromptLearner
from zoo.fewshot.sgva import SgVAHead, class_prototypes, ensemble_context, kd_loss
from zoo.optim import (
    OptimSpec,
    build_optimizer,
    build_schedule,
    merge_onto,
    optimizer_steps_per_epoch,
)
from zoo.protocols import Template, Tokenizer

# main.py meta_train: SGD(momentum 0.9, weight_decay 5e-4, nesterov True) for each optimiser;
# 16-shot default lr 1e-3 for both; --warm-up True: one constant epoch at 1e-5 (cons_lr),
# then cosine over the run, stepped per epoch (see the module docstring for what the
# official loop actually steps).
SGVA_PROMPT_OPTIM = OptimSpec(
    optimizer="sgd",
    lr=1e-3,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    groups="all",
    schedule="constant_warmup_cosine",
    interval="epoch",
    warmup_epochs=1.0,
    warmup_lr=1e-5,
    min_lr=0.0,
)
SGVA_ADAPTER_OPTIM = merge_onto(SGVA_PROMPT_OPTIM, None)


class SgVACLIP(FewShotModule):
    """SgVA-CLIP on a frozen CLIP (see the module docstring).

    Args:
        clip: the frozen CLIP (:class:`~zoo.fewshot.clip_source.CLIPSource`).
        n_ctx: context vectors of the prompt learner (4 in the reference run).
        ctx_init: ``"ensemble"`` (the official ``--ctx-init ensemble``: the mean token
            embedding of SgVA's seven template phrases,
            :data:`zoo.fewshot.sgva.SGVA_ENSEMBLE_PHRASES`), a phrase such as
            ``"a photo of a"`` (n_ctx is then its number of words) or ``None`` (N(0,
            ``init_std``²)).
        init_std: standard deviation of the random context init.
        adapter_hidden_mult: adapter hidden width / input width (``_dim_x2``: 2).
        alpha_init: the adapter's initial residual weight α (0.5).
        temperature: T of the distillation term (``--temp`` 5).
        fusion_weight: λ of the inference fusion (0.5).
        detach_teacher: stop-gradient teacher (default, the official code's effect); see
            the module docstring.
        prompt_optim: the prompt's SGD optimiser (merged onto :data:`SGVA_PROMPT_OPTIM`).
        adapter_optim: the adapter's SGD optimiser (merged onto :data:`SGVA_ADAPTER_OPTIM`).
    """

    def __init__(
        self,
        clip: CLIPSource | dict[str, Any] | None = None,
        n_ctx: int = 4,
        ctx_init: str | None = "ensemble",
        init_std: float = 0.02,
        adapter_hidden_mult: int = 2,
        alpha_init: float = 0.5,
        temperature: float = 5.0,
        fusion_weight: float = 0.5,
        detach_teacher: bool = True,
        prompt_optim: OptimSpec = SGVA_PROMPT_OPTIM,
        adapter_optim: OptimSpec = SGVA_ADAPTER_OPTIM,
    ):
        adapter_optim = merge_onto(SGVA_ADAPTER_OPTIM, adapter_optim)
        super().__init__(clip, adapter_optim)
        self.save_hyperparameters()
        self.automatic_optimization = False  # two optimisers stepped one after the other
        self.prompt_optim = merge_onto(SGVA_PROMPT_OPTIM, prompt_optim)
        self.adapter_optim = adapter_optim
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.n_ctx, self.ctx_init, self.init_std = int(n_ctx), ctx_init, float(init_std)
        self.adapter_hidden_mult, self.alpha_init = int(adapter_hidden_mult), float(alpha_init)
        self.temperature, self.fusion_weight = float(temperature), float(fusion_weight)
        self.detach_teacher = bool(detach_teacher)
        # frozen features of the K-shot training set (eval transform), for the prototypes
        self._train_features: tuple[Any, Tensor, Tensor] | None = None

    # --- the head -----------------------------------------------------------------------------
    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> SgVAHead:
        ensemble = self.ctx_init == "ensemble"
        learner = PromptLearner(
            classnames,
            tokenizer,
            self.encoder,
            n_ctx=self.n_ctx,
            ctx_init=None if ensemble else self.ctx_init,
            init_std=self.init_std,
        )
        if ensemble and tokenizer is not None:
            with torch.no_grad():
                learner.ctx.copy_(ensemble_context(tokenizer, self.encoder, learner.n_ctx))
        weight, bias = projection_affine(self.encoder)
        head = SgVAHead(
            learner,
            embed_dim=weight.shape[0],
            trunk_dim=weight.shape[1],
            hidden_mult=self.adapter_hidden_mult,
            fusion_weight=self.fusion_weight,
            alpha_init=self.alpha_init,
        )
        head.set_projection(weight, bias)
        return head

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> tuple[list, list]:
        """Prompt optimiser over ``head.learner``, adapter optimiser over ``head.adapter``,
        each with its own schedule over the run's episodes (stepped in
        :meth:`training_step` / :meth:`on_train_epoch_end` under manual optimisation)."""
        assert self.head is not None, "configure_classes() first"
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("SgVA-CLIP's schedules need a finite run: set trainer.max_epochs")
        per_epoch = optimizer_steps_per_epoch(self.trainer)
        optimizers, schedulers = [], []
        for spec, part in (
            (self.prompt_optim, self.head.learner),
            (self.adapter_optim, self.head.adapter),
        ):
            optimizer = build_optimizer(part, spec)
            schedule = build_schedule(optimizer, spec, int(total), steps_per_epoch=per_epoch)
            optimizers.append(optimizer)
            schedulers.append({"scheduler": schedule, "interval": spec.interval})
        return optimizers, schedulers

    # --- training -----------------------------------------------------------------------------
    def episode_logits(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The logits of one episode (module docstring), over its queries: ``it`` (Q, C)
        l^{it}, ``vv`` (Q, N) l^{vv}, ``vt`` (Q, C) l^{vt} (on detached text features with
        ``detach_teacher``), with ``label`` (Q,) the class and ``episode_label`` (Q,) its
        index among the episode's classes (ascending, as the official ``sorted(Knovel)``)."""
        assert self.head is not None, "configure_classes() first"
        head, labels = self.head, batch["label"]
        support = batch.get("support")
        if support is None:
            support = torch.ones_like(labels, dtype=torch.bool)
        query = ~support if bool((~support).any()) else support  # no queries: the support
        with torch.no_grad():
            features = self.image_features(batch["image"])
        scale = self.logit_scale
        text = head.class_weights(self.encoder)  # (C, D): the gradient reaches ctx
        f_q, y_q = features[query], labels[query]
        logits_it = scale * F.normalize(f_q, dim=-1) @ text.t().to(f_q.dtype)

        adapted = head.adapt(features)  # x̂ (B, d), with gradient into the adapter
        classes, support_epi = torch.unique(labels[support], sorted=True, return_inverse=True)
        prototypes = class_prototypes(adapted[support], support_epi, len(classes))
        adapted_q = adapted[query]
        logits_vv = scale * adapted_q @ prototypes.t()
        student_text = text.detach() if self.detach_teacher else text
        logits_vt = scale * head.reproject(adapted_q) @ student_text.t().to(adapted_q.dtype)
        return {
            "it": logits_it,
            "vv": logits_vv,
            "vt": logits_vt,
            "label": y_q,
            "episode_label": torch.searchsorted(classes, y_q),
        }

    def episode_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every loss term of one episode (module docstring); ``loss`` is
        ``L_prompt + L_adapter``."""
        assert self.head is not None, "configure_classes() first"
        logits = self.episode_logits(batch)
        prompt_loss = F.cross_entropy(logits["it"], logits["label"])
        vv_loss = F.cross_entropy(logits["vv"], logits["episode_label"])
        teacher = logits["it"].detach() if self.detach_teacher else logits["it"]
        distill = kd_loss(logits["vt"], teacher, self.temperature)
        adapter_loss = vv_loss + distill
        acc = (logits["it"].argmax(-1) == logits["label"]).float().mean() * 100
        return {
            "loss": prompt_loss + adapter_loss,
            "prompt_loss": prompt_loss,
            "adapter_loss": adapter_loss,
            "vv_loss": vv_loss,
            "kd_loss": distill,
            "acc_it": acc.detach(),
            "alpha": self.head.adapter.alpha.detach()[0],
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        prompt_opt, adapter_opt = self.optimizers()
        terms = self.episode_terms(batch)
        prompt_opt.zero_grad()
        adapter_opt.zero_grad()
        if self.detach_teacher:
            # the official sequence: L_prompt → prompt step, then L_adapter → adapter step.
            # The graphs share no trained tensor, so each backward reaches one optimiser's
            # parameters; one backward per step also keeps 16-mixed exact (Lightning updates
            # the loss scale after every optimiser step)
            self.manual_backward(terms["prompt_loss"])
            prompt_opt.step()
            self.manual_backward(terms["adapter_loss"])
            adapter_opt.step()
        else:  # L_KD also trains the context: the prompt steps on L_prompt + L_KD
            self.manual_backward(terms["loss"])
            prompt_opt.step()
            adapter_opt.step()
        for scheduler in self._schedulers("step"):
            scheduler.step()
        shown = {k: v.detach() for k, v in terms.items()}
        self.log_losses(shown, batch_size=len(batch["label"]))
        return shown["loss"]

    def _schedulers(self, interval: str) -> list:
        specs = (self.prompt_optim, self.adapter_optim)
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        return [s for s, spec in zip(schedulers, specs) if spec.interval == interval]

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for scheduler in self._schedulers("epoch"):
            scheduler.step()
        # before ModelCheckpoint's epoch-end save: the checkpoint holds current prototypes
        self.refresh_prototypes(if_stale=True)

    def on_validation_epoch_start(self) -> None:
        self.refresh_prototypes(if_stale=True)

    def on_test_epoch_start(self) -> None:
        self.refresh_prototypes(if_stale=True)

    # --- prototypes of the K-shot training set ------------------------------------------------
    def _step(self) -> int:
        return int(self.trainer.global_step) if self._trainer is not None else 0

    def _datamodule(self) -> Any:
        if self._trainer is None:
            return None
        return getattr(self.trainer, "datamodule", None)

    def train_features(self, datamodule: Any) -> tuple[Tensor, Tensor]:
        """(N, D) frozen features and (N,) labels of the K-shot training set under the
        evaluation transform (``datamodule.eval_dataloader("train")``), extracted once per
        datamodule: the image tower is frozen."""
        cached = self._train_features
        if cached is not None and cached[0] is datamodule:
            return cached[1], cached[2]
        features, labels = [], []
        for batch in datamodule.eval_dataloader("train"):
            images = batch["image"].to(self.device)
            features.append(self.image_features(images).float())
            labels.append(batch["label"].to(self.device))
        f, y = torch.cat(features), torch.cat(labels)
        keep = y >= 0  # unlabelled or dropped rows carry -1
        self._train_features = (datamodule, f[keep], y[keep])
        return f[keep], y[keep]

    def refresh_prototypes(self, datamodule: Any = None, if_stale: bool = False) -> bool:
        """Recompute the head's class prototypes (the mean x̂ of each class over the K-shot
        training set) with the current adapter. ``if_stale``: only when the adapter may have
        changed since they were computed (another training step). Returns whether it ran;
        without a datamodule (a model used outside a fit) the stored prototypes stay."""
        if self.head is None:
            return False
        datamodule = datamodule if datamodule is not None else self._datamodule()
        if datamodule is None or not callable(getattr(datamodule, "eval_dataloader", None)):
            return False
        step = self._step()
        if if_stale and self.head.has_prototypes and int(self.head.prototype_step) == step:
            return False
        # normal tensors even when called under an evaluation callback's inference_mode
        with torch.inference_mode(False), torch.no_grad():
            features, labels = self.train_features(datamodule)
            adapted = torch.cat([self.head.adapt(f) for f in features.split(4096)])
            prototypes = class_prototypes(adapted.float(), labels, len(self.head.classnames))
            self.head.set_prototypes(prototypes, step)
        return True

    # --- the model protocols ------------------------------------------------------------------
    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """The text classifier t_k of the learned prompts (the ``l^{it}`` branch); the fused
        classifier is :meth:`class_logits`."""
        self.refresh_prototypes(if_stale=True)
        return super().class_weights(classnames, templates, tokenizer=tokenizer)

    def class_logits(self, features: Tensor, class_weights: Tensor) -> Tensor:
        """The fused SgVA-CLIP classifier ``λ·l^{vv} + (1 − λ)·l^{it}`` for the frozen
        features f (``features(images, "embed")``) and the text classifier
        ``class_weights`` of the same classes (protocol :class:`zoo.protocols.ClassLogits`)."""
        assert self.head is not None, "configure_classes() first"
        self.refresh_prototypes(if_stale=True)
        return self.head.fused_logits(features, class_weights, self.logit_scale)

    def export_model(self):
        self.refresh_prototypes(if_stale=True)
        return super().export_model()
