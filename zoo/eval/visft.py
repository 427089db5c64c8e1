"""ViSFT's evaluation callbacks: out-of-domain question probes and in-domain task metrics.

ViSFT (Jiang et al., 2024, arXiv 2401.10222) fine-tunes a vision backbone through LoRA
behind frozen detection, segmentation and caption heads, and claims the backbone gets better
*out of domain*. The official code (TencentARC/ViSFT, an mmf fork) has not released its
evaluation, so these callbacks implement the protocol of the zoo's small reproduction:

- :class:`QuestionProbeEval`, out of domain: for each probe question ("count",
  "left_right"), a linear probe on the module's frozen pooled ``features(images, kind)``,
  fitted on the datamodule's probe-fit split and scored on its out-of-domain probe-test
  split (``datamodule.question_splits``, default ``("train", "test_ood")``). The probe is
  :func:`zoo.eval.linear_probe.linear_probe` (CLIP's L-BFGS logistic regression), with
  :class:`zoo.eval.callbacks.LinearProbeEval`'s rules for C: by default C is picked on a
  deterministic, stratified ``val_fraction`` (0.2, ``seed`` 0) held out of the *fit*
  features, then the probe is refitted on all fit features; with ``val_split`` the C sweep
  is scored on that split's images of the question instead (when the split has none, it
  falls back to the held-out part, with a warning). Ties go to the smallest C.
- :class:`DetectionEval`, :class:`SegmentationEval`, :class:`CaptionEval`, in domain: the
  heads' predictions (``module.detect`` / ``segment`` / ``caption``) on the datamodule's
  ``task_dataloader(task, split)``, scored with torchmetrics' COCO
  ``MeanAveragePrecision`` (pycocotools backend: AP averaged over IoU 0.50:0.05:0.95, each
  AP a 101-point interpolated precision-recall area, at most 100 detections per image) and
  :func:`zoo.eval.caption_metrics.caption_scores` (corpus BLEU-4, CIDEr-D).

Everything else (when a callback runs, rank-0 execution, skipping with a warning that names a
missing protocol method, publishing ``eval/<name>_<metric>`` to the loggers,
``self.results`` and ``trainer.callback_metrics``, one summary line) is
:class:`zoo.eval.callbacks.EvalCallback`'s. The module and datamodule methods asked for are
the protocols :class:`zoo.protocols.ImageFeatures`, :class:`~zoo.protocols.Detector`,
:class:`~zoo.protocols.InstanceSegmenter`, :class:`~zoo.protocols.CaptionGenerator`,
:class:`~zoo.protocols.TaskEvalData` and :class:`~zoo.protocols.QuestionData`.

Scales: every metric is a percentage (mAP, mIoU, probe top-1 and BLEU-4 in [0, 100]), and
CIDEr-D is ×100 as COCO captioning papers report it (a caption equal to its only reference,
among images that share no n-gram, scores 1000). The probe's chosen C is logged as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from tqdm.auto import tqdm

from zoo.eval.callbacks import EvalCallback, Feature
from zoo.eval.features import batch_get
from zoo.eval.linear_probe import DEFAULT_CS, linear_probe
from zoo.protocols import (
    CaptionGenerator,
    Detector,
    ImageFeatures,
    InstanceSegmenter,
    QuestionData,
    TaskEvalData,
    TextFeatures,
    data_tokenizer,
)


def _identifier(name: str, what: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"{what} must be an identifier (it names metrics), got {name!r}")
    return name


# --------------------------------------------------------------------------- question probes
class QuestionProbeEval(EvalCallback):
    """Out-of-domain linear probes for the datamodule's probe questions.

    For each question, the frozen ``features(images, kind=feature)`` of
    ``datamodule.question_dataloader(split, question)`` on the probe-fit split train a
    logistic-regression probe (:func:`zoo.eval.linear_probe.linear_probe`, the same code as
    :class:`zoo.eval.callbacks.LinearProbeEval`), scored once on the probe-test split. C is
    chosen on a stratified ``val_fraction`` held out of the fit features (deterministic:
    ``seed``), or on ``val_split``'s images of the question when ``val_split`` is given.

    Logs ``eval/probe_<question>_top1`` (test accuracy, %) and ``eval/probe_<question>_C``.
    ``splits`` overrides ``datamodule.question_splits`` (fit split, test split). A question
    whose fit split holds a single answer is skipped with a warning; the others still run.
    """

    model_protocols = (ImageFeatures,)
    data_protocols = (QuestionData,)

    def __init__(
        self,
        questions: Sequence[str] = ("count", "left_right"),
        feature: Feature = "trunk",
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
        max_iter: int = 1000,
        standardize: bool = False,
        seed: int = 0,
        val_split: str | None = None,
        splits: Sequence[str] | None = None,
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        if isinstance(questions, str) or not questions:
            raise ValueError(f"questions must be a non-empty list of names, got {questions!r}")
        if splits is not None and (isinstance(splits, str) or len(splits) != 2):
            raise ValueError(f"splits must be (fit split, test split), got {splits!r}")
        self.questions = tuple(_identifier(q, "a question") for q in questions)
        self.feature = feature
        self.Cs = tuple(float(c) for c in Cs)
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.standardize = standardize
        self.seed = seed
        self.val_split = val_split
        self.splits = tuple(splits) if splits is not None else None

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        fit_split, test_split = self.splits or tuple(datamodule.question_splits)
        metrics: dict[str, float] = {}
        parts: list[str] = []
        for question in self.questions:
            res = self._probe(trainer, pl_module, datamodule, question, fit_split, test_split)
            if res is None:
                continue
            top1, c, n_fit, n_test = res
            metrics |= {f"probe_{question}_top1": top1, f"probe_{question}_C": c}
            parts.append(f"{question} {top1:.2f}% (C={c:g}, {n_fit}→{n_test} images)")
        if not metrics:
            return self._skip("no probe question could be evaluated (see the warnings above)")
        summary = (
            f"question probes ({self.feature}) top-1, fitted on {fit_split}, scored on "
            f"{test_split}: " + "; ".join(parts)
        )
        return metrics, summary

    def _probe(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        datamodule: Any,
        question: str,
        fit_split: str,
        test_split: str,
    ) -> tuple[float, float, int, int] | None:
        """``(test top-1 %, chosen C, #fit, #test)`` of one question, or ``None`` (warned)."""

        def features(split: str) -> tuple[Tensor, Tensor | None]:
            loader = datamodule.question_dataloader(split, question)
            x, y, _ = self._image_features(
                trainer, pl_module, f"{split}/{question}", self.feature, loader=loader
            )
            return x, y

        xtr, ytr = features(fit_split)
        xte, yte = features(test_split)
        if ytr is None or yte is None:
            raise ValueError(
                f"{type(datamodule).__name__}.question_dataloader({fit_split!r} / "
                f"{test_split!r}, {question!r}) batches carry no 'label'"
            )
        if ytr.unique().numel() < 2:
            rank_zero_warn(
                f"{type(self).__name__}: question {question!r} skipped: a single answer in "
                f"the {fit_split} split"
            )
            return None
        xva = yva = None
        if self.val_split is not None:
            loader, why = _question_loader(datamodule, self.val_split, question)
            if loader is None:
                rank_zero_warn(
                    f"{type(self).__name__}: {why}; C for {question!r} is picked on "
                    f"{self.val_fraction:g} of the {fit_split} split"
                )
            else:
                xva, yva, _ = self._image_features(
                    trainer, pl_module, f"{self.val_split}/{question}", self.feature, loader=loader
                )
        res = linear_probe(
            xtr,
            ytr,
            xte,
            yte,
            self.Cs,
            self.val_fraction,
            self.seed,
            self.max_iter,
            self.standardize,
            val_x=xva,
            val_y=yva,
        )
        return res["top1"], res["C"], len(ytr), len(yte)


def _question_loader(
    datamodule: Any, split: str, question: str
) -> tuple[Iterable[Any] | None, str]:
    """``(loader, "")`` of ``question`` on ``split``, or ``(None, why)`` when the split has
    no such question: an empty loader, or the datamodule saying so (``ValueError`` /
    ``FileNotFoundError``, e.g. no ``questions_<split>.json``)."""
    try:
        loader = datamodule.question_dataloader(split, question)
    except (ValueError, FileNotFoundError) as err:
        return None, f"the {split} split has no {question!r} question ({err})"
    try:
        empty = len(loader) == 0  # type: ignore[arg-type]
    except TypeError:  # an iterable without a length
        empty = next(iter(loader), None) is None
    if empty:
        return None, f"the {split} split has no {question!r} question"
    return loader, ""


# --------------------------------------------------------------------------- task metrics
class _TaskEval(EvalCallback):
    """Shared loop of the in-domain task metrics: the module's predictions on
    ``datamodule.task_dataloader(task, split)``, at most ``max_batches`` batches (``None``:
    all; under ``fast_dev_run=n`` at most n)."""

    task: str = ""
    data_protocols = (TaskEvalData,)

    def __init__(
        self,
        split: str = "val",
        max_batches: int | None = None,
        name: str | None = None,
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.split = split
        self.max_batches = max_batches
        self.name = _identifier(name or self.task, "name")

    def _limit(self, trainer: pl.Trainer) -> int | None:
        limits = [n for n in (self.max_batches, self._max_batches(trainer)) if n]
        return min(limits) if limits else None

    def _predictions(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        method: str,
        predict: Callable[[Tensor], Any] | None = None,
    ) -> Iterator[tuple[Mapping[str, Any], Any]]:
        """``(batch, predictions)`` pairs: ``pl_module.<method>(images)`` (or
        ``predict(images)``) under the trainer's precision, in inference mode (eval mode is
        the base class's), with one prediction per image checked."""
        predict = predict if predict is not None else getattr(pl_module, method)
        convert = trainer.precision_plugin.convert_input
        loader = trainer.datamodule.task_dataloader(self.task, self.split)
        limit = self._limit(trainer)
        desc = f"{type(self).__name__} {self.split}"
        bar = tqdm(loader, desc=desc, disable=None if trainer.is_global_zero else True, leave=False)
        for i, batch in enumerate(bar):
            if limit is not None and i >= limit:
                break
            images = batch_get(batch, "image")
            if images is None:  # every sample of the batch was dropped as bad
                continue
            with self._encoding(trainer), torch.inference_mode():
                out = predict(convert(images.to(pl_module.device, non_blocking=True)))
            if len(out) != len(images):
                raise ValueError(
                    f"{type(pl_module).__name__}.{method} returned {len(out)} predictions "
                    f"for {len(images)} images (one per image expected)"
                )
            yield batch, out

    def _field(self, batch: Mapping[str, Any], key: str, datamodule: Any) -> Any:
        """``batch[key]``, or an error naming the loader that lacks it."""
        value = batch_get(batch, key)
        if value is None:
            raise ValueError(
                f"{type(datamodule).__name__}.task_dataloader({self.task!r}, {self.split!r}) "
                f"batches carry no {key!r}"
            )
        return value


def _checked(pred: Any, keys: Sequence[str], who: str) -> dict[str, Tensor]:
    """A prediction dict with ``keys``, detached on CPU; a clear error otherwise."""
    if not isinstance(pred, Mapping) or any(k not in pred for k in keys):
        got = sorted(pred) if isinstance(pred, Mapping) else type(pred).__name__
        raise ValueError(f"{who} must return dicts with keys {list(keys)}, got {got}")
    return {k: torch.as_tensor(pred[k]).detach().cpu() for k in keys}


def _map_summary(metric: Any) -> tuple[float, float] | None:
    """``(mAP, mAP@50)`` in % from a torchmetrics ``MeanAveragePrecision``; ``None`` when
    the split has no ground-truth object (pycocotools then reports -1)."""
    res = metric.compute()
    ap, ap50 = float(res["map"]), float(res["map_50"])
    if ap < 0 or ap50 < 0:
        return None
    return 100.0 * ap, 100.0 * ap50


class DetectionEval(_TaskEval):
    """COCO box mAP of ``module.detect(images)`` on ``task_dataloader("detection", split)``.

    The batch's ground truth (``"boxes"``: ``(N, 4)`` cx cy w h divided by the image width /
    height, DETR's target format) is mapped to x1 y1 x2 y2 pixels of the input image (the
    batch tensor's ``W, H``) with ``torchvision.ops.box_convert``, the frame ``detect``
    answers in. Scored with ``torchmetrics.detection.MeanAveragePrecision(box_format="xyxy",
    iou_type="bbox")``. Logs ``eval/<name>_map`` and ``eval/<name>_map_50`` (%; ``name``
    defaults to ``"detection"``).
    """

    task = "detection"
    model_protocols = (Detector,)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        from torchmetrics.detection import MeanAveragePrecision
        from torchvision.ops import box_convert

        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        images = objects = 0
        who = f"{type(pl_module).__name__}.detect"
        for batch, preds in self._predictions(trainer, pl_module, "detect"):
            height, width = batch["image"].shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            targets = [
                {
                    "boxes": box_convert(
                        torch.as_tensor(b).float().reshape(-1, 4), "cxcywh", "xyxy"
                    )
                    * scale,
                    "labels": torch.as_tensor(y).long().reshape(-1),
                }
                for b, y in zip(
                    self._field(batch, "boxes", datamodule),
                    self._field(batch, "labels", datamodule),
                    strict=True,
                )
            ]
            outs = [_checked(p, ("boxes", "scores", "labels"), who) for p in preds]
            for out in outs:
                out["boxes"] = out["boxes"].float().reshape(-1, 4)
                out["scores"], out["labels"] = out["scores"].float(), out["labels"].long()
            metric.update(outs, targets)
            images += len(preds)
            objects += sum(len(t["labels"]) for t in targets)
        if images == 0:
            return self._skip(f"the {self.split} detection loader yielded no images")
        maps = _map_summary(metric)
        if maps is None:
            return self._skip(f"no ground-truth box in the {self.split} split")
        ap, ap50 = maps
        summary = (
            f"{self.name} box mAP: {ap:.2f}% (mAP@50 {ap50:.2f}%) on {images} {self.split} "
            f"images, {objects} objects"
        )
        return {f"{self.name}_map": ap, f"{self.name}_map_50": ap50}, summary


class SegmentationEval(_TaskEval):
    """COCO mask mAP and semantic mIoU of ``module.segment(images)`` on
    ``task_dataloader("segmentation", split)``.

    - **mask mAP**: ``torchmetrics.detection.MeanAveragePrecision(iou_type="segm")``
      against the batch's instance ``"masks"`` / ``"labels"``; logs ``eval/<name>_map`` and
      ``eval/<name>_map_50`` (%).
    - **semantic mIoU** (``eval/<name>_miou``, %; ``miou=False`` turns it off): each image's
      instances are painted into a class map (background = its own class): the ground truth
      in list order (a later instance covers an earlier one), the predictions with
      ``score >= semantic_score_threshold`` in increasing score (the most confident one
      on top). A confusion matrix over all pixels of the split
      (``torchmetrics.functional.classification.multiclass_confusion_matrix``) gives each
      class's IoU = TP / (TP + FP + FN); mIoU is their mean over the *object* classes whose
      union is non-empty (background pixels count as errors of the object classes but
      background is not itself averaged; a class absent from both prediction and ground
      truth is left out, like mmsegmentation's nan-mean).
    """

    task = "segmentation"
    model_protocols = (InstanceSegmenter,)

    def __init__(
        self,
        split: str = "val",
        max_batches: int | None = None,
        miou: bool = True,
        semantic_score_threshold: float = 0.5,
        name: str | None = None,
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(split, max_batches, name, every_n_epochs)
        self.miou = miou
        self.semantic_score_threshold = semantic_score_threshold

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(iou_type="segm")
        confusion = torch.zeros(0, 0, dtype=torch.long)
        images = objects = 0
        who = f"{type(pl_module).__name__}.segment"
        for batch, preds in self._predictions(trainer, pl_module, "segment"):
            size = tuple(batch["image"].shape[-2:])
            targets = [
                {
                    "masks": torch.as_tensor(m).bool(),
                    "labels": torch.as_tensor(y).long().reshape(-1),
                }
                for m, y in zip(
                    self._field(batch, "masks", datamodule),
                    self._field(batch, "labels", datamodule),
                    strict=True,
                )
            ]
            outs = [_checked(p, ("masks", "scores", "labels"), who) for p in preds]
            for out in outs:
                out["masks"] = out["masks"].bool().reshape(-1, *size)
                out["scores"], out["labels"] = out["scores"].float(), out["labels"].long()
            metric.update(outs, targets)
            if self.miou:
                confusion = _add_confusion(confusion, outs, targets, self.semantic_score_threshold)
            images += len(preds)
            objects += sum(len(t["labels"]) for t in targets)
        if images == 0:
            return self._skip(f"the {self.split} segmentation loader yielded no images")
        maps = _map_summary(metric)
        if maps is None:
            return self._skip(f"no ground-truth mask in the {self.split} split")
        ap, ap50 = maps
        metrics = {f"{self.name}_map": ap, f"{self.name}_map_50": ap50}
        summary = f"{self.name} mask mAP: {ap:.2f}% (mAP@50 {ap50:.2f}%"
        if self.miou:
            metrics[f"{self.name}_miou"] = miou = _mean_iou(confusion)
            summary += f", semantic mIoU {miou:.2f}%"
        summary += f") on {images} {self.split} images, {objects} objects"
        return metrics, summary


def _semantic(masks: Tensor, labels: Tensor, order: Tensor, size: tuple[int, ...]) -> Tensor:
    """``(H, W)`` class map: 0 = background, ``label + 1`` where an instance covers the
    pixel; where instances overlap, the one with the largest ``order`` wins."""
    if len(labels) == 0:
        return torch.zeros(size, dtype=torch.long)
    rank = torch.empty_like(order, dtype=torch.long)
    rank[order.argsort(stable=True)] = torch.arange(1, len(order) + 1)
    top = (masks.long() * rank[:, None, None]).argmax(0)  # the covering instance ranked last
    return torch.where(masks.any(0), labels[top] + 1, 0)


def _add_confusion(
    confusion: Tensor,
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    threshold: float,
) -> Tensor:
    """``confusion`` (``(K, K)``, rows = true class) plus this batch's pixels, grown to the
    largest class id seen so far."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    true, pred = [], []
    for p, t in zip(preds, targets, strict=True):
        size = tuple(t["masks"].shape[-2:])
        keep = p["scores"] >= threshold
        pred.append(_semantic(p["masks"][keep], p["labels"][keep], p["scores"][keep], size))
        true.append(_semantic(t["masks"], t["labels"], torch.arange(len(t["labels"])), size))
    true_map, pred_map = torch.stack(true).flatten(), torch.stack(pred).flatten()
    k = max(len(confusion), int(true_map.max()) + 1, int(pred_map.max()) + 1, 2)
    batch = multiclass_confusion_matrix(pred_map, true_map, num_classes=k, validate_args=False)
    grown = torch.zeros(k, k, dtype=torch.long)
    grown[: len(confusion), : len(confusion)] = confusion
    return grown + batch.long()


def _mean_iou(confusion: Tensor) -> float:
    """Mean IoU (%) over the object classes (not background, index 0) with a non-empty
    union; 0 when there is none."""
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    present = union[1:] > 0
    if not bool(present.any()):
        return 0.0
    return 100.0 * float((tp[1:][present] / union[1:][present]).mean())


class CaptionEval(_TaskEval):
    """Corpus BLEU-4 and CIDEr-D of ``module.caption(images)`` against the batch's raw
    reference ``"captions"`` (:func:`zoo.eval.caption_metrics.caption_scores`: its
    tokenisation, BLEU without smoothing, CIDEr-D's IDF from this split's references).

    Logs ``eval/<name>_bleu4`` (×100: 100 when every caption equals one of its references)
    and ``eval/<name>_cider_d`` (×100, the scale COCO captioning papers report).
    """

    task = "caption"
    model_protocols = (CaptionGenerator,)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        from zoo.eval.caption_metrics import caption_scores

        hypotheses: list[str] = []
        references: list[list[str]] = []
        for batch, captions in self._predictions(trainer, pl_module, "caption"):
            refs = self._field(batch, "captions", datamodule)
            if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
                raise ValueError(
                    f"{type(pl_module).__name__}.caption must return one string per image"
                )
            hypotheses += list(captions)
            references += [list(r) for r in refs]
        if not hypotheses:
            return self._skip(f"the {self.split} caption loader yielded no images")
        scores = caption_scores(hypotheses, references)
        bleu4, cider = 100.0 * scores["bleu4"], 100.0 * scores["cider_d"]
        summary = (
            f"{self.name} BLEU-4: {bleu4:.2f}, CIDEr-D: {cider:.2f} on {len(hypotheses)} "
            f"{self.split} images"
        )
        return {f"{self.name}_bleu4": bleu4, f"{self.name}_cider_d": cider}, summary


class CaptionRetrievalEval(_TaskEval):
    """Zero-shot image↔caption retrieval on ``task_dataloader("caption", split)``, for a
    backbone with a text tower (CLIP-style).

    Images are embedded with ``features(images, kind="embed")``, every raw reference caption
    of the batch's ``"captions"`` is tokenised with the datamodule's tokenizer
    (:func:`zoo.protocols.data_tokenizer`) and embedded with ``text_features(tokens)``; an
    image may have any number of captions. Recall is
    :func:`zoo.eval.retrieval.retrieval_recall` (the same code as
    :class:`zoo.eval.callbacks.RetrievalEval`). Logs ``eval/<name>_i2t_r{k}`` and
    ``eval/<name>_t2i_r{k}`` (%; ``name`` defaults to ``"caption_retrieval"``). Skipped
    with a warning when the datamodule has no tokenizer.
    """

    task = "caption"
    model_protocols = (ImageFeatures, TextFeatures)

    def __init__(
        self,
        split: str = "val",
        ks: Sequence[int] = (1, 5, 10),
        text_batch_size: int = 256,
        max_batches: int | None = None,
        name: str | None = "caption_retrieval",
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(split, max_batches, name, every_n_epochs)
        self.ks = tuple(ks)
        self.text_batch_size = text_batch_size

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        from zoo.eval.features import encode_batched
        from zoo.eval.retrieval import retrieval_recall

        tokenizer = data_tokenizer(datamodule)
        if tokenizer is None:
            return self._skip(
                f"the datamodule ({type(datamodule).__name__}) has no tokenizer (neither "
                "`tokenizer` nor `preprocess.tokenizer`) for the captions"
            )
        features = pl_module.features  # type: ignore[attr-defined]
        images: list[Tensor] = []
        texts: list[str] = []
        owner: list[int] = []
        for batch, embedded in self._predictions(
            trainer, pl_module, "features", lambda x: features(x, kind="embed")
        ):
            refs = self._field(batch, "captions", datamodule)
            start = sum(len(e) for e in images)  # index of this batch's first image
            owner += [start + i for i, r in enumerate(refs) for _ in r]
            texts += [c for r in refs for c in r]
            images.append(embedded.float().cpu())
        if not images:
            return self._skip(f"the {self.split} caption loader yielded no images")
        image = torch.cat(images)
        with self._encoding(trainer):
            text = encode_batched(
                pl_module.text_features,  # type: ignore[attr-defined]
                tokenizer(texts),
                pl_module.device,
                self.text_batch_size,
                model=pl_module,
            )
        rec = retrieval_recall(image, text, torch.tensor(owner), self.ks)
        ks = "/".join(str(k) for k in self.ks)
        i2t = "/".join(f"{rec[f'i2t_r{k}']:.2f}" for k in self.ks)
        t2i = "/".join(f"{rec[f't2i_r{k}']:.2f}" for k in self.ks)
        summary = (
            f"{self.name} R@{ks}: image→text {i2t}%, text→image {t2i}% on {len(image)} "
            f"{self.split} images, {len(texts)} captions"
        )
        return {f"{self.name}_{n}": v for n, v in rec.items()}, summary
