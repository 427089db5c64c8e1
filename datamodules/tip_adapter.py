"""Tip-Adapter data (Zhang et al., 2022, "Tip-Adapter: Training-free Adaption of CLIP for
Few-shot Classification", ECCV 2022, arXiv 2111.03930): the few-shot protocol with
Tip-Adapter's defaults.

From the official code (``main.py``, ``main_imagenet.py``, ``datasets/*.py``): the training
view ``RandomResizedCrop(224, scale=(0.5, 1), bicubic)`` + ``RandomHorizontalFlip(0.5)`` +
CLIP normalisation (the ``"tip"`` transform; also the view of the 10 augmentation passes
averaged into the cache keys), Tip-Adapter-F batch 256 (``train_loader_F``), evaluation
batch 64, and CoOp's per-dataset prompts; on ImageNet the 7-template ensemble
(``templates: ensemble``).

Two differences from the official loaders, both to keep one protocol for every method:
Tip-Adapter's ``generate_fewshot_dataset`` repeats images of a class with fewer than K
(``repeat=True``) where CoOp's keeps all of them, and it validates (selects α, β) on the whole
val list where CoOp's protocol draws ``min(K, 4)`` per class; here both follow CoOp.
"""

from __future__ import annotations

from typing import Any

from zoo.data.fewshot_datamodule import FewShotDataModule


class TipAdapterDataModule(FewShotDataModule):
    """:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` with Tip-Adapter's batch sizes
    and training view; every other argument is the base's."""

    def __init__(
        self,
        *,
        batch_size: int = 256,
        eval_batch_size: int | None = 64,
        train_transform: str = "tip",
        **kwargs: Any,
    ):
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            train_transform=train_transform,
            **kwargs,
        )
