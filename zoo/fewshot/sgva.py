"""SgVA-CLIP's building blocks: pre-projection recovery, the visual adapter, episodic
prototypes, the implicit-distillation term and the fused classifier head.

SgVA-CLIP (Peng et al., "SgVA-CLIP: Semantic-guided Visual Adapting of Vision-Language
Models for Few-shot Image Classification", IEEE TMM 2024, arXiv 2211.16191). Facts from the
official code, github.com/FannierPeng/SgVA-CLIP @ caa63d5 (reference run ``--loss
newi2i+kd+i2t --para-update prompt+v_adapter --visual-pre T --adapter-dim _dim_x2 --head
Vision-Text --test-head Fuse_af``): ``models/coop_4.py`` (``Weight_Adapter``,
``CustomCLIP.forward``), ``models/classification_heads_4.py`` (``ViTeCLSHead``) and
``main.py`` (losses, prototypes of the whole K-shot set, fusion).

Notation: f the frozen CLIP image embedding (after the projection), f̄ = f/‖f‖; the image
projection is affine, ``f = x Wᵀ + b`` with x the pre-projection (pooled trunk) feature, W
``(D, d)`` and b ``(D,)`` (RN50: the attention pool's ``c_proj``; ViT: ``x @ proj``, so
``W = projᵀ`` and no bias; :func:`zoo.fewshot.clip_source.projection_affine`); s = exp(CLIP's
logit scale); t_k the L2-normalised text feature of the learned prompt of class k.

- **Pre-projection recovery** (``--visual-pre T``): ``x = (f − b) · pinv(Wᵀ)``, computed
  without gradient into CLIP (the official code wraps it in ``torch.no_grad`` for RN50 and
  the ViT projection is frozen). When W has full row rank (D ≤ d, as RN50's 1024 × 2048
  ``c_proj`` and ViT-B's 512 × 768 ``proj``), ``pinv(Wᵀ) Wᵀ = I``, so projecting x again
  gives f back exactly: ``x Wᵀ + b = f``. ``pinv(Wᵀ)`` is computed once (in float64) and kept
  as a buffer; the official code recomputes it in float32 at every forward pass.
- **Adapter** (``Weight_Adapter``, ``_dim_x2``): ``x̃ = ReLU(α·W₂ ReLU(W₁ x) + (1 − α)·x)``,
  W₁ ``d → 2d`` and W₂ ``2d → d`` without bias (PyTorch's default ``nn.Linear`` init), α a
  learnable scalar initialised to 0.5 (shape (1,) here: FSDP cannot shard 0-d tensors);
  ``x̂ = x̃/‖x̃‖``.
- **Logits** (``ViTeCLSHead``):
  ``l^{vv}_c = s⟨x̂_q, p̂_c⟩`` with ``p̂_c`` the mean of the support x̂ of class c (not
  renormalised) — vision-specific;
  ``l^{vt}_k = s⟨x̂_q Wᵀ + b, t_k⟩`` — the adapted feature re-projected through the frozen
  projection; the code does **not** normalise ``x̂ Wᵀ + b`` before the dot product
  (``logit_scale * (new_query @ v_proj.t() + v_bias) @ text_prototypes``), and neither do we;
  ``l^{it}_k = s⟨f̄_q, t_k⟩`` — frozen image against the learned prompts.
- **Implicit knowledge distillation**: ``L_KD = −Σ_k softmax(l^{it}/T)_k · log
  softmax(l^{vt}/T)_k``, averaged over the queries, T = 5 (``--temp``), no T² factor
  (:func:`kd_loss`).
- **Inference** (``--test-head Fuse_af``, ``meta_test``): ``logits = λ·l^{vv} + (1 − λ)·l^{it}``
  with λ = 0.5 and the prototypes of the *whole* K-shot training set under the evaluation
  transform (``get_image_prototypes`` on ``dataset_train_notfm``), over all C classes
  (:class:`SgVAHead`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.backbones import DualEncoder
from zoo.backbones.clip_head import ClipHead, register_clip_head
from zoo.fewshot.prompts import PromptLearner
from zoo.protocols import Tokenizer

#: SgVA-CLIP's "ensemble" context initialisation (``models/coop_4.py`` ``IMAGENET_TEMPLATES``
#: at the reference commit): the context starts at the mean token embedding, position by
#: position, of the first ``n_ctx`` tokens after SOS of these phrases.
SGVA_ENSEMBLE_PHRASES: tuple[str, ...] = (
    "x itap of a",
    "a bad photo of",
    "x x a origami",
    "a photo of large",
    "in video game a",
    "x art of the",
    "a photo of small",
)


# --------------------------------------------------------------------------- projection
def projection_pinv(weight: Tensor) -> Tensor:
    """``pinv(Wᵀ)`` ``(D, d)`` for a projection ``f = x Wᵀ + b`` with W ``(D, d)``; computed
    in float64 (then float32) so that the round trip ``pinv(Wᵀ) Wᵀ = I`` holds to float32
    precision when W has full row rank."""
    return torch.linalg.pinv(weight.detach().double().t()).float()


def recover_pre_projection(features: Tensor, pinv: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x = (f − b) · pinv(Wᵀ)``: the pre-projection feature behind the CLIP embedding f,
    with no gradient into f, W or b (``--visual-pre T``)."""
    # float32 even under autocast, as the official code (``.float()`` around the product)
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        f = features.detach().to(pinv.dtype)
        if bias is not None:
            f = f - bias.to(pinv.dtype)
        return f @ pinv


