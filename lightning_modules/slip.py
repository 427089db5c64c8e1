"""SLIP: Self-supervision meets Language-Image Pre-training (Mu, Kirillov, Wagner, Xie; ECCV 2022).

    L = L_CLIP(ẑ_I, ẑ_T) + c · L_SSL(q_1, q_2),    q_k = h_s(f_I(aug_k(x)))     (SLIP §3)

- L_CLIP: symmetric image–text InfoNCE on the CLIP view (RandomResizedCrop scale 0.5–1),
  other GPUs' features gathered as constants, this GPU's own copy included, as the official
  code's ``utils.all_gather_batch`` does (``clip_gather="constant"``, the default; the
  gradient flows through the local anchor rows only). ``"local_grad"`` (alias ``"no_grad"``)
  keeps the gradient of this GPU's slice (open_clip's ``gather_features``); ``"with_grad"``
  gives the exact full-batch gradient under DDP; ``"none"`` uses per-GPU negatives. All
  agree on one process (``zoo.losses.distributed``);
- L_SSL: SimCLR NT-Xent on two SimCLR-augmented views, τ = 0.1, gathered with gradient
  (``ssl_gather="with_grad"``, the official code's ``all_gather_batch_with_grad`` /
  ``GatherLayer``): ``zoo.losses.nt_xent``;
- h_s: the SSL head ``Linear(vw, 4096) → BN → ReLU → Linear(4096, 4096) → BN → ReLU →
  Linear(4096, 256)`` on the image trunk's pooled feature (before the CLIP projection);
  its batch norms are SyncBN (``MLPSpec.norm="syncbn"``, :class:`zoo.heads.norm.GlobalBatchNorm1d`:
  statistics over every data-parallel rank on any device, no ``trainer.sync_batchnorm``);
- c = ``ssl_scale`` = 1.0; logit scale clamped to [0, 4.6052] after each step;
- optimiser: AdamW (0.9, 0.98), lr 3e-3, weight decay 0.1, warm-up 1 epoch, cosine to 1e-5.

Paper vs code: the SSL views have no solarisation in the official code (a secondary summary
lists it); it is off by default and available as ``data.solarize_p``.
"""

from __future__ import annotations

import torch

from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.heads import MLPSpec, ProjectionMLP
from zoo.losses import ClipInfoNCE, GatherPolicy, NTXent
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols
from zoo.specs import to_spec

# SLIP's (README, SLIP rows; main.py): AdamW (0.9, 0.98), lr 3e-3, weight decay 0.1,
# 1 warm-up epoch from 1e-6, then cosine to 1e-5, per step.
SLIP_OPTIM = OptimSpec(
    lr=3e-3,
    weight_decay=0.1,
    betas=(0.9, 0.98),
    eps=1e-8,
    warmup_epochs=1.0,
    warmup_start_lr=1e-6,
    min_lr=1e-5,
)


class SLIP(DualEncoderProtocols, ZooModule):
    def __init__(
        self,
        encoder: DualEncoderSpec | None = None,
        ssl_head: MLPSpec | None = None,
        ssl_scale: float = 1.0,
        ssl_temperature: float = 0.1,
        clip_gather: GatherPolicy = "constant",
        ssl_gather: GatherPolicy = "with_grad",
        optim: OptimSpec = SLIP_OPTIM,
    ):
        # A mapping (``SLIP(optim={"lr": 1e-3})``) overrides just its keys; jsonargparse
        # merges a recipe's partial ``optim:`` onto SLIP_OPTIM the same way.
        optim = merge_onto(SLIP_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        self.encoder = build_dual_encoder(to_spec(DualEncoderSpec, encoder))
        self.ssl_head = ProjectionMLP(self.encoder.vision_width, to_spec(MLPSpec, ssl_head))
        self.ssl_scale = ssl_scale
        self.clip_loss = ClipInfoNCE(gather=clip_gather)
        self.ssl_loss = NTXent(temperature=ssl_temperature, gather=ssl_gather)

    def image_trunks(self, image: torch.Tensor, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_I on the CLIP view and the SSL views; one batched pass when shapes agree
        (the ViT works per sample, so this equals separate passes)."""
        if all(v.shape == image.shape for v in views):
            return list(self.encoder.image_trunk(torch.cat([image, *views])).chunk(1 + len(views)))
        return [self.encoder.image_trunk(x) for x in (image, *views)]

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        h_image, h_1, h_2 = self.image_trunks(batch["image"], batch["views"])
        z_i = h_image @ self.encoder.image_projection
        z_t = self.encoder.encode_text(batch["text"])
        scale = self.encoder.logit_scale.exp()
        clip_loss = self.clip_loss(z_i, z_t, scale)
        ssl_loss = self.ssl_loss(self.ssl_head(h_1), self.ssl_head(h_2))
        return {
            "loss": clip_loss + self.ssl_scale * ssl_loss,
            "clip_loss": clip_loss,
            "ssl_loss": ssl_loss,
            "logit_scale": scale.detach(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.log_losses({k: v.detach() for k, v in terms.items()})
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        z_i, z_t, scale = self.encoder(batch["image"], batch["text"])
        self.log(f"{self.eval_prefix}/clip_loss", self.clip_loss(z_i, z_t, scale), sync_dist=True)

    def after_optimizer_step(self) -> None:
        self.encoder.clamp_logit_scale()
