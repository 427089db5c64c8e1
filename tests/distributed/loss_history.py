"""A callback for the distributed equivalence tests. It records every step's loss, averaged
over ranks (each rank's loss is the mean over its local rows, so the rank mean is the global
loss); the number of weights in each optimiser group, summed over ranks (under FSDP each rank
holds a shard); the ``eval/`` metrics the evaluation callbacks published before it; and the
final full state dict."""

import json
from pathlib import Path

import lightning as L
import torch


class LossHistory(L.Callback):
    def __init__(self, path: str):
        self.path = path
        self.losses: list[float] = []
        self.group_numel: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        for group in trainer.optimizers[0].param_groups:
            local = torch.tensor(float(sum(p.numel() for p in group["params"])))
            total = trainer.strategy.reduce(local, reduce_op="sum")
            self.group_numel[group.get("name", str(len(self.group_numel)))] = int(total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"].detach().double()
        mean = trainer.strategy.reduce(loss, reduce_op="mean")
        self.losses.append(float(mean))

    def on_train_end(self, trainer, pl_module):
        # Collective under FSDP (gathers the full state dict on rank 0): call on every rank.
        state = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")
            }
            record = {
                "world_size": trainer.world_size,
                "losses": self.losses,
                "group_numel": self.group_numel,
                "eval": metrics,
            }
            Path(self.path).write_text(json.dumps(record))
            torch.save(
                {k: v.detach().cpu() for k, v in state.items()},
                Path(self.path).with_suffix(".pt"),
            )
