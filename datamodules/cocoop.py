"""CoCoOp data (Zhou et al., 2022, "Conditional Prompt Learning for Vision-Language
Models", arXiv 2203.05557): the few-shot protocol with CoCoOp's defaults.

From CoCoOp's official configs (``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``
in the CoOp repository): training batch 1 (each image builds its own text classifier),
evaluation batch 100, 224 px bicubic input with CLIP's mean / std, the Dassl view
``random_resized_crop`` (scale 0.08-1) + ``random_flip`` (the ``"coop"`` transform). The
base-to-new protocol (``scripts/cocoop/base2new_*.sh``) trains with 16 shots on
``subsample_classes: base`` and tests on ``base`` and ``new``
(:func:`zoo.fewshot.splits.harmonic_mean` summarises the two).
"""

from __future__ import annotations

from typing import Any

from zoo.data.fewshot_datamodule import FewShotDataModule


class CoCoOpDataModule(FewShotDataModule):
    """:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` with CoCoOp's batch sizes and
    training view; every other argument is the base's."""

    def __init__(
        self,
        *,
        batch_size: int = 1,
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
