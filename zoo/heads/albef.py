"""ALBEF / mPLUG fusion objectives (ITM and MLM) on top of any dual encoder.

Li et al., 2021 (ALBEF) and Li et al., 2022 (mPLUG); TiMix (Jiang et al., 2024) trains on
mPLUG-base with ``L_base = L_MLM + L_ITA + L_ITM + L_prefixLM``. The facts below come from
the papers and the official code (salesforce/ALBEF ``models/model_pretrain.py``,
``configs/Pretrain.yaml``; chaoyajiang/TiMiX ``models/model_pretrain_mplug.py``,
``configs/pretrain_mplug_base.yaml``); the loss equations are in :mod:`zoo.losses.albef`.

- **Fusion encoder** (:class:`FusionEncoder`). BERT layers whose self-attention over the
  text is followed by cross-attention to all image tokens; ALBEF uses BERT-base layers
  6–11 (6 layers, 12 heads). Built from transformers' ``BertLayer`` with
  ``add_cross_attention=True``. Since transformers 5 a cross-attention ``BertLayer``
  requires ``is_decoder=True``, which makes its self-attention causal when no mask is
  given; the fusion encoder switches that off (``is_causal = False``) and always passes
  an explicit bidirectional padding mask, so the text self-attention is ALBEF's
  bidirectional one. When the image width differs from the text width the image tokens
  go through ``Linear → LayerNorm`` first (mPLUG's ``visn_fc`` / ``visn_layer_norm`` for
  ViT-L); otherwise they enter unchanged, as in ALBEF.
- **ITM head** ``Linear(text_width, 2)`` on the fused [CLS]; **MLM head** transformers'
  ``BertOnlyMLMHead`` (transform + decoder), tied to no embedding.
- **Momentum model** (:class:`MomentumCopy`). ALBEF keeps EMA copies (m = 0.995, updated
  every iteration, constant) of the vision encoder, text encoder, both projections and the
  fusion encoder + MLM head (``text_encoder_m`` is a full ``BertForMaskedLM``); the ITM head
  has no copy. The momentum model runs in train mode in the official code (the whole model
  is in ``train()``), so dropout is on there too; ``MomentumCopy(train_mode=True)`` is
  the default.
- **Temperature.** Learnable, initialised to 0.07 and clamped to [0.001, 0.5] before every
  forward (official ``self.temp.clamp_(0.001, 0.5)``). With the zoo's log-scale
  parameter ``t = log(1/τ)`` this is ``t ∈ [log 2, log 1000]``:
  :func:`clamp_albef_logit_scale_`.

Differences from the official code, by design: hard negatives are drawn with one
``torch.multinomial`` over all rows instead of a loop over the batch; the fusion is ALBEF's
cross-attention BERT, not mPLUG's skip-connected asymmetric co-attention (mPLUG's
``FusionEncoder`` with 3 fusion layers and ``stride_layer``); mPLUG's prefix-LM decoder is
not part of this module. ``queue_size > 0`` (ALBEF's 65,536-entry feature queue) is served by
:class:`FeatureQueue`, which the owner of the ITA loss uses; TiMix's code leaves it out
(``_dequeue_and_enqueue`` commented out), hence the default 0.

A module wires it up like this::

    self.albef = AlbefObjectives(AlbefSpec(), image_width, text_width, tok.vocab_size,
                                 tok.pad_token_id, tok.mask_token_id,
                                 [tok.pad_token_id, tok.cls_token_id])
    self.momentum = MomentumCopy({"dual": self.dual, "albef": self.albef}, momentum=0.995)

    def training_step(self, batch, _):
        clamp_albef_logit_scale_(self.dual.logit_scale)
        ...  # online tokens, sim_i2t = scale * v @ t.T, sim_t2i = sim_i2t.T
        with torch.no_grad():
            self.momentum.update({"dual": self.dual, "albef": self.albef})
            ...  # momentum features → sim_i2t_m, sim_t2i_m, image_tokens_m
        loss_ita = ita_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha)
        masked_ids, labels = self.albef.mask(ids, mask, generator)
        with torch.no_grad():
            logits_m = self.momentum["albef"].mlm_logits(
                image_tokens_m, momentum_text(masked_ids, mask), mask)
        losses = self.albef(image_tokens=..., text_tokens=..., text_ids=ids, text_mask=mask,
                            sim_i2t=sim_i2t, sim_t2i=sim_t2i, encode_text_tokens=online_text,
                            momentum_logits_mlm=logits_m, masked=(masked_ids, labels),
                            alpha=alpha)

``momentum_logits_mlm`` may instead be a callable ``(masked_ids, mask) -> logits``; the
module then masks internally and calls it on the masked ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.ema import EMATeacher
from zoo.losses.albef import itm_loss, mask_tokens, mlm_loss, sample_hard_negatives

TEMPERATURE_RANGE = (0.001, 0.5)  # official ALBEF / mPLUG clamp of the learnable τ
TEMPERATURE_INIT = 0.07


@dataclass
class AlbefSpec:
    """ALBEF's fusion objectives. Defaults are the paper's (BERT-base fusion layers 6–11)."""

    fusion_layers: int = 6
    heads: int = 12
    itm: bool = True
    mlm: bool = True
    mlm_probability: float = 0.15
    momentum: float = 0.995
    distill_alpha: float = 0.4
    queue_size: int = 0  # TiMix's code does not use a queue (dequeue commented out)
    vocab_size: int | None = None  # from the tokenizer when None
    dropout: float = 0.1  # BERT's hidden and attention dropout

    def __post_init__(self) -> None:
        if self.fusion_layers < 1:
            raise ValueError(f"AlbefSpec.fusion_layers must be >= 1, got {self.fusion_layers}")
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise ValueError(
                f"AlbefSpec.mlm_probability must be in [0, 1], got {self.mlm_probability}"
            )
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"AlbefSpec.momentum must be in [0, 1], got {self.momentum}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"AlbefSpec.distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.queue_size < 0:
            raise ValueError(f"AlbefSpec.queue_size must be >= 0, got {self.queue_size}")


def clamp_albef_logit_scale_(logit_scale: Tensor) -> Tensor:
    """Clamp a log-scale ``t = log(1/τ)`` in place so that τ ∈ [0.001, 0.5] (ALBEF's clamp)."""
    low, high = math.log(1.0 / TEMPERATURE_RANGE[1]), math.log(1.0 / TEMPERATURE_RANGE[0])
    with torch.no_grad():
        return logit_scale.clamp_(low, high)


def _bert_config(width: int, layers: int, heads: int, dropout: float, vocab_size: int = 2):
    from transformers import BertConfig

    if width % heads:
        raise ValueError(
            f"AlbefSpec.heads={heads} must divide the text width {width} (the fusion width)"
        )
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        is_decoder=True,  # transformers 5 allows cross-attention only in decoder layers
        add_cross_attention=True,
        attn_implementation="sdpa",
    )


