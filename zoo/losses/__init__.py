"""Losses, each with its equation in the docstring and a data-parallel gather policy."""

from zoo.losses.contrastive import ClipInfoNCE, NTXent, clip_infonce, nt_xent, soft_target_ce
from zoo.losses.distributed import GATHER_POLICIES, GatherPolicy, gather, world_info

__all__ = [
    "GATHER_POLICIES",
    "ClipInfoNCE",
    "GatherPolicy",
    "NTXent",
    "clip_infonce",
    "gather",
    "nt_xent",
    "soft_target_ce",
    "world_info",
]
