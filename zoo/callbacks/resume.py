"""Step randomness of a resumed run: :class:`ExactResume` (see :mod:`zoo.data.resumable`)."""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from zoo.data.resumable import ResumableDataLoader, global_seed

log = logging.getLogger("zoo.callbacks")


def _step_seed(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(map(str, ("step", *parts))).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class ExactResume(Callback):
    """Makes each training step's randomness a function of ``(seed, epoch, batch, rank)``
    (reseeds torch, ``random`` and numpy before every batch: microseconds), and checks
    that the resumable loader's count of handed-out batches matches the loop's batch index
    (if a Lightning version ever fetched ahead, resume would silently be off by a batch)."""

    def __init__(self) -> None:
        self._warned = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = _step_seed(global_seed(), trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        loader = trainer.train_dataloader
        if (
            isinstance(loader, ResumableDataLoader)
            and loader.position != batch_idx + 1
            and not self._warned
        ):
            self._warned = True
            log.warning(
                "data loader position %d != batch %d + 1: a mid-epoch resume would repeat "
                "or skip batches (did Lightning start fetching ahead?)",
                loader.position,
                batch_idx,
            )
