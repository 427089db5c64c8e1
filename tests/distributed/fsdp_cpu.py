"""Lightning's ``FSDPStrategy`` on CPU processes (gloo), for the FSDP tests.

Lightning refuses FSDP without CUDA (its accelerator connector checks ``type(strategy) is
FSDPStrategy``) and wraps the model with ``device_id=None``, which torch's FSDP rejects on
a CPU-only machine. torch's FSDP itself runs on CPU when told ``device_id=cpu``; this
subclass does exactly that and nothing else, so the sharding, gradient reduce-scatter,
full-state-dict gathering and checkpointing under test are Lightning's and torch's own.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


class CPUFSDPStrategy(FSDPStrategy):
    def __init__(self, wrap_blocks: bool = False, **kwargs) -> None:
        """``wrap_blocks``: every transformer block its own FSDP unit (the usual auto-wrap
        policy at scale); otherwise the whole model is one unit."""
        if wrap_blocks:
            from timm.models.vision_transformer import Block
            from transformers.models.clip.modeling_clip import CLIPEncoderLayer

            kwargs["auto_wrap_policy"] = {Block, CLIPEncoderLayer}
        super().__init__(process_group_backend="gloo", **kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
