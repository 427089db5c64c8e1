"""CLIP-rocket: "Improved baselines for vision-language pre-training" (Fini, Astolfi,
Romero-Soriano, Verbeek, Drozdzal; Fini et al., TMLR 2023; arXiv 2305.08675). Official code:
github.com/facebookresearch/clip-rocket (model ``CL2L`` in ``models.py``, loss ``CL2LLoss``
in ``losses.py``; a plain CLIP is ``--num-augs 0``).

Each sample gives a weak pair (x⁰, t⁰) and K strong pairs (xᵏ, tᵏ)
(:class:`datamodules.clip_rocket.CLIPRocketDataModule`). With f_I, f_T the towers' pooled
features:

- global: ẑ_I = norm(f_I(x⁰) W_I), ẑ_T = norm(f_T(t⁰) W_T), scale s = exp(t), t initialised
  to log(1/0.07) (``encoder.logit_scale``): ``loss_terms`` → ``z_i``, ``z_t``;
- local: û_I^j = norm(g_I(f_I(xʲ))), û_T^k = norm(g_T(f_T^local(tᵏ))), with the separate
  ("l2l") projectors g = ``local_image_head`` / ``local_text_head`` (``separate_proj``:
  Linear(w, 4096) → BN → ReLU → Linear(4096, 4096) → BN → ReLU → Linear(4096, embed_dim);
  ``local_head.hidden_dims: [4096]`` gives the "2-layer MLP" of a secondary description,
  ``local_proj: linear`` a bias-free linear) and their own scale s′ = exp(t′), t′
  initialised to log(1/0.1) (``local_logit_scale``). Without ``separate_proj`` the local
  embeddings use CLIP's projections and s′ = s, as in the official code;
- f_T^local is the text tower in the official "local" mode: dropout ``text_dropout`` on
  every block's input and drop-path ``text_drop_path`` on both residual branches
  (:class:`TextLocalMode`; 0 on YFCC, 0.05 on CC12M, 0.2 on CC3M);
- loss (:func:`zoo.losses.clip_rocket.cl2l_loss`):
  L = [(L_g^{I→T} + K·L_l^{I→T})/(1+K) + (L_g^{T→I} + K·L_l^{T→I})/(1+K)]/2 × (2 if
  ``loss_reduction == "sum"``), L_l averaged over the K² (image view, text view) pairs with
  label smoothing ε = ``label_smoothing`` (0.1) on the local terms only;
- after every optimiser step both t and t′ are clamped to [0, 4.6052] (s, s′ ≤ 100).

Non-contrastive baselines (``variant``; each term is added to the CL2L loss, as the official
``*LIPLoss`` classes do; heads read the towers' pooled features of every view):

- ``barlip``: :func:`zoo.losses.clip_rocket.barlip_loss` on BarLIP projectors
  (w → 3000 → 3000 → 8192, BN after the last layer), λ = 5e-3, scale 0.025;
- ``siamlip``: :func:`zoo.losses.clip_rocket.siamlip_loss`, projector w → 2048 → 128
  (bias-free, last BN without affine), cross-modal predictor 128 → 2048 → 128;
- ``byolip``: SiamLIP whose targets v come from a momentum copy of the encoder and the
  SiamLIP heads (:class:`zoo.ema.EMATeacher`, constant τ = ``momentum`` = 0.99, parameters
  only, run in training mode as the official ``momentum_model.train()``);
- ``swalip``: :func:`zoo.losses.clip_rocket.swalip_loss` on the local embeddings, weight 0.2
  (needs ``label_smoothing: 0``, which the official ``SwALIPLoss`` asserts).

``separate_proj_child`` gives the strong views their own BarLIP / SiamLIP heads.

Zero-shot (``zeroshot_head``): ``z`` (default) scores with the global embeddings, the
official headline ``acc1_z``; ``h`` with the local ones; ``zh`` with the official ensemble
w·sim_z + (1 − w)·sim_h, w = ``zeroshot_weight`` (features and class weights are the
concatenations [√w ẑ, √(1−w) ĥ], whose cosine is exactly that sum). Which of them the
paper's tables report is not stated in the sources.

Optimiser (README / ``repro_exps.txt`` / ``main.py``): AdamW (0.9, 0.98), eps 1e-8, lr 3e-3,
weight decay 0.1 (CC3M: 0.5), none on parameters with ndim < 2 or "bias" / "ln" / "bn" in the
name (``groups: slip``), 1 warm-up epoch from 1e-6, cosine to 1e-5 per step.

Paper vs official code, and other choices:

- the two official per-tower switches for the local projector type (``--cl2l-img-proj-type``,
  ``--cl2l-txt-proj-type``) are one ``local_proj`` here;
- ResNet towers (BatchNorm) run each view in its own pass, as the official code does (batch
  statistics per view); towers without BatchNorm run all views in one batched pass (the same
  features); heads with BatchNorm run per view for the same reason;
- the SiamLIP predictor's first linear has a bias (the official one has none): it is
  followed by BatchNorm, which removes it, so the function is the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.slip import SLIP_OPTIM
from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.backbones.dual_encoder import LOG_100
from zoo.ema import EMATeacher
from zoo.heads import MLPSpec, ProjectionMLP
from zoo.losses import GatherPolicy
from zoo.losses.clip_rocket import (
    CL2LLoss,
    Reduction,
    barlip_loss,
    siamlip_loss,
    swalip_loss,
)
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols, FeatureKind, Template, Tokenizer
from zoo.specs import to_spec

# README / repro_exps.txt / main.py: AdamW (0.9, 0.98), lr 3e-3, weight decay 0.1, 1 warm-up
# epoch from 1e-6, then cosine to 1e-5, per step: SLIP's settings (the code base it extends).
CLIP_ROCKET_OPTIM = SLIP_OPTIM
LOG_INV_01 = math.log(1 / 0.1)  # the local logit scale's initial value (s′ = 10)

Variant = Literal["cl2l", "barlip", "siamlip", "byolip", "swalip"]
VARIANTS = ("cl2l", "barlip", "siamlip", "byolip", "swalip")


class TextLocalMode:
    """The official text transformer's "local" mode (``models.py``,
    ``ResidualAttentionBlock.forward(mode='local')``), used on the strong captions: dropout
    on each block's input (the token + position embeddings, then every block's output but
    the last) and drop-path (``torchvision.ops.stochastic_depth``, per sample) on the
    attention and MLP residual branches (the outputs of ``self_attn.out_proj`` and ``mlp``).

    Hooks on the Hugging Face modules of a :class:`zoo.backbones.text.CLIPTextTower`, active
    only inside :meth:`enabled` and in training mode; the tower keeps a reference as
    ``tower.local_mode``, so a deep copy (an EMA teacher) gets its own switch.
    """

    def __init__(self, tower: nn.Module, dropout: float = 0.0, drop_path: float = 0.0):
        if not (0.0 <= dropout < 1.0 and 0.0 <= drop_path < 1.0):
            raise ValueError(
                f"text dropout / drop-path must be in [0, 1), got {dropout}, {drop_path}"
            )
        self.dropout, self.drop_path, self.active = dropout, drop_path, False
        model = tower.model
        layers = list(model.encoder.layers)
        if dropout > 0:
            for module in [model.embeddings, *layers[:-1]]:
                module.register_forward_hook(self._dropout_hook)
        if drop_path > 0:
            for layer in layers:
                layer.self_attn.out_proj.register_forward_hook(self._drop_path_hook)
                layer.mlp.register_forward_hook(self._drop_path_hook)
        tower.local_mode = self

    def _dropout_hook(self, module: nn.Module, args, output):
        if not (self.active and module.training):
            return None
        if isinstance(output, tuple):
            return (F.dropout(output[0], self.dropout, True), *output[1:])
        return F.dropout(output, self.dropout, True)

    def _drop_path_hook(self, module: nn.Module, args, output):
        if not (self.active and module.training):
            return None
        from torchvision.ops import stochastic_depth

        return stochastic_depth(output, self.drop_path, "row", True)

    @contextmanager
    def enabled(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _per_view(head: nn.Module, feats: Tensor) -> Tensor:
    """``head`` on ``(V, B, C)`` features → ``(V, B, D)``: one pass per view when the head
    has BatchNorm (per-view batch statistics, as the official code), else one pass."""
    if _has_batch_norm(head):
        return torch.stack([head(f) for f in feats.unbind(0)])
    v, b, c = feats.shape
    return head(feats.reshape(v * b, c)).view(v, b, -1)


class CLIPRocket(DualEncoderProtocols, ZooModule):
    """CLIP-rocket / CL2L (Fini et al., TMLR 2023): see the module docstring."""

    def __init__(
        self,
        encoder: DualEncoderSpec | None = None,
        separate_proj: bool = True,
        local_head: MLPSpec | None = None,
        local_proj: Literal["mlp", "linear"] = "mlp",
        local_logit_scale_init: float = LOG_INV_01,
        label_smoothing: float = 0.1,
        loss_reduction: Reduction = "avg",
        text_dropout: float = 0.0,
        text_drop_path: float = 0.0,
        variant: Variant = "cl2l",
        separate_proj_child: bool = False,
        barlip_head: MLPSpec | None = None,
        barlip_lambda: float = 5e-3,
        barlip_scale: float = 0.025,
        siamlip_head: MLPSpec | None = None,
        siamlip_predictor: MLPSpec | None = None,
        momentum: float = 0.99,
        swalip_weight: float = 0.2,
        swalip_sinkhorn_iterations: int = 3,
        swalip_sinkhorn_epsilon: float = 0.05,
        zeroshot_head: Literal["z", "h", "zh"] = "z",
        zeroshot_weight: float = 0.5,
        clip_gather: GatherPolicy = "constant",
        optim: OptimSpec = CLIP_ROCKET_OPTIM,
    ):
        optim = merge_onto(CLIP_ROCKET_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        if variant not in VARIANTS:
            raise ValueError(f"model.variant must be one of {VARIANTS}, got {variant!r}")
        if variant == "swalip" and label_smoothing != 0:
            raise ValueError(
                "model.variant 'swalip' needs model.label_smoothing: 0 (the official "
                f"SwALIPLoss asserts it), got {label_smoothing}"
            )
        if zeroshot_head != "z" and not 0.0 <= zeroshot_weight <= 1.0:
            raise ValueError(f"model.zeroshot_weight must be in [0, 1], got {zeroshot_weight}")
        self.variant, self.separate_proj = variant, separate_proj
        self.zeroshot_head, self.zeroshot_weight = zeroshot_head, zeroshot_weight
        self.encoder = build_dual_encoder(to_spec(DualEncoderSpec, encoder))
        vw, tw, dim = self.encoder.vision_width, self.encoder.text_width, self.encoder.embed_dim
        if text_dropout > 0 or text_drop_path > 0:
            TextLocalMode(self.encoder.text, text_dropout, text_drop_path)
        if separate_proj:
            if local_proj == "linear":
                self.local_image_head = nn.Linear(vw, dim, bias=False)
                self.local_text_head = nn.Linear(tw, dim, bias=False)
            else:
                spec = to_spec(MLPSpec, local_head or MLPSpec([4096, 4096], dim))
                self.local_image_head = ProjectionMLP(vw, spec)
                self.local_text_head = ProjectionMLP(tw, spec)
            self.local_logit_scale = nn.Parameter(torch.full((1,), float(local_logit_scale_init)))
        self.cl2l_loss = CL2LLoss(label_smoothing, loss_reduction, clip_gather)
        self.clip_gather = clip_gather
        self.barlip_lambda, self.barlip_scale = barlip_lambda, barlip_scale
        self.swalip_weight = swalip_weight
        self.swalip_iterations, self.swalip_epsilon = (
            swalip_sinkhorn_iterations,
            swalip_sinkhorn_epsilon,
        )
        if variant == "barlip":
            spec = to_spec(MLPSpec, barlip_head or MLPSpec([3000, 3000], 8192, last_norm=True))
            self.barlip = self._pair_heads(spec, spec, separate_proj_child)
        if variant in ("siamlip", "byolip"):
            proj = to_spec(
                MLPSpec,
                siamlip_head
                or MLPSpec([2048], 128, bias=False, last_norm=True, last_norm_affine=False),
            )
            pred = to_spec(MLPSpec, siamlip_predictor or MLPSpec([2048], proj.out_dim))
            self.siamlip = self._pair_heads(proj, proj, separate_proj_child)
            self.siamlip.update(
                {
                    f"{kind}_predictor{suffix}": ProjectionMLP(proj.out_dim, pred)
                    for kind in ("image", "text")
                    for suffix in (("", "_local") if separate_proj_child else ("",))
                }
            )
        if variant == "byolip":
            self.momentum_teacher = EMATeacher(
                self._siam_net(), momentum, "constant", buffers="none", train_mode=True
            )

    def _pair_heads(self, image: MLPSpec, text: MLPSpec, separate_local: bool) -> nn.ModuleDict:
        vw, tw = self.encoder.vision_width, self.encoder.text_width
        heads = {"image": ProjectionMLP(vw, image), "text": ProjectionMLP(tw, text)}
        if separate_local:
            heads |= {
                "image_local": ProjectionMLP(vw, image),
                "text_local": ProjectionMLP(tw, text),
            }
        return nn.ModuleDict(heads)

    def _siam_net(self) -> nn.ModuleDict:
        """The modules BYOLIP's momentum copy follows (names match the teacher's)."""
        return nn.ModuleDict({"encoder": self.encoder, "siamlip": self.siamlip})

    # --- features ---------------------------------------------------------------------------
    @staticmethod
    def image_trunks(encoder: nn.Module, image: Tensor, views: Sequence[Tensor]) -> list[Tensor]:
        """f_I of the weak view and the strong views: one batched pass when the tower has no
        BatchNorm and the shapes agree (per-sample towers: the same features), else one
        pass per view (the official code's per-view batch statistics)."""
        if not _has_batch_norm(encoder.visual) and all(v.shape == image.shape for v in views):
            return list(encoder.image_trunk(torch.cat([image, *views])).chunk(1 + len(views)))
        return [encoder.image_trunk(x) for x in (image, *views)]

    @staticmethod
    def text_trunks(
        encoder: nn.Module, text: Tensor, text_views: Sequence[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """Pooled f_T of the weak caption (global mode) and of the strong captions (local
        mode: :class:`TextLocalMode`); one pass when the local mode adds nothing."""
        local = getattr(encoder.text, "local_mode", None)
        if local is None or not text_views:
            feats = encoder.text(torch.cat([text, *text_views])).chunk(1 + len(text_views))
            return feats[0], list(feats[1:])
        weak = encoder.text(text)
        with local.enabled():
            strong = encoder.text(torch.cat(list(text_views))).chunk(len(text_views))
        return weak, list(strong)

    def local_image(self, feats: Tensor) -> Tensor:
        """g_I: the local image projector (CLIP's projection without ``separate_proj``)."""
        if self.separate_proj:
            if feats.dim() == 3:
                return _per_view(self.local_image_head, feats)
            return self.local_image_head(feats)
        return feats @ self.encoder.image_projection

    def local_text(self, feats: Tensor) -> Tensor:
        if self.separate_proj:
            if feats.dim() == 3:
                return _per_view(self.local_text_head, feats)
            return self.local_text_head(feats)
        return feats @ self.encoder.text_projection

    @property
    def local_scale(self) -> Tensor:
        """s′ = exp(t′) (the global s without ``separate_proj``)."""
        return (self.local_logit_scale if self.separate_proj else self.encoder.logit_scale).exp()

    # --- loss -------------------------------------------------------------------------------
    def loss_terms(self, batch: dict) -> dict[str, Tensor]:
        views = list(batch.get("views") or [])
        text_views = list(batch.get("text_views") or [])
        if len(views) != len(text_views):
            raise ValueError(
                f"CLIP-rocket pairs K strong images with K strong captions, got {len(views)} "
                f"image views and {len(text_views)} caption views (batch keys 'views' and "
                "'text_views'; use datamodules.clip_rocket.CLIPRocketDataModule)"
            )
        k = len(views)
        f_img = self.image_trunks(self.encoder, batch["image"], views)
        f_txt, f_txt_views = self.text_trunks(self.encoder, batch["text"], text_views)
        z_i = f_img[0] @ self.encoder.image_projection
        z_t = f_txt @ self.encoder.text_projection
        strong_img = torch.stack(f_img[1:]) if k else None
        strong_txt = torch.stack(f_txt_views) if k else None
        u_i = self.local_image(strong_img) if k else None
        u_t = self.local_text(strong_txt) if k else None
        scale, local_scale = self.encoder.logit_scale.exp(), self.local_scale
        terms = self.cl2l_loss(z_i, z_t, u_i, u_t, scale, local_scale)
        loss = terms["loss"]
        if self.variant == "barlip":
            extra = self._barlip_term(f_img[0], f_txt, strong_img, strong_txt)
            terms["barlip_loss"], loss = extra, loss + extra
        elif self.variant in ("siamlip", "byolip"):
            extra = self._siamlip_term(batch, f_img[0], f_txt, strong_img, strong_txt)
            terms["siamlip_loss"], loss = extra, loss + extra
        elif self.variant == "swalip" and k:
            extra = swalip_loss(
                u_i, u_t, local_scale, self.swalip_iterations, self.swalip_epsilon, self.clip_gather
            )
            terms["swalip_loss"], loss = extra, loss + self.swalip_weight * extra
        terms["loss"] = loss
        terms["logit_scale"] = scale.detach().squeeze()
        terms["local_logit_scale"] = local_scale.detach().squeeze()
        return terms

    def _pair_outputs(self, heads: nn.ModuleDict, name: str, glob: Tensor, strong: Tensor | None):
        head = heads[name]
        # nn.ModuleDict has no .get
        local_head = heads[f"{name}_local"] if f"{name}_local" in heads else head  # noqa: SIM401
        return head(glob), (_per_view(local_head, strong) if strong is not None else None)

    def _barlip_term(self, f_i, f_t, s_i, s_t) -> Tensor:
        v_i, v_i_local = self._pair_outputs(self.barlip, "image", f_i, s_i)
        v_t, v_t_local = self._pair_outputs(self.barlip, "text", f_t, s_t)
        return barlip_loss(v_i, v_t, v_i_local, v_t_local, self.barlip_lambda, self.barlip_scale)

    def _siam_projections(self, heads: nn.ModuleDict, f_i, f_t, s_i, s_t):
        v_i, v_i_local = self._pair_outputs(heads, "image", f_i, s_i)
        v_t, v_t_local = self._pair_outputs(heads, "text", f_t, s_t)
        return v_i, v_t, v_i_local, v_t_local

    def _siamlip_term(self, batch: dict, f_i, f_t, s_i, s_t) -> Tensor:
        heads = self.siamlip
        v_i, v_t, v_i_local, v_t_local = self._siam_projections(heads, f_i, f_t, s_i, s_t)
        p_i, p_i_local = self._pair_outputs(heads, "image_predictor", v_i, v_i_local)
        p_t, p_t_local = self._pair_outputs(heads, "text_predictor", v_t, v_t_local)
        if self.variant == "byolip":
            v_i, v_t, v_i_local, v_t_local = self._momentum_targets(batch)
        return siamlip_loss(p_i, p_t, v_i, v_t, p_i_local, p_t_local, v_i_local, v_t_local)

    @torch.no_grad()
    def _momentum_targets(self, batch: dict) -> tuple[Tensor, ...]:
        """BYOLIP's targets: the momentum encoder and SiamLIP heads on the same inputs."""
        net = self.momentum_teacher.module
        views, text_views = list(batch.get("views") or []), list(batch.get("text_views") or [])
        f_img = self.image_trunks(net["encoder"], batch["image"], views)
        f_txt, f_txt_views = self.text_trunks(net["encoder"], batch["text"], text_views)
        s_i = torch.stack(f_img[1:]) if views else None
        s_t = torch.stack(f_txt_views) if views else None
        return self._siam_projections(net["siamlip"], f_img[0], f_txt, s_i, s_t)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        self.log_losses({k: v.detach() for k, v in terms.items()})
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        z_i, z_t, scale = self.encoder(batch["image"], batch["text"])
        terms = self.cl2l_loss(z_i, z_t, None, None, scale, scale)
        self.log(f"{self.eval_prefix}/clip_loss", terms["clip_loss_global"], sync_dist=True)

    def after_optimizer_step(self) -> None:
        # official main.py: the momentum update, then both logit scales clamped to [0, ln 100]
        if self.variant == "byolip":
            self.momentum_teacher.update_from_trainer(self._siam_net(), self.trainer)
        self.encoder.clamp_logit_scale()
        if self.separate_proj:
            with torch.no_grad():
                self.local_logit_scale.clamp_(0, LOG_100)

    # --- protocols (zero-shot, retrieval, probes) -------------------------------------------
    def _parts(self, trunk: Tensor, projection: Tensor, local) -> Tensor:
        if self.zeroshot_head == "h":
            return local(trunk)
        z = trunk @ projection
        if self.zeroshot_head == "z":
            return z
        w = self.zeroshot_weight
        return torch.cat(
            [
                math.sqrt(w) * F.normalize(z, dim=-1),
                math.sqrt(1 - w) * F.normalize(local(trunk), dim=-1),
            ],
            dim=-1,
        )

    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        """``trunk``: f_I; ``embed``: the ``zeroshot_head``'s embedding (module docstring)."""
        if kind == "trunk":
            return self.encoder.image_trunk(images)
        if kind != "embed":
            raise ValueError(f"unknown feature kind {kind!r}; expected 'embed' or 'trunk'")
        return self._parts(
            self.encoder.image_trunk(images), self.encoder.image_projection, self.local_image
        )

    def text_features(self, tokens: Tensor) -> Tensor:
        return self._parts(self.encoder.text(tokens), self.encoder.text_projection, self.local_text)

    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """The CLIP prompt ensemble of the ``zeroshot_head``'s text embedding; for ``zh``,
        the z and h ensembles (each averaged and renormalised on its own, as the official
        ``validate_zeroshot``) concatenated with weights √w, √(1 − w)."""
        if self.zeroshot_head != "zh":
            return super().class_weights(
                classnames, templates, tokenizer=tokenizer, batch_size=batch_size
            )
        from zoo.eval.zeroshot import template_ensemble
        from zoo.protocols import ProtocolUnavailable

        if tokenizer is None:
            raise ProtocolUnavailable(f"{type(self).__name__}.class_weights needs a tokenizer")
        device, w = self.device, self.zeroshot_weight

        def z_text(tokens: Tensor) -> Tensor:
            return self.encoder.text(tokens) @ self.encoder.text_projection

        def h_text(tokens: Tensor) -> Tensor:
            return self.local_text(self.encoder.text(tokens))

        z = template_ensemble(
            z_text, tokenizer, classnames, templates, device, batch_size, model=self
        )
        h = template_ensemble(
            h_text, tokenizer, classnames, templates, device, batch_size, model=self
        )
        return torch.cat([math.sqrt(w) * z, math.sqrt(1 - w) * h], dim=-1)