def _bert_init_(module: nn.Module, std: float) -> None:
    """BERT's initialisation (``BertPreTrainedModel._init_weights``): N(0, 0.02) weights, zero
    biases, unit LayerNorm. The layers here are built outside a ``PreTrainedModel``, whose
    ``post_init`` would otherwise apply it."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FusionEncoder(nn.Module):
    """``layers`` BERT layers: bidirectional self-attention over the text (padding masked),
    then cross-attention to every image token, then the feed-forward block."""

    def __init__(self, text_width: int, image_width: int, layers: int, heads: int, dropout=0.1):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLayer

        self.config = _bert_config(text_width, layers, heads, dropout)
        self.layers = nn.ModuleList(BertLayer(self.config, layer_idx=i) for i in range(layers))
        for layer in self.layers:
            layer.attention.self.is_causal = False  # ALBEF's fusion text attention is bidirectional
        self.image_proj: nn.Module = (
            nn.Identity()
            if image_width == text_width
            else nn.Sequential(
                nn.Linear(image_width, text_width), nn.LayerNorm(text_width, eps=1e-12)
            )
        )
        _bert_init_(self, self.config.initializer_range)

    def forward(
        self,
        text_tokens: Tensor,
        text_mask: Tensor,
        image_tokens: Tensor,
        image_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, L, Dt) text states, (B, L) mask (1 = real), (B, N, Dv) image tokens → (B, L, Dt)."""
        neg = torch.finfo(text_tokens.dtype).min
        self_mask = (1.0 - text_mask[:, None, None, :].to(text_tokens.dtype)) * neg
        cross_mask = (
            None
            if image_mask is None
            else (1.0 - image_mask[:, None, None, :].to(text_tokens.dtype)) * neg
        )
        image = self.image_proj(image_tokens)
        hidden = text_tokens
        for layer in self.layers:
            hidden = layer(hidden, self_mask, image, encoder_attention_mask=cross_mask)
        return hidden


