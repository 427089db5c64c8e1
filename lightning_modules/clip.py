"""CLIP, as trained as the baseline in SLIP (Mu et al., ECCV 2022; Radford et al., 2021).

    L = L_CLIP(ẑ_I, ẑ_T) = ½[CE(s·ẑ_I ẑ_Tᵀ, y) + CE(s·ẑ_T ẑ_Iᵀ, y)]     (SLIP §3, Eq. 1)

- ẑ_I = normalise(f_I(x) W_I), ẑ_T = normalise(f_T(t) W_T): ``DualEncoder.forward``;
- s = exp(t), t learnable, initialised to log(1/0.07) and clamped to [0, 4.6052] after every
  optimiser step (SLIP ``main.py``): ``after_optimizer_step``;
- other GPUs' features: ``gather="constant"`` (default) is the official SLIP code's
  ``utils.all_gather_batch``: every gathered copy, this GPU's own included, is a constant, so
  the gradient flows through the local anchor rows only. ``"local_grad"`` (alias
  ``"no_grad"``) keeps the gradient of this GPU's slice (open_clip's ``gather_features``);
  ``"with_grad"`` gives the exact full-batch gradient under DDP; ``"none"`` uses per-GPU
  negatives. All agree on one process (``zoo.losses.distributed``);
- optimiser: AdamW (0.9, 0.98), lr 5e-4, weight decay 0.5, no decay on biases / norms /
  1-D parameters, 1 warm-up epoch then cosine to 1e-5, per step (SLIP README, CLIP row).

Nothing is frozen; everything trains from scratch.
"""

from __future__ import annotations

import torch

from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.losses import ClipInfoNCE, GatherPolicy
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols
from zoo.specs import to_spec

# The CLIP baseline of the SLIP paper (README, CLIP row; main.py): AdamW (0.9, 0.98), lr 5e-4,
# weight decay 0.5, 1 warm-up epoch from 1e-6, then cosine to 1e-5, per step.
CLIP_OPTIM = OptimSpec(
    lr=5e-4,
    weight_decay=0.5,
    betas=(0.9, 0.98),
    eps=1e-8,
    warmup_epochs=1.0,
    warmup_start_lr=1e-6,
    min_lr=1e-5,
)


class CLIP(DualEncoderProtocols, ZooModule):
    def __init__(
        self,
        encoder: DualEncoderSpec | None = None,
        gather: GatherPolicy = "constant",
        label_smoothing: float = 0.0,
        optim: OptimSpec = CLIP_OPTIM,
    ):
        # A mapping (``CLIP(optim={"lr": 1e-3})``) overrides just its keys; jsonargparse
        # merges a recipe's partial ``optim:`` onto CLIP_OPTIM the same way.
        optim = merge_onto(CLIP_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        self.encoder = build_dual_encoder(to_spec(DualEncoderSpec, encoder))
        self.clip_loss = ClipInfoNCE(gather=gather, label_smoothing=label_smoothing)

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        z_i, z_t, scale = self.encoder(batch["image"], batch["text"])
        loss = self.clip_loss(z_i, z_t, scale)
        return {"loss": loss, "clip_loss": loss.detach(), "logit_scale": scale.detach()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.log_losses(terms)
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_losses(self.loss_terms(batch), prefix=self.eval_prefix, sync_dist=True)

    def after_optimizer_step(self) -> None:
        self.encoder.clamp_logit_scale()
