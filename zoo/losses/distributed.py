r"""Feature gathering across data-parallel ranks, with an explicit gradient policy.

Each rank r holds local features :math:`Z^r` (B_local × D) and computes its loss with its own
rows as anchors against the gathered matrix :math:`K = [K^0; \dots; K^{W-1}]` (B_global × D) as
candidates; DDP averages the per-rank gradients. ``sg`` below is stop-gradient.

- ``"none"``: :math:`K = Z^r` — each rank uses only its own features (per-GPU negatives).
  Logits B_local × B_local; no communication.
- ``"constant"``: :math:`K^j = \mathrm{sg}(Z^j)` for every j, the local slice included.
  The official SLIP code's CLIP loss (``utils.all_gather_batch``: ``dist.all_gather`` into
  fresh tensors, then ``cat``; equal to open_clip's ``ClipLoss(local_loss=True,
  gather_with_grad=False)``). Gradient flows only through the anchor rows: every candidate
  (column) term is dropped. Memory per rank O(B_local × B_global) logits + O(B_global × D)
  gathered features; no gradient is computed for the gathered matrix.
- ``"local_grad"``: :math:`K^j = \mathrm{sg}(Z^j)` for j ≠ r, :math:`K^r = Z^r` — the local
  slice keeps its gradient, so a feature also gets the candidate terms of its own rank's rows
  (other ranks' rows' candidate terms are dropped). This is the gather of open_clip's
  ``gather_features(gather_with_grad=False, local_loss=False)`` (which puts the local
  features back); open_clip pairs it with the full B_global × B_global logits, here the rows
  stay local. Memory as ``"constant"``, plus the B_global × D gradient of ``K`` in backward.
- ``"no_grad"``: backward-compatible alias of ``"local_grad"`` (its meaning before
  ``"constant"`` existed); prefer the explicit names.
- ``"with_grad"``: :math:`K^j = Z^j` with gradient sent back to the rank that produced it
  (SLIP's ``GatherLayer`` / ``all_gather_batch_with_grad``, used by its ``SIMCLRLoss``): the
  backward pass all-reduces the incoming gradients and returns this rank's slice. With DDP's
  gradient averaging this reproduces the single-process full-batch gradient exactly. Memory
  as ``"local_grad"``, plus an all-reduce of W × B_local × D gradients.

With one process every policy returns the input unchanged, so all agree (as in SLIP, whose
gathers return their inputs when the world size is 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

GatherPolicy = Literal["none", "constant", "local_grad", "no_grad", "with_grad"]
GATHER_POLICIES = ("none", "constant", "local_grad", "no_grad", "with_grad")
GATHER_ALIASES = {"no_grad": "local_grad"}


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


def gather(x: torch.Tensor, policy: GatherPolicy = "constant") -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (B_local, ...) over ranks under ``policy`` (see the module
    docstring); also return this rank's row offset.

    All ranks must pass the same local batch size.
    """
    if policy not in GATHER_POLICIES:
        raise ValueError(f"gather policy must be one of {GATHER_POLICIES}, got {policy!r}")
    policy = GATHER_ALIASES.get(policy, policy)
    rank, world = world_info()
    if world == 1 or policy == "none":
        return x, 0
    offset = rank * x.shape[0]
    if policy == "with_grad":
        return torch.cat(_GatherWithGrad.apply(x), dim=0), offset
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    if policy == "local_grad":
        parts[rank] = x  # keep the local slice's gradient
    return torch.cat(parts, dim=0), offset
