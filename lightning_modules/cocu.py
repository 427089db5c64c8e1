r"""CoCu: Rewrite Caption Semantics: Bridging Semantic Gaps for Language-Supervised Semantic
Segmentation (Xing, Kang, Xiao, Nie, Shao, Lu; NeurIPS 2023).

Stage 1 (offline, :mod:`zoo.cocu.curation`) rewrites every caption with its curated concepts.
Stage 2, this module, pre-trains GroupViT from scratch on the rewritten data:

.. math::
    L = L_{ITC}(\hat z_I, \hat z_{caption}) + w\,L_{ML}(\hat z_I, \{\hat z_{prompt(c_k)}\}_{k\le 3})

- :math:`L_{ITC} = \tfrac12[\mathrm{CE}(s\,\hat Z_I\hat Z_T^\top, y) + \mathrm{CE}(s\,\hat Z_T
  \hat Z_I^\top, y)]` (:func:`zoo.losses.clip_infonce`), s = min(exp(t), 100), t initialised
  to log(1/0.07);
- :math:`L_{ML}` (:func:`zoo.losses.cocu.multi_label_contrastive`): image→text soft targets
  1/K on the K = 3 prompts of the same image, text→image one-hot on the prompt's image, with
  its own learnable scale (``share_temperature=False``), also log(1/0.07), clamped at 100;
- w = ``multi_label_weight`` = 1; features are gathered with gradient (``gather="with_grad"``,
  the official ``diffdist`` all-gather); one process: no gather;
- the K prompts are ``[caption, prompt(c1), prompt(c2), prompt(c3)]`` rows of
  ``batch["text"]`` (B, 1 + K, L), built by :class:`datamodules.cocu.WordAugTokenizer`
  (top-3 curated concepts, or the caption's gallery words for the GroupViT baseline);
- image tower: :class:`zoo.backbones.group_vit.GroupViT` (embed 384, depths [6, 3, 3], group
  tokens [64, 8, 0], output groups [64, 8], drop path 0.1); text tower: the zoo's CLIP text
  transformer (width 256, 12 layers, context 77); both followed by GroupViT's ``ProjectMLP``
  (2 layers, hidden 4096, SyncBN, out 256: ``MLPSpec(hidden_dims=[4096], out_dim=256)``; the
  official Conv1d with kernel 1 is a Linear);
- optimiser (``configs/train/cocu_*_30e.yml``): AdamW (0.9, 0.999), eps 1e-8, lr 1.6e-3,
  weight decay 0.05 except 1-D parameters and biases (GroupViT's rule, ``groups: timm``),
  2 warm-up epochs from 4e-6, cosine to 4e-5; gradient clipping 5.0 is ``trainer.gradient_clip_val``.

Zero-shot segmentation (:meth:`CoCu.semantic_segmentation`, :mod:`zoo.eval.segmentation`):
each pixel takes its final group (chained soft assignments, argmax), each group its class
by group–text affinity restricted to the image's top-5 classes; background where the affinity
is below ``bg_thresh``.

Paper vs official code: the paper's cluster-guided sampling is off in the official training
(``kmeans_sampling=False``), so the default here is the top-3 concepts
(``data.kmeans_sampling`` turns it on). The zero-shot class embedding averages the
L2-normalised prompt embeddings (the zoo's template ensemble); GroupViT averages them before
normalising, which differs only in weighting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.group_vit import GroupViT, GroupViTSpec, group_pixel_assignment
from zoo.backbones.text import CLIPTextTower, TextSpec
from zoo.heads import MLPSpec, ProjectionMLP
from zoo.losses import GatherPolicy, clip_infonce
from zoo.losses.cocu import multi_label_contrastive
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols
from zoo.specs import to_spec

# configs/train/cocu_clip-vit-b-16_8_c3_30e.yml (train:)
COCU_OPTIM = OptimSpec(
    lr=1.6e-3,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    eps=1e-8,
    warmup_epochs=2.0,
    warmup_start_lr=4e-6,
    min_lr=4e-5,
    groups="timm",
)
LOG_INV_007 = math.log(1 / 0.07)


def _paper_text() -> TextSpec:
    return TextSpec(width=256, layers=12, heads=4, context_length=77)


def _project_mlp() -> MLPSpec:
    return MLPSpec(hidden_dims=[4096], out_dim=256, norm="syncbn")


class GroupViTTextEncoder(nn.Module):
    """GroupViT image tower + CLIP text tower, each with its projection MLP: the methods the
    zoo's protocols call (``image_trunk``, ``encode_image``, ``encode_text``)."""

    def __init__(self, vision: GroupViTSpec, text: TextSpec, projector: MLPSpec):
        super().__init__()
        self.visual = GroupViT(vision)
        self.text = CLIPTextTower(text)
        self.image_projector = ProjectionMLP(self.visual.width, projector)
        self.text_projector = ProjectionMLP(text.width, projector)

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def image_trunk(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_projector(self.visual(images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_projector(self.text(tokens))

    def encode_groups(self, images: torch.Tensor):
        """``(projected group embeddings (B, G, D), projected pooled embedding (B, D), soft
        assignments, patch grid)``; the projector's batch norm runs on the group rows as
        GroupViT's Conv1d projector does on its (B, C, G) layout."""
        tokens, assignments, grid = self.visual.forward_groups(images)
        b, g, c = tokens.shape
        groups = self.image_projector(tokens.reshape(b * g, c)).view(b, g, -1)
        pooled = self.image_projector(tokens.mean(dim=1))
        return groups, pooled, assignments, grid


class CoCu(DualEncoderProtocols, ZooModule):
    def __init__(
        self,
        vision: GroupViTSpec | None = None,
        text: TextSpec | None = None,
        projector: MLPSpec | None = None,
        multi_label_weight: float = 1.0,
        share_temperature: bool = False,
        logit_scale_init: float = LOG_INV_007,
        logit_scale_max: float = 100.0,
        gather: GatherPolicy = "with_grad",
        optim: OptimSpec = COCU_OPTIM,
    ):
        optim = merge_onto(COCU_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        self.encoder = GroupViTTextEncoder(
            to_spec(GroupViTSpec, vision) if vision is not None else GroupViTSpec(),
            to_spec(TextSpec, text) if text is not None else _paper_text(),
            to_spec(MLPSpec, projector) if projector is not None else _project_mlp(),
        )
        self.multi_label_weight = multi_label_weight
        self.share_temperature = share_temperature
        self.logit_scale_max = logit_scale_max
        self.gather = gather
        # shape (1,): FSDP cannot shard 0-d parameters
        self.logit_scale = nn.Parameter(torch.full((1,), float(logit_scale_init)))
        self.multi_label_logit_scale = nn.Parameter(torch.full((1,), float(logit_scale_init)))

    # --- scales ------------------------------------------------------------------------------
    def itc_scale(self) -> torch.Tensor:
        """s = min(exp(t), 100), clamped in the loss as the official code does."""
        return self.logit_scale.exp().clamp(max=self.logit_scale_max)

    def multi_label_scale(self) -> torch.Tensor:
        t = self.logit_scale if self.share_temperature else self.multi_label_logit_scale
        return t.exp().clamp(max=self.logit_scale_max)

    # --- training ----------------------------------------------------------------------------
    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        text = batch["text"]
        z_i = self.encoder.encode_image(batch["image"])
        if text.ndim == 2:  # captions only (evaluation data): the ITC term alone
            text = text.unsqueeze(1)
        b, n, length = text.shape
        z_t = self.encoder.encode_text(text.reshape(b * n, length)).view(b, n, -1)
        itc = clip_infonce(z_i, z_t[:, 0], self.itc_scale(), gather_policy=self.gather)
        terms = {"itc_loss": itc, "logit_scale": self.itc_scale().detach().squeeze()}
        loss = itc
        if n > 1:
            ml = multi_label_contrastive(z_i, z_t[:, 1:], self.multi_label_scale(), self.gather)
            loss = loss + self.multi_label_weight * ml
            terms["multi_label_loss"] = ml
            terms["multi_label_scale"] = self.multi_label_scale().detach().squeeze()
        return {"loss": loss, **terms}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.log_losses({k: v.detach() for k, v in terms.items()})
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch)
        self.log(f"{self.eval_prefix}/itc_loss", terms["itc_loss"], sync_dist=True)

    # --- zero-shot segmentation -----------------------------------------------------------------
    @torch.no_grad()
    def semantic_segmentation(
        self,
        images: torch.Tensor,
        class_weights: torch.Tensor,
        bg_thresh: float = 0.95,
        with_background: bool = True,
        topk: int = 5,
    ) -> torch.Tensor:
        """(B, H, W) class map at the images' size: 0 background (``with_background``),
        c + 1 for class c of ``class_weights`` (C, D) (or c without background)."""
        from zoo.eval.segmentation import groupvit_class_map

        groups, pooled, assignments, grid = self.encoder.encode_groups(images)
        pixels = group_pixel_assignment(
            assignments, grid, tuple(images.shape[-2:]), batch=images.shape[0]
        ).to(groups.device)
        return groupvit_class_map(
            pixels,
            F.normalize(groups.float(), dim=-1),
            F.normalize(pooled.float(), dim=-1),
            F.normalize(class_weights.to(groups.device).float(), dim=-1),
            self.itc_scale().float(),
            bg_thresh=bg_thresh,
            with_background=with_background,
            topk=topk,
        )
