"""Evaluation protocols: zero-shot, linear probe, kNN and retrieval, as functions and callbacks.

ViSFT's out-of-domain question probes and in-domain task metrics (box / mask mAP, mIoU,
BLEU-4 / CIDEr-D, caption retrieval) are the callbacks of :mod:`zoo.eval.visft`.

Functions work on frozen features (``extract_features``); the callbacks in
:mod:`zoo.eval.callbacks` run them on a datamodule's ``eval_dataloader`` splits, asking the
module through the protocols of :mod:`zoo.protocols` (``features``, ``class_weights``,
``text_features``).
"""

from zoo.eval.callbacks import EvalCallback, KNNEval, LinearProbeEval, RetrievalEval, ZeroShotEval
from zoo.eval.features import encode_batched, encode_text_batched, eval_mode, extract_features
from zoo.eval.knn import knn_accuracy, knn_classify
from zoo.eval.linear_probe import DEFAULT_CS, linear_probe
from zoo.eval.retrieval import retrieval_recall, retrieval_recall_from_similarity
from zoo.eval.visft import (
    CaptionEval,
    CaptionRetrievalEval,
    DetectionEval,
    QuestionProbeEval,
    SegmentationEval,
)
from zoo.eval.zeroshot import (
    template_ensemble,
    topk_accuracy,
    zeroshot_accuracy,
    zeroshot_classifier,
    zeroshot_logits,
)

__all__ = [
    "DEFAULT_CS",
    "CaptionEval",
    "CaptionRetrievalEval",
    "DetectionEval",
    "EvalCallback",
    "KNNEval",
    "LinearProbeEval",
    "QuestionProbeEval",
    "RetrievalEval",
    "SegmentationEval",
    "ZeroShotEval",
    "encode_batched",
    "encode_text_batched",
    "eval_mode",
    "extract_features",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "retrieval_recall",
    "retrieval_recall_from_similarity",
    "template_ensemble",
    "topk_accuracy",
    "zeroshot_accuracy",
    "zeroshot_classifier",
    "zeroshot_logits",
]
