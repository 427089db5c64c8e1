"""CLIP-Adapter data (Gao et al., 2021, "CLIP-Adapter: Better Vision-Language Models with
Feature Adapters", arXiv 2110.04544): the few-shot protocol with CoOp's data defaults.

The official code (``clip_adapter.py``) is a trainer for CoOp's Dassl code base, run with
CoOp's configs and datasets (its README), so the data are CoOp's: training batch 32,
evaluation batch 100, 224 px bicubic input with CLIP's mean / std, Dassl's
``RandomResizedCrop(scale=(0.08, 1))`` + flip (the ``"coop"`` transform), and CoOp's
per-dataset prompt (``CUSTOM_TEMPLATES``, the same table as CoOp's).
"""

from __future__ import annotations

from typing import Any

from zoo.data.fewshot_datamodule import FewShotDataModule


class CLIPAdapterDataModule(FewShotDataModule):
    """:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` with the CoOp data defaults
    CLIP-Adapter's code runs with; every other argument is the base's."""

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
