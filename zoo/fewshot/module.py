"""``FewShotModule``: a frozen CLIP plus a trainable head, the base of the few-shot family.

What the methods share (CoOp / CoCoOp prompt learners, CLIP-Adapter, Tip-Adapter(-F),
SgVA-CLIP; Liu et al. 2024's survey calls the first two prompt-based, the others
adapter-based):

- the CLIP (:mod:`zoo.fewshot.clip_source`) sits in a :class:`zoo.freeze.FrozenTower`
  (``self.clip``; ``self.encoder`` is the :class:`~zoo.backbones.DualEncoder` inside): eval
  mode, no gradient to its weights, checked bit-identical at fit end by
  :class:`zoo.freeze.FrozenTowerCheck`. Gradients still flow *through* it (a prompt learner
  trains its context through the frozen text tower);
- the trainable part is a :class:`zoo.backbones.clip_head.ClipHead` (``self.head``), built by
  :meth:`FewShotModule.build_head` once the class names are known: from the datamodule in
  ``setup`` (``datamodule.classnames`` / ``templates`` / tokenizer), or from the checkpoint
  in ``on_load_checkpoint`` (the names are stored there);
- the loss is cross-entropy over the class logits ``head.logits(encoder, f)`` (every method's
  ``CE(s·f̂ Wᵀ, y)``, s = CLIP's ``exp(logit_scale)`` = 100 for OpenAI weights); methods
  with other losses override :meth:`FewShotModule.loss_terms`;
- validation: top-1 accuracy on the few-shot validation split (``val/acc``), the only split
  any model selection may look at; the test split is read by the evaluation callbacks;
- the model protocols (:mod:`zoo.protocols`), so :class:`zoo.eval.ZeroShotEval` scores the
  *adapted* classifier and :class:`zoo.eval.LinearProbeEval` the frozen features, with no
  special case: ``features(images, "embed")`` is the image feature the head compares,
  ``class_weights(classnames, templates)`` the head's classifier for those names
  (:meth:`FewShotModule.class_weights_for`), and ``class_logits(features, weights)`` the
  head's full logits when they are not a plain cosine (Tip-Adapter's cache term);
- export: ``export_model()`` is a ``clip_head`` model package (frozen CLIP + head), so
  ``zoo export`` / ``zoo.load`` round-trip an adapted model; the base weights' sha256 is
  recorded with the head (``base_sha256``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from zoo.backbones import DualEncoder
from zoo.backbones.clip_head import ClipHead, CLIPWithHead
from zoo.fewshot.clip_source import CLIPSource, load_clip
from zoo.freeze import FrozenTower
from zoo.module import PREPROCESS_KEY, ZooModule
from zoo.optim import OptimSpec
from zoo.protocols import FeatureKind, ProtocolUnavailable, Template, Tokenizer, data_tokenizer

#: The optimiser of the methods trained with CoOp's Dassl trainer (CoOp, CoCoOp and, by its
#: README, CLIP-Adapter): Dassl's OPTIM defaults (SGD, momentum 0.9, weight decay 5e-4 on
#: every parameter) with CoOp's configs (lr 0.002, cosine stepped once per epoch after one
#: constant warm-up epoch at 1e-5; ``configs/trainers/CoOp/*.yaml``, ``CoCoOp/*.yaml``).
DASSL_SGD_OPTIM = OptimSpec(
    optimizer="sgd",
    lr=0.002,
    momentum=0.9,
    weight_decay=5e-4,
    groups="all",
    schedule="constant_warmup_cosine",
    interval="epoch",
    warmup_epochs=1.0,
    warmup_lr=1e-5,
    min_lr=0.0,
)

#: Checkpoint key of the class names / templates the head was built for.
FEWSHOT_KEY = "fewshot"


class FewShotModule(ZooModule):
    """A frozen CLIP (``clip``: :class:`~zoo.fewshot.clip_source.CLIPSource`) and a head.

    Subclasses implement :meth:`build_head`; most need nothing else. ``optim`` is the
    method's :class:`~zoo.optim.OptimSpec`, already merged onto its paper defaults.
    """

    def __init__(self, clip: CLIPSource | dict[str, Any] | None, optim: OptimSpec | None = None):
        super().__init__(optim)
        loaded = load_clip(clip)
        self.clip = FrozenTower(loaded.encoder)
        self.base_sha256 = loaded.sha256
        self.base_preprocess = loaded.preprocess
        self.head: ClipHead | None = None
        self.classnames: list[str] | None = None
        self.templates: list[str] = []

    # --- the frozen CLIP ---------------------------------------------------------------------
    @property
    def encoder(self) -> DualEncoder:
        return self.clip.module  # type: ignore[return-value]

    @property
    def logit_scale(self) -> Tensor:
        """s = exp(t) of the frozen CLIP (100 for the OpenAI weights)."""
        return self.encoder.logit_scale.exp()

    def zeroshot_weights(
        self, classnames: Sequence[str], templates: Sequence[Template], tokenizer: Tokenizer
    ) -> Tensor:
        """(C, D) unit rows: the frozen CLIP's template ensemble (each prompt encoded and
        L2-normalised, averaged per class, renormalised; one template = CoOp's
        ``ZeroshotCLIP``, several = Tip-Adapter's ImageNet ensemble)."""
        from zoo.eval.zeroshot import template_ensemble

        return template_ensemble(
            self.encoder.encode_text,
            tokenizer,
            classnames,
            templates,
            self.device,
            model=self.encoder,
        ).to(self.device)

    # --- the head ---------------------------------------------------------------------------
    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> ClipHead:
        """The trainable head for ``classnames``. ``tokenizer`` is ``None`` only when the head
        is rebuilt from a checkpoint whose state dict then fills every buffer."""
        raise NotImplementedError

    def configure_classes(
        self,
        classnames: Sequence[str],
        templates: Sequence[str] = (),
        tokenizer: Tokenizer | None = None,
    ) -> None:
        """Build the head for ``classnames`` (once; the same names again is a no-op)."""
        classnames = [str(c) for c in classnames]
        if self.head is not None:
            if classnames != self.classnames:
                raise ValueError(
                    f"{type(self).__name__} was built for {len(self.classnames or [])} classes "
                    f"{(self.classnames or [])[:5]}…, got {classnames[:5]}…"
                )
            return
        if not classnames:
            raise ValueError(f"{type(self).__name__} needs the class names (data.classnames)")
        self.classnames, self.templates = classnames, [str(t) for t in templates]
        self.head = self.build_head(self.classnames, self.templates, tokenizer).to(self.device)

    def setup(self, stage: str) -> None:
        if self.head is None:
            datamodule = self.trainer.datamodule
            classnames = getattr(datamodule, "classnames", None)
            if not classnames:
                raise ValueError(
                    f"{type(self).__name__} needs class names from the datamodule "
                    f"({type(datamodule).__name__}.classnames is empty)"
                )
            self.configure_classes(
                classnames, getattr(datamodule, "templates", None) or [], data_tokenizer(datamodule)
            )
        super().setup(stage)  # records parameter shapes: after the head exists

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[FEWSHOT_KEY] = {
            "classnames": list(self.classnames or []),
            "templates": list(self.templates),
            "base_sha256": self.base_sha256,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the head for the stored class names before the state dict loads into it
        (``load_from_checkpoint``, ``zoo export``, resume)."""
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get(FEWSHOT_KEY)
        if stored is None:
            raise KeyError(f"checkpoint has no {FEWSHOT_KEY!r} entry (not a few-shot module's)")
        if self.head is None:
            self.configure_classes(
                stored["classnames"], stored["templates"], _checkpoint_tokenizer(checkpoint)
            )
        elif list(stored["classnames"]) != self.classnames:
            # e.g. `zoo validate` of a base-trained checkpoint on the new classes: a prompt
            # learner writes prompts for the data's names; a head with per-class weights
            # would score the data's classes with the stored classes' weights
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"the checkpoint's head was trained for {len(stored['classnames'])} classes "
                f"{stored['classnames'][:3]}…, the data has {len(self.classnames or [])} "
                f"{(self.classnames or [])[:3]}…; {type(self.head).__name__} keeps the data's "
                "class names"
            )

    # --- training ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any] | None:
        """The method's optimiser and schedule; ``None`` for a training-free head (zero-shot
        CLIP, Tip-Adapter), which fits with ``trainer.max_epochs: 0``."""
        if not any(p.requires_grad for p in self.parameters()):
            return None
        return super().configure_optimizers()

    def on_fit_end(self) -> None:
        """Save ``last.ckpt`` for a fit whose training loop never ran.

        A training-free method (zero-shot CLIP, Tip-Adapter) fits with ``max_epochs: 0``:
        its result (the cache model, the α/β found on val) exists after ``on_fit_start``,
        but Lightning skips the training loop, so ``ModelCheckpoint`` never saves and there
        would be nothing for ``zoo export`` or ``zoo test --ckpt_path``. The checkpoint goes
        where ``ModelCheckpoint`` would have put it; a fit that saved anything is left alone.
        """
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        if (
            callback is None
            or trainer.fast_dev_run
            or trainer.interrupted
            or trainer.global_step > 0
            or callback.last_model_path
            or callback.best_model_path
            or not callback.dirpath
        ):
            return
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        callback.last_model_path = str(path)

    def image_features(self, images: Tensor) -> Tensor:
        """The frozen CLIP's projected image feature f (unnormalised)."""
        return self.encoder.encode_image(images)

    def logits(self, images: Tensor) -> Tensor:
        """(B, C) class logits of the adapted model."""
        assert self.head is not None, "configure_classes() first"
        return self.head.logits(self.encoder, self.image_features(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(images)

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = self.logits(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(dim=-1) == batch["label"]).float().mean() * 100
        return {"loss": loss, "acc": acc.detach()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not any(p.requires_grad for p in self.parameters()):
            return None  # training-free (fast_dev_run still runs one step): nothing to fit
        terms = self.loss_terms(batch)
        self.log_losses(terms, batch_size=len(batch["label"]))
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.logits(batch["image"])
        acc = (logits.argmax(dim=-1) == batch["label"]).float().mean() * 100
        loss = F.cross_entropy(logits, batch["label"])
        self.log_losses(
            {"loss": loss, "acc": acc},
            prefix=self.eval_prefix,
            batch_size=len(batch["label"]),
            on_epoch=True,
            sync_dist=True,
        )

    # --- the model protocols (zoo.protocols) ---------------------------------------------
    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        """``embed``: the feature the head compares with its class weights (the frozen CLIP
        embedding unless a method adapts it); ``trunk``: the frozen pooled feature."""
        if kind == "trunk":  # a CLIP ResNet's trunk is its attention pool before c_proj
            from zoo.fewshot.clip_source import pre_projection_features

            return pre_projection_features(self.encoder, images)
        if kind != "embed":
            raise ValueError(f"unknown feature kind {kind!r}")
        return self.image_features(images)

    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """The adapted classifier for ``classnames``: the head's own weights when they are
        the classes it was built for, else :meth:`class_weights_for` (a prompt learner
        writes prompts for new class names; most heads cannot)."""
        assert self.head is not None, "configure_classes() first"
        if list(classnames) == self.classnames:
            return self.head.class_weights(self.encoder)
        return self.class_weights_for(classnames, templates, tokenizer)

    def class_weights_for(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        tokenizer: Tokenizer | None,
    ) -> Tensor:
        raise ProtocolUnavailable(
            f"{type(self).__name__} was trained for its {len(self.classnames or [])} classes "
            f"and cannot classify {len(classnames)} others"
        )

    # --- export -------------------------------------------------------------------------------
    def export_model(self) -> tuple[str, CLIPWithHead]:
        """A ``clip_head`` model: the frozen CLIP and the trained head."""
        assert self.head is not None, "configure_classes() first"
        return "clip_head", CLIPWithHead(self.encoder, self.head)


def _checkpoint_tokenizer(checkpoint: dict[str, Any]) -> Tokenizer | None:
    """The prompt tokenizer of the preprocessing recorded in the checkpoint, if any."""
    entry = checkpoint.get(PREPROCESS_KEY)
    if not isinstance(entry, dict):
        return None
    from zoo.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_config(entry)
    if spec.tokenizer is None:
        return None
    from zoo.data import TextTokenizer

    return TextTokenizer(spec.tokenizer, spec.context_length)
