"""TiMix: "Text-aware Image Mixing for Effective Vision-Language Pre-training" (Jiang, Ye, Xu,
Ye, Yan, Zhang, Zhang; Jiang et al., AAAI 2024; arXiv 2312.08846). Official code:
github.com/chaoyajiang/TiMiX @ 3363466 (the mPLUG-TiMix variant: ``pretrain_mplug.py``,
``TPMix.py``, ``models/model_pretrain_mplug.py``, ``models/clip/model.py``,
``configs/pretrain_mplug_base.yaml``).

Here on the zoo's dual encoder (a timm ViT and a CLIP text tower, :class:`DualEncoder`),
with ITC as the base objective (the paper's mPLUG base adds MLM, ITM and prefix LM; see
"Not here" below). For an image–text batch (x, t) and a region batch (x^r, phrase, box):

- TPP (:class:`zoo.heads.patch_predictor.TextAwarePatchPredictor`) after ViT block
  ``pruning_loc`` on the patch tokens, with the text tower's pooled feature:
  log p ∈ R^{B×N×2}; the tower runs in two parts, one forward
  (:func:`zoo.heads.patch_predictor.vit_forward_split`);
- L_PTA = CE(log p^r, patch labels of the box) (:func:`zoo.losses.timix.pta_loss`; labels by
  the official "any overlap" rule, :func:`zoo.heads.patch_predictor.box_patch_labels`);
- L_base = L_ITC = ½[CE(ẑ_I ẑ_Tᵀ/τ, I) + CE(ẑ_T ẑ_Iᵀ/τ, I)] (ALBEF's ITA without momentum
  distillation; :func:`zoo.losses.clip_infonce` at s = 1/τ), τ learnable, initialised to
  0.07 and clamped to [0.001, 0.5] before every forward and after every step (ALBEF /
  mPLUG ``self.temp.clamp_``). ``encoder.logit_scale`` is frozen and mirrors log(1/τ), so an
  exported dual encoder carries the learned temperature;
- saliency s = zscore_patches(log p[..., 1]) and P = softmax(ẑ_I ẑ_Tᵀ/τ) from the base
  forward, both constants (:func:`zoo.losses.timix.patch_saliency`);
- mixing (:func:`zoo.data.window_mix.mix_windows`, on device): r uniform on
  {⌊0.35·S⌋..⌊0.75·S⌋}, target i's min-saliency r×r window ← source B−1−i's max-saliency
  window, λ = (S² − r²)/S² (the code's convention, 1 − λ of the paper's text);
- Y = λP + (1 − λ)P.flip(0); L_mix = ½[CE_soft(v̂Tᵀ/τ, Y) + CE_soft(Tv̂ᵀ/τ, Y′)] with v̂ the
  mixed images' embeddings (:func:`zoo.losses.timix.mixed_itc`);
- γ = min(1, i/len(loader)) in epoch 0, then 1; mixing only while epoch < ``mix_until_epoch``
  (20).

Each iteration takes the official three optimiser steps (``steps="separate"``): (1) L_PTA on
the region batch (``iter_perc = 1.0``: every iteration), (2) L_base, (3) γ·L_mix with the
mixed images built from the saliency and P of step 2's forward (taken before step 2's
update, as in the official loop). ``steps="joint"`` sums L_PTA + L_base + γ·L_mix into one
step (not the official order; for comparison). Under Lightning's manual optimisation
``trainer.global_step`` counts optimiser steps (three per iteration while mixing, two after);
the learning-rate schedule is stepped once per iteration (all three steps of an iteration use
one lr, as the official per-iteration scheduler), so bound runs with ``max_epochs``.

``timix=False`` is the ITC baseline (step 2 only; no predictor, no region data needed).

Paper vs official code (flags; the official behaviour is the default where the paper's text
could not be checked: the paper's tables and equations are unverified):

- ``text_targets``: ``"same"`` (official: the same Y for text→image) or ``"transposed"`` (Yᵀ);
- ``placement``: ``"saliency"`` (TiMix) or ``"random"`` (random windows: the CutMix-style
  ablation);
- the unused ``mixup_target`` (one-hot targets with smoothing 0.1) of the official code is
  not computed;
- the TPP's text input is the text tower's pooled (EOT) feature before the projection,
  where the official code uses BERT's [CLS] hidden state; its first MLP layer takes
  C + D_text (2C in the official code, where both widths are 768).

Optimiser (``configs/pretrain_mplug_base.yaml``, ``optim/optim_factory.py``,
``scheduler/cosine_lr.py``): AdamW (0.9, 0.999), lr 1e-4, weight decay 0.02, none on 1-D
parameters and biases (timm's rule: ``groups: timm``), linear warm-up from 1e-6 over 2,000
iterations, then cosine to 1e-6 (the official scheduler steps the cosine once per epoch; here
per iteration).

ALBEF / mPLUG objectives (``albef``: :class:`zoo.heads.albef.AlbefSpec`, default ``None``):
the base step becomes L_ITA + L_ITM + L_MLM as in the official ``L_base`` (without mPLUG's
prefix LM): ITA against α·softmax(sim_m) + (1 − α)·I from momentum copies (m = 0.995, updated
at the start of every base step, as the official ``_momentum_update``) of the dual encoder and
the fusion encoder + MLM head, α = 0.4 ramped as i/len(loader) over epoch 0 (official
``alpha``); ITM with hard negatives from the ITC softmax; MLM 15 % with distillation through
ALBEF's cross-attention BERT fusion (:mod:`zoo.heads.albef`; ALBEF's fusion, not mPLUG's
co-attention). The fusion reads the vision tower's normalised tokens and the text tower's
hidden states (the CLIP text transformer is causal; the fusion is bidirectional). CLIP's BPE
vocabulary has no [MASK] token, so MLM needs ``mlm_mask_id`` (an id the captions never use).
The mixed and PTA steps are unchanged (the official mixed step is ITC only).

Not here: mPLUG's prefix-LM decoder and skip-connected co-attention fusion; the paper's
ALBEF-TiMix variant is not in the official repository.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.data.window_mix import PLACEMENTS, Placement, draw_side, mix_windows
from zoo.fewshot.clip_source import CLIPSource
from zoo.heads.albef import AlbefSpec
from zoo.heads.patch_predictor import TextAwarePatchPredictor, vit_forward_split, vit_tokens_until
from zoo.losses import clip_infonce
from zoo.losses.timix import (
    TEXT_TARGETS,
    TextTargets,
    mix_weight,
    mixed_itc,
    mixed_soft_labels,
    mixing_active,
    patch_saliency,
    pta_loss,
)
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols
from zoo.specs import to_spec

# configs/pretrain_mplug_base.yaml: AdamW lr 1e-4, wd 0.02; cosine to min_lr 1e-6 after a
# warm-up from 1e-6 over 20 x 100 iterations; timm's weight-decay rule.
TIMIX_OPTIM = OptimSpec(
    lr=1e-4,
    weight_decay=0.02,
    betas=(0.9, 0.999),
    eps=1e-8,
    warmup_steps=2000,
    warmup_start_lr=1e-6,
    min_lr=1e-6,
    groups="timm",
)

Steps = Literal["separate", "joint"]
STEPS = ("separate", "joint")


class TiMix(DualEncoderProtocols, ZooModule):
    """TiMix on a dual encoder (Jiang et al., AAAI 2024): see the module docstring.

    Args:
        encoder: the dual encoder (a timm ViT vision tower).
        init_from: CLIP weights to start from (:class:`zoo.fewshot.clip_source.CLIPSource`,
            e.g. OpenAI's ViT-B/16: ``{path: ViT-B-16.pt, format: openai}``); the towers'
            architecture then comes from the file, and ``encoder.vision.img_size`` sets the
            input size (the position embedding is resampled, as the official code resizes
            CLIP's to 256 px).
        timix: TPP + PTA + mixing (False: the ITC baseline).
        pruning_loc: the ViT block after which the TPP reads the patch tokens (official 5).
        temperature_init: τ's initial value (0.07).
        temperature_min: τ's lower clamp (0.001).
        temperature_max: τ's upper clamp (0.5).
        min_side_ratio: the smallest mixed-window side as a fraction of the patch grid (0.35).
        max_side_ratio: the largest mixed-window side as a fraction of the patch grid (0.75).
        placement: ``saliency`` (TiMix) or ``random`` (CutMix-style ablation).
        text_targets: ``same`` (official) or ``transposed`` soft labels for text→image.
        steps: ``separate`` (official three optimiser steps) or ``joint``.
        mix_until_epoch: mixing runs in epochs ``< mix_until_epoch`` (official 20).
        albef: the ALBEF / mPLUG objectives (ITA with momentum distillation, ITM, MLM) in the
            base step; ``None``: ITC only.
        mlm_mask_id: the [MASK] id for MLM (CLIP's BPE has none; required with ``albef.mlm``).
        optim: the optimiser (merged onto :data:`TIMIX_OPTIM`).
    """

    def __init__(
        self,
        encoder: DualEncoderSpec | None = None,
        init_from: CLIPSource | None = None,
        timix: bool = True,
        pruning_loc: int = 5,
        temperature_init: float = 0.07,
        temperature_min: float = 0.001,
        temperature_max: float = 0.5,
        min_side_ratio: float = 0.35,
        max_side_ratio: float = 0.75,
        placement: Placement = "saliency",
        text_targets: TextTargets = "same",
        steps: Steps = "separate",
        mix_until_epoch: int = 20,
        albef: AlbefSpec | None = None,
        mlm_mask_id: int | None = None,
        optim: OptimSpec = TIMIX_OPTIM,
    ):
        optim = merge_onto(TIMIX_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        self.automatic_optimization = False  # the official loop's three optimiser steps
        for name, value, known in (
            ("placement", placement, PLACEMENTS),
            ("text_targets", text_targets, TEXT_TARGETS),
            ("steps", steps, STEPS),
        ):
            if value not in known:
                raise ValueError(f"model.{name} must be one of {known}, got {value!r}")
        if not 0 < temperature_min <= temperature_init <= temperature_max:
            raise ValueError(
                "model.temperature_init must lie in [temperature_min, temperature_max], got "
                f"{temperature_init} not in [{temperature_min}, {temperature_max}]"
            )
        spec = to_spec(DualEncoderSpec, encoder)
        self.encoder = _init_encoder(spec, init_from)
        self.encoder.logit_scale.requires_grad_(False)  # mirrors log(1/τ): see the docstring
        self.temperature = nn.Parameter(torch.full((1,), float(temperature_init)))
        self.temperature_range = (float(temperature_min), float(temperature_max))
        self.timix, self.pruning_loc = bool(timix), int(pruning_loc)
        self.side_ratios = (float(min_side_ratio), float(max_side_ratio))
        self.placement, self.text_targets, self.steps = placement, text_targets, steps
        self.mix_until_epoch = int(mix_until_epoch)
        self.patch_size = _patch_size(self.encoder.visual)
        if self.timix:
            depth = len(self.encoder.visual.blocks)
            if not 0 <= self.pruning_loc < depth:
                raise ValueError(
                    f"model.pruning_loc {pruning_loc} must index one of the vision tower's "
                    f"{depth} blocks (0 … {depth - 1})"
                )
            self.predictor = TextAwarePatchPredictor(
                int(self.encoder.visual.embed_dim), self.encoder.text_width
            )
        self.albef_spec = to_spec(AlbefSpec, albef) if albef is not None else None
        if self.albef_spec is not None:
            self._build_albef(self.albef_spec, mlm_mask_id)
        self._sync_logit_scale()
        # the window side's draws: a generator seeded per iteration (exact resume)
        self._mix_generator = torch.Generator()

    def _build_albef(self, spec: AlbefSpec, mask_id: int | None) -> None:
        from zoo.heads.albef import AlbefObjectives, MomentumCopy

        text = self.encoder.text.spec
        if spec.mlm and mask_id is None:
            raise ValueError(
                "model.albef.mlm needs model.mlm_mask_id: CLIP's BPE vocabulary has no [MASK] "
                "token (pick an id your captions never use), or set model.albef.mlm: false"
            )
        if spec.queue_size:
            raise ValueError("model.albef.queue_size: TiMix's code uses no queue (set 0)")
        pad = 0  # zoo.data.TextTokenizer pads with 0
        self.albef = AlbefObjectives(
            spec,
            int(self.encoder.visual.embed_dim),
            self.encoder.text_width,
            text.vocab_size,
            pad,
            text.vocab_size - 1 if mask_id is None else int(mask_id),
            [pad, text.eos_token_id - 1, text.eos_token_id],  # pad, BOS, EOT
        )
        self.momentum = MomentumCopy(
            {"encoder": self.encoder, "albef": self.albef}, momentum=spec.momentum
        )

    # --- temperature --------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """τ ← clamp(τ, 0.001, 0.5) (ALBEF / mPLUG, before every forward)."""
        self.temperature.clamp_(*self.temperature_range)
        self._sync_logit_scale()

    @torch.no_grad()
    def _sync_logit_scale(self) -> None:
        self.encoder.logit_scale.fill_(-math.log(float(self.temperature)))

    # --- forward pieces -----------------------------------------------------------------------
    def encode_text_parts(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(pooled text feature before the projection, projected embedding)."""
        pooled = self.encoder.text(tokens)
        return pooled, pooled @ self.encoder.text_projection

    def encode_image_parts(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(projected image embedding, patch tokens after block ``pruning_loc``)."""
        pooled, patches = vit_forward_split(
            self.encoder.visual, images, self.pruning_loc, self.encoder.prune_visual
        )
        return pooled @ self.encoder.image_projection, patches

    def patch_log_probs(self, images: Tensor, text_pooled: Tensor) -> Tensor:
        """TPP log-probabilities (B, N, 2), running the tower only up to ``pruning_loc``."""
        patches = vit_tokens_until(self.encoder.visual, images, self.pruning_loc)
        return self.predictor(patches, text_pooled)

    def pta_terms(self, batch: dict[str, Tensor]) -> Tensor:
        """L_PTA on the batch's region samples."""
        text_pooled, _ = self.encode_text_parts(batch["region_text"])
        log_probs = self.patch_log_probs(batch["region_image"], text_pooled)
        labels = batch["region_labels"]
        if labels.shape != log_probs.shape[:2]:
            raise ValueError(
                f"region patch labels {tuple(labels.shape)} do not match the tower's "
                f"{tuple(log_probs.shape[:2])} patches: data.patch_size / data.image_size must "
                f"match the model's (patch {self.patch_size})"
            )
        return pta_loss(log_probs, labels)

    def base_terms(self, batch: dict[str, Tensor], alpha: float = 0.0) -> dict[str, Tensor]:
        """L_ITC (with ``albef``: ITA + ITM + MLM, α the distillation weight), and for the
        mixed step the saliency (B, N) and P (B, B), both detached."""
        if self.albef_spec is not None:
            return self._albef_base_terms(batch, alpha)
        text_pooled, z_t = self.encode_text_parts(batch["text"])
        if self.timix:
            z_i, patches = self.encode_image_parts(batch["image"])
            with torch.no_grad():
                saliency = patch_saliency(self.predictor(patches, text_pooled))
        else:
            z_i, saliency = self.encoder.encode_image(batch["image"]), None
        itc = clip_infonce(z_i, z_t, 1.0 / self.temperature)
        with torch.no_grad():
            sim = F.normalize(z_i, dim=-1) @ F.normalize(z_t, dim=-1).T / self.temperature
        out = {"itc": itc, "probs": sim.softmax(dim=1)}
        if saliency is not None:
            out["saliency"] = saliency
        return out

    def text_states(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(pooled EOT feature, (B, L, D_t) final hidden states) of the causal text tower."""
        hidden = _causal_states(self.encoder, tokens)
        eot = self.encoder.text.eot_index(tokens)
        return hidden[torch.arange(len(tokens), device=tokens.device), eot], hidden

    @staticmethod
    def _text_mask(tokens: Tensor, eot: Tensor) -> Tensor:
        """1 up to and including the EOT token."""
        return (torch.arange(tokens.shape[1], device=tokens.device) <= eot[:, None]).long()

    def _albef_base_terms(self, batch: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        from zoo.losses.albef import ita_loss

        images, tokens = batch["image"], batch["text"]
        text_pooled, text_hidden = self.text_states(tokens)
        z_t = text_pooled @ self.encoder.text_projection
        tokens_v, patches = vit_tokens_and_split(self.encoder.visual, images, self.pruning_loc)
        z_i = self.encoder.visual.forward_head(tokens_v) @ self.encoder.image_projection
        mask = self._text_mask(tokens, self.encoder.text.eot_index(tokens))
        ni, nt = F.normalize(z_i, dim=-1), F.normalize(z_t, dim=-1)
        sim_i2t = ni @ nt.T / self.temperature
        momentum_encoder = self.momentum["encoder"]
        with torch.no_grad():
            self.momentum.update({"encoder": self.encoder, "albef": self.albef})
            z_i_m = momentum_encoder.encode_image(images, normalize=True)
            z_t_m = momentum_encoder.encode_text(tokens, normalize=True)
            sim_i2t_m = z_i_m @ z_t_m.T / self.temperature
            image_tokens_m = momentum_encoder.visual.forward_features(images)
        itc = ita_loss(sim_i2t, sim_i2t.T, sim_i2t_m, sim_i2t_m.T, alpha)
        momentum_albef = self.momentum["albef"]

        def momentum_mlm(ids: Tensor, ids_mask: Tensor) -> Tensor:
            states = _causal_states(momentum_encoder, ids)
            return momentum_albef.mlm_logits(image_tokens_m, states, ids_mask)

        fused = self.albef(
            image_tokens=tokens_v,
            text_tokens=text_hidden,
            text_ids=tokens,
            text_mask=mask,
            sim_i2t=sim_i2t.detach(),
            sim_t2i=sim_i2t.T.detach(),
            encode_text_tokens=lambda ids, _mask: self.text_states(ids)[1],
            momentum_logits_mlm=momentum_mlm,
            alpha=alpha,
        )
        out = {"itc": itc + sum(fused.values()), "ita": itc.detach(), **fused}
        out["probs"] = sim_i2t.detach().softmax(dim=1)
        if self.timix:
            with torch.no_grad():
                out["saliency"] = patch_saliency(self.predictor(patches, text_pooled))
        return out

    def mixed_terms(
        self, batch: dict[str, Tensor], saliency: Tensor, probs: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """L_mix on the mixed images of the batch."""
        images = batch["image"]
        grid = images.shape[-1] // self.patch_size
        side = draw_side(grid, *self.side_ratios, generator=generator)
        mixed = mix_windows(images, saliency, self.patch_size, side, self.placement, generator)
        targets = mixed_soft_labels(probs, mixed.lam)
        z_mix = self.encoder.encode_image(mixed.images)
        z_t = self.encoder.encode_text(batch["text"])
        loss = mixed_itc(z_mix, z_t, targets, self.temperature, self.text_targets)
        return {"mix": loss, "lam": torch.tensor(mixed.lam, device=images.device)}

    # --- training -----------------------------------------------------------------------------
    def _generator(self, batch_idx: int) -> torch.Generator:
        """A generator seeded from (global seed, epoch, batch): the same draws after a resume."""
        from zoo.data.resumable import global_seed

        seed = (global_seed() * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx
        return self._mix_generator.manual_seed(seed % (2**63))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        epoch = self.current_epoch
        iterations = int(getattr(self.trainer, "num_training_batches", 1) or 1)
        if not math.isfinite(iterations):
            iterations = 1
        gamma = mix_weight(epoch, batch_idx, iterations)
        # official: the distillation weight α ramps like γ over epoch 0
        alpha = self.albef_spec.distill_alpha * gamma if self.albef_spec is not None else 0.0
        mixing = self.timix and mixing_active(epoch, self.mix_until_epoch)
        regions = self.timix and "region_image" in batch
        if self.timix and not regions:
            raise ValueError(
                "TiMix's PTA step needs region samples in every batch (region_image, "
                "region_text, region_labels): use datamodules.timix.TiMixDataModule"
            )
        generator = self._generator(batch_idx)
        terms: dict[str, Tensor] = {}
        if self.steps == "joint":
            self.clamp_temperature()
            base = self.base_terms(batch, alpha)
            total = base["itc"]
            if regions:
                terms["pta"] = self.pta_terms(batch)
                total = total + terms["pta"]
            if mixing:
                mix = self.mixed_terms(batch, base["saliency"], base["probs"], generator)
                terms.update(mix)
                total = total + gamma * mix["mix"]
            terms.update({k: v for k, v in base.items() if k in ("itc", "ita", "itm", "mlm")})
            self._step(optimizer, total)
        else:
            if regions:
                self.clamp_temperature()
                terms["pta"] = self.pta_terms(batch)
                self._step(optimizer, terms["pta"])
            self.clamp_temperature()
            base = self.base_terms(batch, alpha)
            terms.update({k: v for k, v in base.items() if k in ("itc", "ita", "itm", "mlm")})
            self._step(optimizer, base["itc"])
            if mixing:
                self.clamp_temperature()
                mix = self.mixed_terms(batch, base["saliency"], base["probs"], generator)
                terms.update(mix)
                self._step(optimizer, gamma * mix["mix"])
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.optim.interval == "step":
            scheduler.step()
        shown = {k: v.detach() for k, v in terms.items()}
        shown["loss"] = sum(
            (
                shown[k] * (gamma if k == "mix" else 1.0)
                for k in ("pta", "itc", "mix")
                if k in shown
            ),
            torch.zeros((), device=self.device),
        )
        shown["gamma"] = torch.tensor(gamma if mixing else 0.0, device=self.device)
        shown["temperature"] = self.temperature.detach()[0]
        self.log_losses(shown, batch_size=len(batch["image"]))
        return shown["loss"]

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.clamp_temperature()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.optim.interval == "epoch":
            scheduler.step()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        z_i = self.encoder.encode_image(batch["image"])
        z_t = self.encoder.encode_text(batch["text"])
        loss = clip_infonce(z_i, z_t, 1.0 / self.temperature)
        self.log(f"{self.eval_prefix}/itc_loss", loss, sync_dist=True)


def _patch_size(visual: nn.Module) -> int:
    patch = getattr(getattr(visual, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise TypeError(
            f"TiMix needs a timm ViT vision tower (patch tokens); got {type(visual).__name__}"
        )
    size = patch[0] if isinstance(patch, tuple | list) else int(patch)
    return int(size)


def _init_encoder(spec: DualEncoderSpec, init_from: Any) -> Any:
    """The dual encoder of ``spec``, or the CLIP ``init_from`` names at ``spec``'s input size."""
    if init_from is None:
        encoder = build_dual_encoder(spec)
    else:
        import dataclasses

        from timm.layers import resample_abs_pos_embed

        from zoo.fewshot.clip_source import load_clip

        loaded = load_clip(init_from).encoder
        size = spec.vision.img_size
        vision = dataclasses.replace(loaded.spec.vision, img_size=size)
        encoder = build_dual_encoder(dataclasses.replace(loaded.spec, vision=vision))
        state = loaded.state_dict()
        key = "visual.pos_embed"
        grid = encoder.visual.patch_embed.grid_size
        prefix = encoder.visual.num_prefix_tokens
        state[key] = resample_abs_pos_embed(state[key], list(grid), num_prefix_tokens=prefix)
        encoder.load_state_dict(state)
    return encoder


def vit_tokens_and_split(visual: nn.Module, images: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """(the tower's normalised tokens (B, 1+N, C), patch tokens after block ``block``)."""
    from zoo.heads.patch_predictor import _check_vit, _embed

    _check_vit(visual, block)
    x = visual.blocks[: block + 1](_embed(visual, images))
    patches = x[:, visual.num_prefix_tokens :]
    return visual.norm(visual.blocks[block + 1 :](x)), patches


def _causal_states(encoder: Any, tokens: Tensor) -> Tensor:
    """(B, L, D_t) final hidden states of a dual encoder's causal text tower."""
    from transformers.masking_utils import create_causal_mask

    model = encoder.text.model
    hidden = model.embeddings(input_ids=tokens)
    mask = create_causal_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=None, cache=None
    )
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return model.final_layer_norm(out.last_hidden_state)