# ------------------------------------------------------------------------------- adapter
class SgVAAdapter(nn.Module):
    """``x̃ = ReLU(α·W₂ ReLU(W₁ x) + (1 − α)·x)`` (official ``Weight_Adapter``): ``linear1``
    d → hidden, ``linear2`` hidden → d, both without bias; α learnable, initialised to
    ``alpha_init`` (0.5)."""

    def __init__(self, dim: int, hidden: int, alpha_init: float = 0.5):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden, bias=False)
        self.linear2 = nn.Linear(hidden, dim, bias=False)
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.linear1.weight.dtype)
        out = self.linear2(F.relu(self.linear1(x)))
        return F.relu(self.alpha * out + (1 - self.alpha) * x)


# ---------------------------------------------------------------------------- prototypes
def class_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, d)``: row c is the mean of the ``features`` rows labelled c (the
    official one-hot ``bmm`` divided by the counts); a class without a row gets zeros."""
    sums = features.new_zeros(num_classes, features.shape[-1]).index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return sums / counts.to(features.dtype).unsqueeze(-1)


# ---------------------------------------------------------------------------------- losses
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 5.0) -> Tensor:
    """``−Σ_k softmax(teacher/T)_k · log softmax(student/T)_k``, averaged over the rows, no
    T² factor (official ``main.py``, loss ``newi2i+kd+i2t``). The teacher is used as given:
    detach it for a stop-gradient teacher."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def ensemble_context(tokenizer: Tokenizer, encoder: DualEncoder, n_ctx: int) -> Tensor:
    """``(n_ctx, width)``: SgVA-CLIP's ``--ctx-init ensemble``, the mean over
    :data:`SGVA_ENSEMBLE_PHRASES` of the token embeddings at positions 1 … n_ctx of each
    tokenised phrase (whatever the tokens are: ``"x itap of a"`` gives x, it, ap, of)."""
    embedding = encoder.text.token_embedding
    ids = tokenizer(list(SGVA_ENSEMBLE_PHRASES)).to(embedding.weight.device)
    if ids.shape[1] < n_ctx + 1:
        raise ValueError(f"n_ctx {n_ctx} is longer than the tokenizer's context {ids.shape[1]}")
    with torch.no_grad():
        return embedding(ids[:, 1 : 1 + n_ctx]).mean(dim=0).detach().clone()


