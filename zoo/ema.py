"""Exponential moving average of a model (momentum teachers, EMA weights for evaluation).

``θ_ema ← m·θ_ema + (1 − m)·θ`` after each optimiser step, built on
``torch.optim.swa_utils.AveragedModel``; the copy never requires grad and is not in any
optimiser.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999, use_buffers: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers
        )
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def forward(self, *args, **kwargs):
        return self.averaged(*args, **kwargs)
