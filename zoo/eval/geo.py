"""Geo-aware classification: an image classifier's probabilities fused with a geo prior.

At inference CSP (Mai et al., ICML 2023) and the geo priors of Mac Aodha et al. (ICCV 2019)
score class y of an image I taken at x as

    P(y | I, x) ∝ P(y | I) · σ(e(x) · W_y)

(official code ``main/eval_helper.py``, ``compute_acc_batch``: ``cnn_pred * geo_prior``):
:func:`fuse_geo_prior`. The image classifier is frozen and external: its probabilities are
read from the split's ``predictions`` file (iNat2018: the fully trained InceptionV3's;
fMoW: the few-shot classifier's); a split without one gets them from a logistic regression
fitted on the labelled training features (scikit-learn), the few-shot image-only
classifier of the same labels.

:class:`GeoPriorEval` reports top-k of the image alone, of the location alone and of the
fusion. Images without a location: the code drops them from the fused predictions but
divides by the whole split, so they count as wrong (``missing_location="wrong"``); the
default scores them with the image classifier alone (``"image_only"``), the intent of the
code's comment ("if there is no location info won't use prior").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from zoo.eval.callbacks import EvalCallback

MissingLocation = Literal["image_only", "wrong"]


@runtime_checkable
class GeoPriorModel(Protocol):
    """A module with a geo prior: class logits ``s = e(x) W^T`` of (lon, lat) ``(N, 2)``."""

    def geo_prior_logits(self, lonlat: Tensor) -> Tensor: ...


@runtime_checkable
class GeoEvalData(Protocol):
    """A datamodule whose splits are geo-tagged image features
    (:class:`zoo.data.geo_datamodule.GeoFeatureDataModule`)."""

    def geo_records(self, split: str) -> Any: ...


def fuse_geo_prior(
    image_probs: Tensor, prior_logits: Tensor, has_location: Tensor | None = None
) -> Tensor:
    """``P(y | I) · σ(s_y)`` per row; rows where ``has_location`` is False keep ``P(y | I)``
    (unnormalised: the argmax and ranks are what the protocol reads)."""
    fused = image_probs * torch.sigmoid(prior_logits)
    if has_location is None:
        return fused
    return torch.where(has_location.unsqueeze(1), fused, image_probs)


def image_only_probabilities(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    num_classes: int,
    seed: int = 0,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of an L2-regularised logistic regression
    (C = 1, L-BFGS) fitted on the labelled training features; classes it never saw get 0."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        clf = LogisticRegression(max_iter=1000, random_state=seed)
        clf.fit(train_features, train_labels)
        probs = clf.predict_proba(features)
    full = np.zeros((len(features), num_classes), dtype=np.float32)
    full[:, clf.classes_] = probs
    return full


class GeoPriorEval(EvalCallback):
    """Top-k on ``split`` of the image classifier alone, the geo prior alone and their
    fusion (metrics ``eval/geo_image_top1``, ``eval/geo_location_top1``,
    ``eval/geo_prior_top1``, … in percent), printed as one line ``geo prior top-1: …``.

    Args:
        split: the scored split (``test``: CSP's ``--eval_split val``).
        top_k: the ks reported (the code prints 1, 3, 5, 10).
        missing_location: ``image_only`` (default) or ``wrong`` (see the module docstring).
        batch_size: locations per forward pass of the geo prior.
        every_n_epochs: also evaluate every n training epochs (0: at the end only).
    """

    model_protocols = (GeoPriorModel,)
    data_protocols = (GeoEvalData,)

    def __init__(
        self,
        split: str = "test",
        top_k: Sequence[int] = (1, 3),
        missing_location: MissingLocation = "image_only",
        batch_size: int = 4096,
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        if missing_location not in ("image_only", "wrong"):
            raise ValueError(
                f"missing_location must be 'image_only' or 'wrong', got {missing_location!r}"
            )
        self.split = split
        self.top_k = tuple(top_k)
        self.missing_location = missing_location
        self.batch_size = batch_size

    def required_splits(self) -> dict[str, dict[str, bool]]:
        return {self.split: {"labels": True}}

    @torch.no_grad()
    def prior_logits(self, pl_module: Any, lonlat: np.ndarray) -> Tensor:
        """The geo prior's logits of every row (NaN rows are encoded as (0, 0) and ignored
        by the fusion), in batches of ``batch_size``."""
        coords = torch.from_numpy(np.nan_to_num(lonlat, nan=0.0)).to(pl_module.device)
        chunks = [
            pl_module.geo_prior_logits(part).float().cpu() for part in coords.split(self.batch_size)
        ]
        return torch.cat(chunks)

    def image_probabilities(self, datamodule: Any, records: Any, num_classes: int) -> Tensor:
        if records.predictions is not None:
            return torch.from_numpy(records.predictions)
        train = datamodule.geo_records("train")
        probs = image_only_probabilities(
            train.features, train.labels, records.features, num_classes
        )
        return torch.from_numpy(probs)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        records = datamodule.geo_records(self.split)
        labelled = records.labels >= 0
        if not labelled.any():
            return self._skip(f"data.{self.split} has no labelled images")
        records = records.subset(np.flatnonzero(labelled))
        logits = self.prior_logits(pl_module, records.locations)
        num_classes = logits.shape[1]
        image = self.image_probabilities(datamodule, records, num_classes)
        if image.shape[1] != num_classes:
            raise ValueError(
                f"data.{self.split}.predictions has {image.shape[1]} classes, the geo prior "
                f"{num_classes}"
            )
        has_location = torch.from_numpy(records.has_location)
        labels = torch.from_numpy(records.labels)
        fused = fuse_geo_prior(image, logits, has_location)
        # which rows each score may get right: the location alone never scores a row
        # without a location; the fusion does, from the image, unless counted "wrong"
        everywhere = torch.ones_like(has_location)
        scored = {
            "image": (image, everywhere),
            "location": (torch.sigmoid(logits), has_location),
            "prior": (fused, has_location if self.missing_location == "wrong" else everywhere),
        }
        metrics: dict[str, float] = {}
        for name, (score, valid) in scored.items():
            for k in self.top_k:
                hits = topk_hits(score, labels, k) & valid
                metrics[f"geo_{name}_top{k}"] = 100.0 * float(hits.float().mean())
        first = f"top{self.top_k[0]}"
        summary = (
            f"geo prior top-{self.top_k[0]}: {metrics[f'geo_prior_{first}']:.2f}% "
            f"(image only {metrics[f'geo_image_{first}']:.2f}%, location only "
            f"{metrics[f'geo_location_{first}']:.2f}%; {len(labels)} images, "
            f"{int((~has_location).sum())} without a location)"
        )
        return metrics, summary


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Whether each row's label is among its ``k`` highest scores (``k`` capped at the
    number of classes), ``(N,)`` bool; ties go to ``torch.topk``'s order, as the code's
    ``argsort`` ranks them."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1)
