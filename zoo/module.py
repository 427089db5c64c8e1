"""``ZooModule``: the LightningModule base every paper module subclasses.

It owns the optimiser recipe (optimiser, schedule and parameter-group rule chosen by name in
an :class:`zoo.optim.OptimSpec`; by default AdamW with SLIP's no-decay rule and per-step
warm-up + cosine) and a post-optimiser-step hook (logit-scale clamps, EMA teachers).
Paper modules implement ``training_step`` and, where they have one, ``validation_step``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from zoo.optim import (
    OptimSpec,
    build_optimizer,
    build_schedule,
    merge_onto,
    optimizer_steps_per_epoch,
)

#: Checkpoint key of the preprocessing record (see :meth:`ZooModule.on_save_checkpoint`).
PREPROCESS_KEY = "preprocess"


class ZooModule(L.LightningModule):
    def __init__(self, optim: OptimSpec | None = None):
        super().__init__()
        # A paper module passes its spec already merged onto its paper defaults
        # (zoo.optim.merge_onto); a mapping here is merged onto OptimSpec's own defaults.
        self.optim = merge_onto(OptimSpec(), optim)
        self.last_loss_terms: dict[str, torch.Tensor] = {}
        self._skipped_in_epoch: torch.Tensor | None = None  # bad samples, this rank, this epoch

    # --- optimisation -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Runs before the strategy wraps the model: sharding strategies (FSDP) flatten the
        # parameters afterwards, and every parameter-group rule needs their true shapes
        # (names are read without the wrappers' segments: zoo.optim.groups.clean_name).
        self._param_ndims = {p: p.ndim for p in self.parameters()}

    def configure_optimizers(self) -> dict[str, Any]:
        """``optim.optimizer`` over ``optim.groups``, and ``optim.schedule`` stepped every
        optimiser step (``optim.interval: step``) or every epoch (``epoch``).

        The schedule spans the run's optimiser steps (``estimated_stepping_batches``: the
        smaller of ``max_steps`` and ``max_epochs`` epochs); ``warmup_epochs`` and
        ``milestones`` convert with the optimiser steps of one epoch
        (:func:`zoo.optim.optimizer_steps_per_epoch`), so the warm-up is the same with
        ``max_epochs``, ``max_steps`` or both, and with gradient accumulation.
        """
        spec = self.optim
        target = self.optimizer_target()
        optimizer = build_optimizer(target, spec, getattr(self, "_param_ndims", None))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the learning-rate schedule needs a finite run: set trainer.max_epochs or "
                "trainer.max_steps"
            )
        per_epoch = optimizer_steps_per_epoch(self.trainer)
        if not math.isfinite(per_epoch):
            if spec.interval == "epoch":
                raise ValueError(
                    "the training loader has no length, so optim.interval 'epoch' cannot "
                    "count epochs: use optim.interval 'step' with optim.warmup_steps"
                )
            if spec.warmup_steps is None:
                raise ValueError(
                    "the training loader has no length, so optim.warmup_epochs cannot be "
                    "converted to steps: set optim.warmup_steps"
                )
            if spec.milestones and spec.milestone_steps is None:
                raise ValueError(
                    "the training loader has no length, so optim.milestones (epochs) cannot "
                    "be converted to steps: set optim.milestone_steps"
                )
        scheduler = build_schedule(optimizer, spec, int(total), steps_per_epoch=per_epoch)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": spec.interval, "frequency": 1},
        }

    def optimizer_target(self) -> nn.Module:
        """The module whose trainable parameters the optimiser gets (default: all of this
        module's). A paper overrides it when a parameter must require grad yet stay out of the
        optimiser (ViSFT's ``patch_embed``)."""
        return self

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def on_train_epoch_start(self) -> None:
        self._skipped_in_epoch = torch.zeros((), dtype=torch.long, device=self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Bad images are replaced by the loaders and counted per batch ("skipped"); the
        # epoch total goes to the logs as data/skipped_images and to the console at the end
        # of the epoch (on_train_epoch_end), so it is never silent.
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch["skipped"]
            self.log(
                "data/skipped_images",
                skipped.float(),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                batch_size=1,
            )
            # on the device, no host sync per step
            counted, total = self._skipped_in_epoch, skipped.detach().sum().long()
            self._skipped_in_epoch = total if counted is None else counted + total

    def on_train_epoch_end(self) -> None:
        """Print the epoch's bad-sample total, summed over all ranks, on rank 0 when > 0.

        Counts the batches this process trained in the epoch: after a mid-epoch resume, the
        batches since the restart. Every rank joins the one all-reduce per epoch.
        """
        counted = self._skipped_in_epoch
        if counted is None:
            counted = torch.zeros((), dtype=torch.long, device=self.device)
        total = int(self.trainer.strategy.reduce(counted, reduce_op="sum").item())
        self._skipped_in_epoch = None
        if total > 0 and self.trainer.is_global_zero:
            noun = "sample" if total == 1 else "samples"
            print(
                f"epoch {self.current_epoch}: {total} bad {noun} skipped "
                "(replaced by the next readable ones)",
                flush=True,
            )

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (clamps, EMA updates). Override as needed."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the datamodule's preprocessing (:class:`zoo.preprocess.PreprocessSpec`) in
        the checkpoint as ``checkpoint["preprocess"]`` (its ``config.json`` form), so
        ``zoo export`` writes the spec the model was trained and evaluated with instead of
        reconstructing it from the datamodule's arguments."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        spec = getattr(datamodule, "preprocess", None)
        if spec is not None and hasattr(spec, "to_config"):
            checkpoint[PREPROCESS_KEY] = spec.to_config()

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        """By default a paper's test step is its validation step (logged under ``test/``)."""
        return self.validation_step(batch, batch_idx)

    @property
    def eval_prefix(self) -> str:
        return "test" if self._trainer is not None and self.trainer.testing else "val"

    # --- helpers --------------------------------------------------------------------------
    def log_losses(
        self, losses: dict[str, torch.Tensor], prefix: str = "train", **kwargs: Any
    ) -> None:
        """Log a dict of loss terms as ``{prefix}/{name}``; ``loss`` goes to the progress bar.

        Training terms are also kept (detached, no host sync) as ``last_loss_terms``, so
        :class:`zoo.callbacks.NonFiniteGuard` can name the terms that went NaN / Inf.
        """
        if prefix == "train":
            self.last_loss_terms = {
                k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.items()
            }
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, prog_bar=(name == "loss"), **kwargs)