class AlbefObjectives(nn.Module):
    """ITM and MLM of ALBEF on given vision and text tower tokens; see the module docstring.

    ``special_ids`` are never chosen for MLM (the official code: [PAD] and [CLS]).
    """

    def __init__(
        self,
        spec: AlbefSpec,
        image_width: int,
        text_width: int,
        vocab_size: int,
        pad_id: int,
        mask_id: int,
        special_ids: Sequence[int],
    ):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        self.spec = spec
        self.vocab_size = spec.vocab_size if spec.vocab_size is not None else vocab_size
        self.pad_id, self.mask_id = pad_id, mask_id
        self.special_ids = sorted({pad_id, *special_ids})
        self.fusion = FusionEncoder(
            text_width, image_width, spec.fusion_layers, spec.heads, spec.dropout
        )
        self.itm_head = nn.Linear(text_width, 2) if spec.itm else None
        self.mlm_head = None
        if spec.mlm:
            config = _bert_config(
                text_width, spec.fusion_layers, spec.heads, spec.dropout, self.vocab_size
            )
            self.mlm_head = BertOnlyMLMHead(config)
            # transformers 5 keeps a separate ``bias`` that only weight tying links to the
            # decoder; untied it would be a parameter without gradient (a DDP error)
            self.mlm_head.predictions.decoder.bias = self.mlm_head.predictions.bias
            _bert_init_(self.mlm_head, config.initializer_range)
        if self.itm_head is not None:
            _bert_init_(self.itm_head, self.fusion.config.initializer_range)

    def mask(
        self, ids: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """:func:`zoo.losses.albef.mask_tokens` with this module's vocabulary and ids."""
        return mask_tokens(
            ids,
            mask,
            self.spec.mlm_probability,
            self.vocab_size,
            self.mask_id,
            self.special_ids,
            generator,
        )

    def mlm_logits(self, image_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """(B, L, V) MLM logits of text states fused with image tokens (the momentum copy's
        call for the distillation targets)."""
        if self.mlm_head is None:
            raise ValueError("mlm_logits needs AlbefSpec.mlm = True")
        return self.mlm_head(self.fusion(text_tokens, text_mask, image_tokens))

    def itm_logits(self, image_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """(B, 2) ITM logits from the fused [CLS] (position 0)."""
        if self.itm_head is None:
            raise ValueError("itm_logits needs AlbefSpec.itm = True")
        return self.itm_head(self.fusion(text_tokens, text_mask, image_tokens)[:, 0])

    def forward(
        self,
        *,
        image_tokens: Tensor,
        text_tokens: Tensor,
        text_ids: Tensor,
        text_mask: Tensor,
        sim_i2t: Tensor,
        sim_t2i: Tensor,
        encode_text_tokens: Callable[[Tensor, Tensor], Tensor],
        momentum_logits_mlm: Tensor | Callable[[Tensor, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
        masked: tuple[Tensor, Tensor] | None = None,
        alpha: float | None = None,
    ) -> dict[str, Tensor]:
        """``{"itm": L_itm, "mlm": L_mlm}`` (the enabled ones).

        ``masked = (masked_ids, labels)`` from :meth:`mask` replaces the internal masking;
        it is required when ``momentum_logits_mlm`` is a tensor, which must come from the
        same masked ids. ``alpha`` overrides ``spec.distill_alpha`` (the caller's epoch-0
        ramp).
        """
        losses: dict[str, Tensor] = {}
        if self.itm_head is not None:
            losses["itm"] = self._itm(
                image_tokens, text_tokens, text_mask, sim_i2t, sim_t2i, generator
            )
        if self.mlm_head is not None:
            losses["mlm"] = self._mlm(
                image_tokens,
                text_ids,
                text_mask,
                encode_text_tokens,
                momentum_logits_mlm,
                generator,
                masked,
                self.spec.distill_alpha if alpha is None else alpha,
            )
        return losses

    def _itm(self, image, text, text_mask, sim_i2t, sim_t2i, generator) -> Tensor:
        neg_image = sample_hard_negatives(sim_t2i, generator)  # a hard image for each text
        neg_text = sample_hard_negatives(sim_i2t, generator)  # a hard text for each image
        pos = self.itm_logits(image, text, text_mask)
        # official order: (text, hard image) pairs first, then (hard text, image) pairs
        neg = self.itm_logits(
            torch.cat([image[neg_image], image]),
            torch.cat([text, text[neg_text]]),
            torch.cat([text_mask, text_mask[neg_text]]),
        )
        return itm_loss(pos, neg)

    def _mlm(self, image, ids, mask, encode, momentum, generator, masked, alpha) -> Tensor:
        if masked is None:
            if isinstance(momentum, Tensor):
                raise ValueError(
                    "momentum_logits_mlm as a tensor must come from the same masked ids: pass "
                    "masked=(masked_ids, labels) from AlbefObjectives.mask, or a callable"
                )
            masked = self.mask(ids, mask, generator)
        masked_ids, labels = masked
        logits = self.mlm_logits(image, encode(masked_ids, mask), mask)
        soft = None
        if momentum is not None and alpha > 0:
            with torch.no_grad():
                logits_m = momentum if isinstance(momentum, Tensor) else momentum(masked_ids, mask)
                soft = logits_m.float().softmax(dim=-1)
        return mlm_loss(logits, labels, soft, alpha)


class MomentumCopy(nn.Module):
    """EMA copies of named parts (dual encoder, projections, fusion + MLM head) with ALBEF's
    constant momentum: ``θ_m ← m·θ_m + (1 − m)·θ`` at every :meth:`update`.

    One :class:`zoo.ema.EMATeacher` over a ``ModuleDict`` of the parts, so the update is its
    two fused ``_foreach`` calls. The parts are passed again at update time rather than kept,
    so the owner's state dict holds each online weight once and the copies under
    ``<attr>.ema.module.<part>.…``. ``momentum[name]`` is the copy of part ``name``.
    """

    def __init__(
        self, parts: Mapping[str, nn.Module], momentum: float = 0.995, train_mode: bool = True
    ):
        super().__init__()
        self.ema = EMATeacher(
            nn.ModuleDict(dict(parts)),
            momentum=momentum,
            schedule="constant",
            buffers="copy",
            train_mode=train_mode,
        )

    def __getitem__(self, name: str) -> nn.Module:
        return self.ema.module[name]

    @torch.no_grad()
    def update(self, parts: Mapping[str, nn.Module]) -> float:
        return self.ema.update(nn.ModuleDict(dict(parts)), 0, 1)


class FeatureQueue(nn.Module):
    """ALBEF's queues of momentum features (``image_queue`` / ``text_queue``, (D, Q), random
    unit columns at start), for ITA over batch + queue when ``AlbefSpec.queue_size > 0``.

    :meth:`enqueue` writes the (already gathered) momentum features at the pointer, which
    wraps; as in the official code Q must be a multiple of the global batch.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"AlbefSpec.queue_size must be > 0 for a queue, got {size}")
        self.register_buffer("image", nn.functional.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("text", nn.functional.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_feat: Tensor, text_feat: Tensor) -> None:
        b, size = image_feat.shape[0], self.image.shape[1]
        if size % b:
            raise ValueError(f"AlbefSpec.queue_size={size} must be a multiple of the batch {b}")
        p = int(self.ptr)
        self.image[:, p : p + b] = image_feat.T
        self.text[:, p : p + b] = text_feat.T
        self.ptr[0] = (p + b) % size
