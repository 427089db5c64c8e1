"""A callback for the DDP equivalence test: records every step's loss, averaged over ranks
(each rank's loss is the mean over its local rows, so the rank mean is the global loss)."""

import json
from pathlib import Path

import lightning as L
import torch


class LossHistory(L.Callback):
    def __init__(self, path: str):
        self.path = path
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"].detach().double()
        mean = trainer.strategy.reduce(loss, reduce_op="mean")
        self.losses.append(float(mean))

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.path).write_text(
                json.dumps({"world_size": trainer.world_size, "losses": self.losses})
            )
            torch.save(
                {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                Path(self.path).with_suffix(".pt"),
            )
