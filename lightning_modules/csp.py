r"""CSP: Self-Supervised Contrastive Spatial Pre-Training for Geospatial-Visual Representations
(Mai, Lao, He, Song, Ermon; ICML 2023; arXiv 2305.01118). Official code: github.com/gengchenmai/csp
at 67f3407 (``main/losses.py``, ``main/models.py``, ``main/trainer.py``, the run scripts
``main/run-inat_2018-contsoftmax.sh`` / ``main/run-fmow-contsoftmax.sh``).

A location encoder ``e(x)`` (Space2Vec grid cells + FFN, :mod:`zoo.backbones.location`) is
pre-trained against frozen, pre-extracted image features ``f(I)`` projected by
``img_dec = Linear(D, d)`` (``LocationImageEncoder.img_dec``), then fine-tuned as a geo prior
``σ(e(x) W^T)`` with a bias-free class head ``W`` (``LocationEncoder.class_emb``) on a
labelled subset. One fit runs both stages, as ``train_unsuper.py`` does with
``--do_unsuper_train T --do_super_train T``: epochs ``[0, pretrain_epochs)`` pre-train,
the rest fine-tune (the datamodule switches loaders: ``trainer.reload_dataloaders_every_n_epochs: 1``).

Pre-training, ``L = L_B + w_L·L_L + w_D·L_D`` (the README's CSP-MC-BLD; every vector
L2-normalised, temperatures divide the cosine; :mod:`zoo.losses.csp`)::

    L_B = CE_j(cos(e(x_i), h_j) / τ_B, i)          in_batch_loss          (loc → image)
    L_L = CE([cos(e(x_i), h_i), cos(e(x⁻_ik), h_i)]_k / τ_L, 0)   random_location_loss
    L_D = CE_j(cos(e(x_i), e'(x_j)) / τ_D, i)      simcse_loss            (dropout view)

with ``h = img_dec(f(I))``, ``K = num_negative_locations`` random locations x⁻ per sample
and ``e'`` a second dropout pass. Here ``e(x)``, ``e(x⁻)`` and ``e'(x)`` are one batched
pass of the encoder: it has no layer that mixes rows, so this is the code's three passes
with the dropout masks drawn in one call.

Fine-tuning (Mac Aodha et al. 2019, eq. 7; ``embedding_loss``)::

    L = mean_{b,c}[-1[c≠y] log(1-σ(s_bc)) - 1[c=y] C log σ(s_by)] + w_L mean_{b,c}[-log(1-σ(s⁻_bc))]

``s = e(x) W^T`` at the observed locations, ``s⁻`` at one random location per sample;
pos_weight C = ``num_classes``; ``w_L`` is the same ``location_weight`` as in pre-training
(the code's ``rand_sample_weight`` serves both). ``img_dec`` gets no gradient there.

Inference: ``P(y | I, x) ∝ P(y | I) · σ(s_y)`` (:class:`zoo.eval.geo.GeoPriorEval`).

Optimisation (``trainer.py``): one Adam for both stages, weight decay 0 (here ``adamw``
with weight decay 0, the same update), the Adam state carried from pre-training into
fine-tuning. Pre-training runs at the constant ``pretrain_lr`` (``--unsuper_lr``; the
code's per-epoch decay there is commented out); fine-tuning epoch t at
``optim.lr · lr_decay^t`` (``--lr``, ``--lr_decay`` 0.98), t counted from the stage's start.

Defaults are the iNat2018 run script's: τ_B = 20, τ_L = τ_D = 1, w_L = w_D = 1, K = 1,
30 pre-training epochs at 5e-4, fine-tuning at 1e-3.

Paper vs code (flags; defaults follow the paper):

- ``negative_sampler``: ``spherical`` (default), uniform on the sphere; the run scripts pass
  ``sphericalold``, the ICCV-2019 sampler whose samples fill the ellipse
  (lon/180)² + (lat/90)² ≤ 1 unevenly (:func:`zoo.losses.csp.sample_locations`). It draws
  both the negatives of ``L_L`` and the background locations of the geo-prior loss.
- ``log_eps``: 0 computes the logs of the geo-prior loss exactly (``logsigmoid``); the code's
  ``-log(p + 1e-5)`` is ``log_eps: 1e-5``.
- ``symmetric``: the in-batch term is location → image only (``contsoftmax``); ``True`` adds
  image → location (``contsoftmaxsym``).
- The class-balanced sampler of the code's loaders is the datamodule's
  ``balanced_per_class`` / ``balanced_pretrain``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.backbones.location import LocationEncoder, LocationEncoderSpec
from zoo.losses.csp import CSPLoss, NegativeSampler, geo_prior_loss, sample_locations
from zoo.module import ZooModule
from zoo.optim import OptimSpec, build_optimizer, merge_onto
from zoo.specs import to_spec

# trainer.py: torch.optim.Adam(lr=--lr, weight_decay=0) over every parameter; Adam with no
# weight decay is AdamW with weight decay 0. The schedule is CSP's own (configure_optimizers).
CSP_OPTIM = OptimSpec(
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    eps=1e-8,
    groups="all",
    schedule="constant",
    interval="epoch",
    warmup_epochs=0.0,
)
STAGES = ("pretrain", "finetune")


class CSP(ZooModule):
    def __init__(
        self,
        num_classes: int,
        image_feature_dim: int = 2048,
        location: LocationEncoderSpec | None = None,
        pretrain_epochs: int = 30,
        pretrain_lr: float = 5e-4,
        lr_decay: float = 0.98,
        temperature_batch: float = 20.0,
        temperature_location: float = 1.0,
        temperature_simcse: float = 1.0,
        location_weight: float = 1.0,
        simcse_weight: float = 1.0,
        symmetric: bool = False,
        num_negative_locations: int = 1,
        negative_sampler: NegativeSampler = "spherical",
        pos_weight: float | None = None,
        log_eps: float = 0.0,
        optim: OptimSpec = CSP_OPTIM,
    ):
        optim = merge_onto(CSP_OPTIM, optim)
        super().__init__(optim)
        self.save_hyperparameters()
        if num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        if pretrain_epochs < 0:
            raise ValueError(f"model.pretrain_epochs must be >= 0, got {pretrain_epochs}")
        if num_negative_locations < 1:
            raise ValueError(
                f"model.num_negative_locations must be >= 1, got {num_negative_locations}"
            )
        self.encoder = LocationEncoder(to_spec(LocationEncoderSpec, location))
        self.img_dec = nn.Linear(image_feature_dim, self.encoder.out_dim)
        self.class_head = nn.Linear(self.encoder.out_dim, num_classes, bias=False)
        self.csp_loss = CSPLoss(
            temperature_batch,
            temperature_location,
            temperature_simcse,
            location_weight,
            simcse_weight,
            symmetric,
        )
        self.num_classes = num_classes
        self.image_feature_dim = image_feature_dim
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.lr_decay = lr_decay
        self.location_weight = location_weight
        self.num_negative_locations = num_negative_locations
        self.negative_sampler = negative_sampler
        self.pos_weight = pos_weight
        self.log_eps = log_eps

    # --- stages -------------------------------------------------------------------------------
    def training_stage(self, epoch: int) -> str:
        """``pretrain`` for epochs before ``pretrain_epochs``, then ``finetune``."""
        return "pretrain" if epoch < self.pretrain_epochs else "finetune"

    def lr_factor(self, epoch: int) -> float:
        """The learning rate of ``epoch`` as a factor on ``optim.lr``."""
        if epoch < self.pretrain_epochs:
            return self.pretrain_lr / self.optim.lr
        return self.lr_decay ** (epoch - self.pretrain_epochs)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        dim = getattr(datamodule, "feature_dim", None)
        if dim is not None and dim != self.image_feature_dim:
            raise ValueError(
                f"the image features are {dim}-dimensional but model.image_feature_dim is "
                f"{self.image_feature_dim}"
            )
        classes = getattr(datamodule, "num_classes", None)
        if classes is not None and classes > self.num_classes:
            raise ValueError(
                f"the data has {classes} classes but model.num_classes is {self.num_classes}"
            )

    def on_fit_start(self) -> None:
        trainer = self.trainer
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        both = self.pretrain_epochs > 0 and (max_epochs < 0 or max_epochs > self.pretrain_epochs)
        if both and trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "CSP pre-trains then fine-tunes in one fit, each stage on its own data: set "
                "trainer.reload_dataloaders_every_n_epochs: 1 so the loader of each epoch's "
                f"stage is built (pretrain_epochs {self.pretrain_epochs}, max_epochs "
                f"{trainer.max_epochs})"
            )

    # --- the geo prior --------------------------------------------------------------------------
    def location_embedding(self, lonlat: torch.Tensor) -> torch.Tensor:
        return self.encoder(lonlat)

    def geo_prior_logits(self, lonlat: torch.Tensor) -> torch.Tensor:
        """``s = e(x) W^T``, ``(N, num_classes)``; ``σ(s)`` is the geo prior."""
        return self.class_head(self.encoder(lonlat))

    # --- training -----------------------------------------------------------------------------
    def _random_locations(self, n: int) -> torch.Tensor:
        return sample_locations(n, self.negative_sampler, device=self.device)

    def pretrain_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The CSP loss of a batch (one encoder pass over observed, random and view rows)."""
        loc = batch["location"]
        b = loc.shape[0]
        parts = [loc]
        if self.csp_loss.location_weight:
            parts.append(self._random_locations(b * self.num_negative_locations))
        if self.csp_loss.simcse_weight:
            parts.append(loc)  # the second dropout view
        emb = self.encoder(torch.cat(parts))
        rand_emb = view = None
        rest = emb[b:]
        if self.csp_loss.location_weight:
            k = b * self.num_negative_locations
            rand_emb, rest = rest[:k], rest[k:]
        if self.csp_loss.simcse_weight:
            view = rest
        img = self.img_dec(batch["features"])
        return self.csp_loss(emb[:b], img, rand_emb, view)

    def finetune_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The presence-only geo-prior loss of a labelled batch."""
        loc = batch["location"]
        b = loc.shape[0]
        logits = self.geo_prior_logits(torch.cat((loc, self._random_locations(b))))
        return geo_prior_loss(
            logits[:b],
            batch["label"],
            logits[b:],
            pos_weight=self.pos_weight,
            rand_weight=self.location_weight,
            log_eps=self.log_eps,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        stage = self.training_stage(self.current_epoch)
        terms = self.pretrain_terms(batch) if stage == "pretrain" else self.finetune_terms(batch)
        size = batch["location"].shape[0]
        self.log_losses({k: v.detach() for k, v in terms.items()}, batch_size=size)
        self.log(f"train/{stage}_loss", terms["loss"].detach(), batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Nothing: CSP is evaluated by :class:`zoo.eval.geo.GeoPriorEval`."""

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(
            self.optimizer_target(), self.optim, getattr(self, "_param_ndims", None)
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch", "frequency": 1},
        }
