"""Batch norm whose statistics span all data-parallel ranks, on any device.

SLIP's SSL head uses SyncBN. ``torch.nn.SyncBatchNorm`` runs only on GPU / XPU, so CPU
(gloo) data parallelism would otherwise normalise each rank's half batch on its own and
stop being equivalent to one process on the full batch. This module sums
(Σx, Σx², n) over ranks with a differentiable all-reduce; with one process it is exactly
``nn.BatchNorm1d``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


class GlobalBatchNorm1d(nn.BatchNorm1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 stats in fp32
        local = torch.cat([x32.sum(0), (x32 * x32).sum(0), x32.new_tensor([float(x.shape[0])])])
        total = all_reduce(local)  # backward all-reduces the gradients of the statistics
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            if self.track_running_stats and self.running_mean is not None:
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
                self.num_batches_tracked.add_(1)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


__all__ = ["GlobalBatchNorm1d"]
