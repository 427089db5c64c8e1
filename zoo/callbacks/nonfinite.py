"""Stop on a NaN / Inf loss before it reaches the weights, and refuse to save NaN weights."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("zoo.callbacks")


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or ±Inf; training stopped before using it."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with NaN / Inf weights; it was not written."""


def _describe(value: torch.Tensor) -> str:
    value = value.detach()
    if value.numel() == 1:
        return f"{value.item():g}"
    bad = int((~torch.isfinite(value)).sum())
    return f"tensor with {bad}/{value.numel()} non-finite values"


def non_finite_names(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or Inf."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
    ]


class NonFiniteGuard(Callback):
    """Stops training at the first non-finite loss, before its backward pass, so no
    optimizer step ever uses it and the last checkpoint stays the last good one; and
    refuses to write a checkpoint whose weights are not finite.

    Cost: reading the loss's finiteness is a host sync (a GPU pipeline stall) and, under
    DDP, one all-reduce of a flag per checked step. ``check_every_n_steps=k`` checks every
    k-th step only (0: never); steps in between may then update the weights with a NaN,
    which the checkpoint check still catches before anything non-finite is saved.
    """

    def __init__(self, check_every_n_steps: int = 1, check_checkpoints: bool = True):
        self.check_every_n_steps = check_every_n_steps
        self.check_checkpoints = check_checkpoints

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        n = self.check_every_n_steps
        if n <= 0 or trainer.global_step % n:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        # every rank must stop together, or the others would hang in the gradient all-reduce
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(self._loss_message(trainer, pl_module, loss))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.check_checkpoints:
            return
        bad = non_finite_names(checkpoint.get("state_dict", {}))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteWeightsError(
                f"refusing to write a checkpoint at global step {trainer.global_step}: "
                f"non-finite weights in {shown}. {self._last_good(trainer)}"
            )

    @staticmethod
    def _last_good(trainer: L.Trainer) -> str:
        cb = trainer.checkpoint_callback
        path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if path:
            return f"The last good checkpoint is {path}."
        return "No checkpoint had been written yet."

    def _loss_message(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> str:
        where = (
            f"global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        msg = f"non-finite training loss at {where}: loss = {_describe(loss)}"
        terms = getattr(pl_module, "last_loss_terms", None) or {}
        bad = [k for k in non_finite_names(terms) if k != "loss"]  # loss: shown already
        if bad:
            msg += "; non-finite loss terms: " + ", ".join(
                f"{k} = {_describe(terms[k])}" for k in bad
            )
        return (
            f"{msg}. Training stopped before this step's backward pass, so no weights were "
            f"updated with it. {self._last_good(trainer)} Lower the learning rate or check "
            "the data / precision, then resume with --ckpt_path last."
        )
