"""Evaluation under strategies that shard parameters across ranks (FSDP).

The evaluation callbacks call the module's protocol methods (``features``, ``class_weights``,
``text_features``: :mod:`zoo.protocols`) directly, outside the wrapped model's ``forward``.
Under DDP every rank holds the whole model, so rank 0 can evaluate alone. Under FSDP each
rank holds a shard: the parameters must be gathered first (a collective), and a nested FSDP
unit's forward may all-gather again, so every rank runs the same feature passes in lockstep;
rank 0 reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import lightning.pytorch as pl
from torch import nn

Sharding = Literal["none", "fsdp", "unsupported"]


def parameter_sharding(trainer: pl.Trainer) -> Sharding:
    """How the trainer's model holds its parameters: whole on every rank (``"none"``),
    sharded by torch's ``FullyShardedDataParallel`` (``"fsdp"``, Lightning's ``FSDPStrategy``),
    or sharded in a way the evaluation callbacks cannot gather (FSDP2 ``fully_shard``,
    DeepSpeed ZeRO stage 3)."""
    model = trainer.strategy.model
    if not isinstance(model, nn.Module):
        return "none"
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    modules = list(model.modules())
    if any(isinstance(m, FullyShardedDataParallel) for m in modules):
        return "fsdp"
    if any(isinstance(m, FSDPModule) for m in modules):
        return "unsupported"
    if getattr(trainer.strategy, "zero_stage_3", False):
        return "unsupported"
    return "none"


@contextlib.contextmanager
def gathered_parameters(trainer: pl.Trainer, sharding: Sharding) -> Iterator[None]:
    """Every parameter whole on every rank inside the block (read-only: changes are not
    written back). A collective for ``"fsdp"``: enter it on every rank."""
    if sharding != "fsdp":
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(
        trainer.strategy.model, writeback=False, recurse=True
    ):
        yield
