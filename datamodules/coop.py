"""CoOp data (Zhou et al., 2022, "Learning to Prompt for Vision-Language Models", arXiv
2109.01134): the few-shot protocol over CoOp's split files with CoOp's defaults.

From CoOp's official configs (``configs/trainers/CoOp/rn50.yaml``, Dassl defaults): training
batch 32 (``DATALOADER.TRAIN_X.BATCH_SIZE``), evaluation batch 100 (``DATALOADER.TEST``),
224 px bicubic input with CLIP's mean / std, and the training view
``["random_resized_crop", "random_flip", "normalize"]`` with Dassl's
``INPUT.RRCROP_SCALE = (0.08, 1.0)`` (the ``"coop"`` transform). Shots 1 / 2 / 4 / 8 / 16,
seeds 1 / 2 / 3, ``min(K, 4)`` validation shots (``datasets/*.py``).
"""

from __future__ import annotations

from typing import Any

from zoo.data.fewshot_datamodule import FewShotDataModule


class CoOpDataModule(FewShotDataModule):
    """:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` with CoOp's batch sizes and
    training view; every other argument is the base's."""

    def __init__(
        self,
        *,
        batch_size: int = 32,
        eval_batch_size: int | None = 100,
        train_transform: str = "coop",
        **kwargs: Any,
    ):
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            train_transform=train_transform,
            **kwargs,
        )
