"""Feature gathering across data-parallel ranks, with an explicit gradient policy.

- ``"none"``: each rank uses only its own features (per-GPU negatives).
- ``"no_grad"``: other ranks' features are gathered as constants; the local slice keeps its
  gradient (local-loss formulation). Memory per rank is O(B_local × B_global).
- ``"with_grad"``: gathered features carry gradient back to the rank that produced them
  (SLIP's ``GatherLayer``): the backward pass all-reduces the incoming gradients and returns
  this rank's slice. With DDP's gradient averaging this reproduces the single-process
  full-batch gradient exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

GatherPolicy = Literal["none", "no_grad", "with_grad"]
GATHER_POLICIES = ("none", "no_grad", "with_grad")


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather(x: torch.Tensor, policy: GatherPolicy = "no_grad") -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (B_local, ...) over ranks; also return this rank's row offset.

    All ranks must pass the same local batch size.
    """
    if policy not in GATHER_POLICIES:
        raise ValueError(f"gather policy must be one of {GATHER_POLICIES}, got {policy!r}")
    rank, world = world_info()
    if world == 1 or policy == "none":
        return x, 0
    offset = rank * x.shape[0]
    if policy == "with_grad":
        return torch.cat(_GatherWithGrad.apply(x), dim=0), offset
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x  # keep the local gradient
    return torch.cat(parts, dim=0), offset
