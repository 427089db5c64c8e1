"""SgVA-CLIP data (Peng et al., 2023, "SgVA-CLIP: Semantic-guided Visual Adapting of
Vision-Language Models for Few-shot Image Classification", arXiv 2211.16191): the few-shot
protocol with SgVA-CLIP's training view.

From the official code (``data/*.py``): CoOp's split files, K shots and ``min(K, 4)``
validation shots per class (``generate_fewshot_dataset``), and the training view
``Resize(224, bicubic)`` + ``RandomCrop(224)`` + ``ColorJitter(0.4, 0.4, 0.4)`` +
``RandomHorizontalFlip`` + CLIP normalisation (the ``"sgva"`` transform); evaluation is
resize + centre crop. SgVA-CLIP trains on episodes (N-way, K support + Q query images per
class) drawn from the K-shot set: the training loader is the episodic one of
:class:`zoo.fewshot.episodes.EpisodicFewShotDataModule` (``episode_way`` etc.), and
``batch_size`` is the size of the plain validation / evaluation loaders.
"""

from __future__ import annotations

from typing import Any

from zoo.fewshot.episodes import EpisodicFewShotDataModule


class SgVACLIPDataModule(EpisodicFewShotDataModule):
    """:class:`~zoo.fewshot.episodes.EpisodicFewShotDataModule` (episodes over the few-shot
    protocol) with SgVA-CLIP's training view; every other argument is the base's."""

    def __init__(self, *, train_transform: str = "sgva", **kwargs: Any):
        super().__init__(train_transform=train_transform, **kwargs)
