"""``ZooModule``: the LightningModule base every paper module subclasses.

It owns the optimiser recipe (AdamW with SLIP's no-decay rule, per-step warm-up + cosine,
see :mod:`zoo.optim`) and a post-optimiser-step hook (logit-scale clamps, EMA teachers).
Paper modules implement ``training_step`` and, where they have one, ``validation_step``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from zoo.optim import OptimSpec, build_adamw, build_schedule
from zoo.specs import to_spec


class ZooModule(L.LightningModule):
    def __init__(self, optim: OptimSpec | None = None):
        super().__init__()
        self.optim = to_spec(OptimSpec, optim)
        self.last_loss_terms: dict[str, torch.Tensor] = {}

    # --- optimisation -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Runs before the strategy wraps the model: sharding strategies (FSDP) flatten the
        # parameters afterwards, and the weight-decay rule needs their true shapes.
        self._param_ndims = {p: p.ndim for p in self.parameters()}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_adamw(self, self.optim, getattr(self, "_param_ndims", None))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = (
            self.trainer.max_epochs
            if self.trainer.max_epochs and self.trainer.max_epochs > 0
            else 1
        )
        scheduler = build_schedule(optimizer, self.optim, total, steps_per_epoch=total / epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Bad images are replaced by the loaders and counted per batch ("skipped"); the
        # epoch total goes to the logs as data/skipped_images so it is never silent.
        if isinstance(batch, dict) and "skipped" in batch:
            self.log(
                "data/skipped_images",
                batch["skipped"].float(),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                batch_size=1,
            )

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (clamps, EMA updates). Override as needed."""

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
        :class:`zoo.faults.NonFiniteGuard` can name the terms that went NaN / Inf.
        """
        if prefix == "train":
            self.last_loss_terms = {
                k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.items()
            }
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, prog_bar=(name == "loss"), **kwargs)