# ------------------------------------------------------------------------------------ head
@register_clip_head
class SgVAHead(ClipHead):
    """SgVA-CLIP's trainable parts and its inference classifier.

    - ``learner``: the CoOp prompt learner (n_ctx 4 in the reference run); the text features
      t_k of its prompts are the text classifier (:meth:`class_weights`);
    - ``adapter``: :class:`SgVAAdapter` on the recovered pre-projection feature;
    - buffers ``proj_weight`` W ``(D, d)``, ``proj_bias`` b ``(D,)`` (zeros for a bias-free
      projection), ``proj_pinv`` ``pinv(Wᵀ)`` ``(D, d)``: copies of the frozen projection
      (:meth:`set_projection`), so the head alone maps f to x̂ and back;
    - buffers ``prototypes`` ``(C, d)``, the mean x̂ of each class over the whole K-shot
      training set, and ``prototype_step`` (the training step they were computed at, −1:
      never), written by the module (:meth:`set_prototypes`).

    :meth:`logits` is the fused classifier ``λ·s⟨x̂, p̂_c⟩ + (1 − λ)·s⟨f̄, t_c⟩``, λ =
    ``fusion_weight``.
    """

    type_name = "sgva"

    def __init__(
        self,
        learner: PromptLearner,
        embed_dim: int,
        trunk_dim: int,
        hidden_mult: int = 2,
        fusion_weight: float = 0.5,
        alpha_init: float = 0.5,
    ):
        super().__init__(learner.classnames)
        self.learner = learner
        self.embed_dim, self.trunk_dim = int(embed_dim), int(trunk_dim)
        self.hidden_mult, self.fusion_weight = int(hidden_mult), float(fusion_weight)
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight λ must be in [0, 1], got {fusion_weight}")
        self.adapter = SgVAAdapter(self.trunk_dim, self.hidden_mult * self.trunk_dim, alpha_init)
        num = len(self.classnames)
        self.register_buffer("proj_weight", torch.zeros(self.embed_dim, self.trunk_dim))
        self.register_buffer("proj_bias", torch.zeros(self.embed_dim))
        self.register_buffer("proj_pinv", torch.zeros(self.embed_dim, self.trunk_dim))
        self.register_buffer("prototypes", torch.zeros(num, self.trunk_dim))
        self.register_buffer("prototype_step", torch.full((1,), -1, dtype=torch.long))

    # --- config -------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            **self.learner.config(),
            "embed_dim": self.embed_dim,
            "trunk_dim": self.trunk_dim,
            "hidden_mult": self.hidden_mult,
            "fusion_weight": self.fusion_weight,
        }

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> SgVAHead:
        entry = dict(entry)
        dims = {k: entry.pop(k) for k in ("embed_dim", "trunk_dim")}
        options = {k: entry.pop(k) for k in ("hidden_mult", "fusion_weight") if k in entry}
        return cls(PromptLearner.from_config(entry), **dims, **options)

    # --- the frozen projection ----------------------------------------------------------------
    @torch.no_grad()
    def set_projection(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Copy the frozen projection ``f = x Wᵀ + b`` (W ``(D, d)``) and compute ``pinv(Wᵀ)``."""
        if tuple(weight.shape) != (self.embed_dim, self.trunk_dim):
            raise ValueError(
                f"projection weight of shape {tuple(weight.shape)}, expected "
                f"({self.embed_dim}, {self.trunk_dim}) (embedding × trunk width)"
            )
        self.proj_weight.copy_(weight.detach())
        self.proj_bias.copy_(bias.detach() if bias is not None else torch.zeros(self.embed_dim))
        self.proj_pinv.copy_(projection_pinv(weight))

    def pre_projection(self, features: Tensor) -> Tensor:
        """x = (f − b)·pinv(Wᵀ), no gradient."""
        return recover_pre_projection(features, self.proj_pinv, self.proj_bias)

    def adapt(self, features: Tensor) -> Tensor:
        """x̂ = normalize(adapter(x)) from the CLIP embedding f."""
        return F.normalize(self.adapter(self.pre_projection(features)), dim=-1)

    def reproject(self, adapted: Tensor) -> Tensor:
        """``x̂ Wᵀ + b`` through the frozen projection, not normalised (as the code)."""
        w = self.proj_weight.to(adapted.dtype)
        return adapted @ w.t() + self.proj_bias.to(adapted.dtype)

    # --- prototypes ---------------------------------------------------------------------------
    @torch.no_grad()
    def set_prototypes(self, prototypes: Tensor, step: int) -> None:
        if tuple(prototypes.shape) != tuple(self.prototypes.shape):
            raise ValueError(
                f"prototypes of shape {tuple(prototypes.shape)}, expected "
                f"{tuple(self.prototypes.shape)} (classes × trunk width)"
            )
        self.prototypes.copy_(prototypes)
        self.prototype_step.fill_(int(step))

    @property
    def has_prototypes(self) -> bool:
        return int(self.prototype_step.item()) >= 0

    # --- the ClipHead interface ---------------------------------------------------------------
    def class_weights(self, encoder: DualEncoder) -> Tensor:
        """The text classifier: t_k of the learned prompts, (C, D) unit rows."""
        return self.learner.text_features(encoder)

    def fused_logits(self, features: Tensor, text_weights: Tensor, scale: Tensor) -> Tensor:
        """``λ·s⟨x̂, p̂_c⟩ + (1 − λ)·s⟨f̄, t_c⟩`` against the stored prototypes."""
        if not self.has_prototypes:
            raise RuntimeError(
                "the SgVA-CLIP head has no class prototypes yet: they are the mean adapted "
                "feature of each class over the K-shot training set, computed by the module "
                "(SgVACLIP.refresh_prototypes) during a fit"
            )
        if text_weights.shape[0] != self.prototypes.shape[0]:
            raise ValueError(
                f"{text_weights.shape[0]} class weights for a head with "
                f"{self.prototypes.shape[0]} class prototypes"
            )
        adapted = self.adapt(features)
        vision = scale * adapted @ self.prototypes.to(adapted.dtype).t()
        f = F.normalize(features, dim=-1)
        text = scale * f @ text_weights.to(f.dtype).t()
        lam = self.fusion_weight
        return lam * vision + (1 - lam) * text.to(vision.dtype)

    def logits(self, encoder: DualEncoder, image_features: Tensor) -> Tensor:
        return self.fused_logits(
            image_features, self.class_weights(encoder), encoder.logit_scale.exp()
        )
