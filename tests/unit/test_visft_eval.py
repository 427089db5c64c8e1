"""ViSFT evaluation callbacks (zoo.eval.visft) on hand-set predictions.

The fake module answers the protocol methods from a table: image ``i`` carries ``i`` in
pixel ``[2, 0, 0]`` and the module returns the prediction the test wrote for it. Expected
values are computed by hand in each test; mAP is COCO's (pycocotools through torchmetrics):
AP per IoU threshold 0.50:0.05:0.95 is the mean over 101 recall points r = 0, 0.01, …, 1 of
the best precision at recall >= r (0 where that recall is never reached).
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from zoo.eval import (
    CaptionEval,
    CaptionRetrievalEval,
    DetectionEval,
    QuestionProbeEval,
    SegmentationEval,
)
from zoo.eval.visft import _mean_iou, _semantic

H, W = 24, 32  # not square: a swapped width / height in the box conversion would show

# Two objects of image 0 and one of image 1, as x1 y1 x2 y2 pixels and as the datamodule's
# cx cy w h / (W, H), written out by hand.
XYXY = {0: [[4.0, 6.0, 12.0, 18.0], [20.0, 2.0, 30.0, 10.0]], 1: [[8.0, 8.0, 16.0, 16.0]]}
CXCYWH = {
    0: [[0.25, 0.5, 0.25, 0.5], [25 / 32, 0.25, 10 / 32, 8 / 24]],
    1: [[0.375, 0.5, 0.25, 1 / 3]],
}
LABELS = {0: [0, 1], 1: [0]}


def _images(indices: list[int], codes: Tensor | None = None) -> Tensor:
    """Images whose pixel [2, 0, 0] is their index; ``codes`` (one-hot answers, × 5) go in
    row 0 of channel 0, where the fake module's features read them."""
    g = torch.Generator().manual_seed(len(indices))
    x = torch.rand(len(indices), 3, H, W, generator=g)
    x[:, 2, 0, 0] = torch.tensor(indices, dtype=torch.float32)
    if codes is not None:
        x[:, 0, 0, :] = 0.0
        x[:, 0, 0, : codes.shape[1]] = 5.0 * codes
    return x


def _box_mask(box: list[float]) -> Tensor:
    x1, y1, x2, y2 = (int(v) for v in box)
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _task_batch(indices: list[int]) -> dict:
    """A detection / segmentation batch in the training format (+ image_id)."""
    return {
        "image": _images(indices),
        "boxes": [torch.tensor(CXCYWH[i]) for i in indices],
        "labels": [torch.tensor(LABELS[i]) for i in indices],
        "masks": [torch.stack([_box_mask(b) for b in XYXY[i]]) for i in indices],
        "image_id": torch.tensor(indices),
    }


# No word is shared between the two images' references: every CIDEr-D IDF is log 2.
CAPTIONS = {
    0: ["the small red cube left", "one red cube on the left"],
    1: ["a big blue ball above"],
}


class _Data(L.LightningDataModule):
    """Task batches (one image per batch: a ``max_batches`` limit is visible) and probe
    questions: ``questions[(split, question)] = (codes, labels)``."""

    question_splits = ("train", "test_ood")

    def __init__(self, questions: dict | None = None, tokenizer=None) -> None:
        super().__init__()
        self.questions = questions or {}
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"x": torch.ones(2, 1)}] * 2, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()

    def task_dataloader(self, task: str, split: str) -> DataLoader:
        assert split == "val"
        if task == "caption":
            batches = [
                {
                    "image": _images([i], _one_hot([i], 4)),
                    "captions": [CAPTIONS[i]],
                    "image_id": torch.tensor([i]),
                }
                for i in (0, 1)
            ]
        else:
            batches = [_task_batch([0]), _task_batch([1])]
        return DataLoader(batches, batch_size=None)

    def question_dataloader(self, split: str, question: str) -> DataLoader:
        if (split, question) not in self.questions:  # as the ViSFT datamodule does
            raise ValueError(f"questions_{split}.json holds no {question!r} question")
        codes, labels = self.questions[(split, question)]
        images = _images(list(range(len(labels))), codes)
        rows = [{"image": im, "label": torch.tensor(y)} for im, y in zip(images, labels)]
        return DataLoader(rows, batch_size=4)


class _Base(L.LightningModule):
    """Trainable enough to fit; ``features`` reads the code row (or is constant)."""

    def __init__(self, constant_features: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.constant_features = constant_features

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return ((batch["x"] * self.weight - 1.0) ** 2).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _check_call(self) -> None:  # the callbacks call the protocols frozen, in eval mode
        assert not self.training and not torch.is_grad_enabled()

    def features(self, images: Tensor, kind: str = "embed") -> Tensor:
        self._check_call()
        if self.constant_features:
            return torch.ones(len(images), 4)
        return images[:, 0, 0, :4]


class _Oracle(_Base):
    """Returns the hand-set prediction of each image (by the index in its pixel)."""

    def __init__(self, detections=None, segments=None, captions=None, text=None, **kw) -> None:
        super().__init__(**kw)
        self.detections, self.segments, self.captions, self.text = (
            detections,
            segments,
            captions,
            text,
        )

    def _index(self, images: Tensor) -> list[int]:
        self._check_call()
        return images[:, 2, 0, 0].round().long().tolist()

    def detect(self, images: Tensor) -> list[dict]:
        return [self.detections[i] for i in self._index(images)]

    def segment(self, images: Tensor) -> list[dict]:
        return [self.segments[i] for i in self._index(images)]

    def caption(self, images: Tensor) -> list[str]:
        return [self.captions[i] for i in self._index(images)]

    def text_features(self, tokens: Tensor) -> Tensor:
        return self.text[tokens[:, 0]]


def _run(callback, module, data=None) -> dict[str, float]:
    """The callback's metrics after ``trainer.validate`` (it runs there once)."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(num_workers|batch_size|small).*")
        trainer.validate(module, datamodule=data if data is not None else _Data(), verbose=False)
    return callback.results


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


# ---------------------------------------------------------------------------- detection
def test_detection_exact_boxes_score_100_and_missed_boxes_0() -> None:
    exact = {i: _dets(XYXY[i], [1.0] * len(XYXY[i]), LABELS[i]) for i in (0, 1)}
    res = _run(DetectionEval(), _Oracle(detections=exact))
    assert res == {"eval/detection_map": 100.0, "eval/detection_map_50": 100.0}
    # shifted by the image width: no overlap with any object (same labels, same scores)
    off = {
        i: _dets(
            [[x1 + W, y1, x2 + W, y2] for x1, y1, x2, y2 in XYXY[i]],
            [1.0] * len(XYXY[i]),
            LABELS[i],
        )
        for i in (0, 1)
    }
    res = _run(DetectionEval(), _Oracle(detections=off))
    assert res == {"eval/detection_map": 0.0, "eval/detection_map_50": 0.0}


def test_detection_one_of_two_objects_found_hand_value_and_max_batches() -> None:
    """Class 0 has two objects (image 0's first, image 1's); image 0's class-1 object is
    found exactly. Class 0: the exact box (score 0.9) is a hit, a box beside image 1's
    object (score 0.8) a miss: recall 1/2 at precision 1, then precision 1/2. The 101-point
    AP reaches recall r <= 0.5 (51 points: 0, 0.01, …, 0.50) at precision 1 and never
    r > 0.5: AP = 51/101 at every IoU threshold. Class 1: AP 1. mAP = (51/101 + 1) / 2."""
    preds = {
        0: _dets(XYXY[0], [0.9, 0.7], LABELS[0]),
        1: _dets([[17.0, 8.0, 25.0, 16.0]], [0.8], [0]),  # IoU 0 with [8, 8, 16, 16]
    }
    res = _run(DetectionEval(), _Oracle(detections=preds))
    expected = 100.0 * (51 / 101 + 1.0) / 2
    assert res["eval/detection_map"] == pytest.approx(expected, abs=1e-4)
    assert res["eval/detection_map_50"] == pytest.approx(expected, abs=1e-4)
    # max_batches=1 scores image 0 only, where every object is found
    res = _run(DetectionEval(max_batches=1, name="det_first"), _Oracle(detections=preds))
    assert res == {"eval/det_first_map": 100.0, "eval/det_first_map_50": 100.0}


# ---------------------------------------------------------------------------- segmentation
def _segs(masks: list[Tensor], scores: list[float], labels: list[int]) -> dict:
    return {
        "masks": torch.stack(masks).bool() if masks else torch.zeros(0, H, W, dtype=torch.bool),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def test_segmentation_exact_masks_100_and_empty_masks_0() -> None:
    exact = {
        i: _segs([_box_mask(b) for b in XYXY[i]], [1.0] * len(XYXY[i]), LABELS[i]) for i in (0, 1)
    }
    res = _run(SegmentationEval(), _Oracle(segments=exact))
    assert res == {
        "eval/segmentation_map": 100.0,
        "eval/segmentation_map_50": 100.0,
        "eval/segmentation_miou": 100.0,
    }
    empty = {
        i: _segs([torch.zeros(H, W)] * len(XYXY[i]), [1.0] * len(XYXY[i]), LABELS[i])
        for i in (0, 1)
    }
    res = _run(SegmentationEval(), _Oracle(segments=empty))
    assert res == {
        "eval/segmentation_map": 0.0,
        "eval/segmentation_map_50": 0.0,
        "eval/segmentation_miou": 0.0,
    }


def test_segmentation_miou_hand_value_with_score_threshold() -> None:
    """Ground truth: class 0 is image 0's 8 × 12 = 96 pixels and image 1's 8 × 8 = 64;
    class 1 is image 0's 10 × 8 = 80. Predictions: image 0 exact; image 1's class-0 mask
    shifted right by 4 columns (32 of its 64 pixels right, 32 wrong), plus a whole-image
    class-1 mask at score 0.3, under the 0.5 threshold, hence not painted.
    Class 0: TP 96 + 32, FP 32, FN 32 → IoU 128 / 192; class 1: IoU 1. mIoU = the mean."""
    shifted = _box_mask([12.0, 8.0, 20.0, 16.0])
    preds = {
        0: _segs([_box_mask(b) for b in XYXY[0]], [0.9, 0.9], LABELS[0]),
        1: _segs([shifted, torch.ones(H, W)], [0.9, 0.3], [0, 1]),
    }
    res = _run(SegmentationEval(), _Oracle(segments=preds))
    assert res["eval/segmentation_miou"] == pytest.approx(100.0 * (128 / 192 + 1.0) / 2)
    # with every prediction painted, class 1 also gets image 1's 768 pixels wrong, and the
    # shifted class-0 mask (score 0.9) lies on top of the class-1 one (score 0.3)
    res = _run(SegmentationEval(semantic_score_threshold=0.0), _Oracle(segments=preds))
    class1 = 80 / (80 + H * W - 64)  # image 1: every pixel but the shifted 64 painted 1
    assert res["eval/segmentation_miou"] == pytest.approx(100.0 * (128 / 192 + class1) / 2)


def test_semantic_map_puts_the_higher_score_on_top() -> None:
    masks = torch.zeros(2, 1, 3, dtype=torch.bool)
    masks[0, 0, :2] = True  # label 4, score 0.6
    masks[1, 0, 1:] = True  # label 7, score 0.9: wins the shared pixel
    out = _semantic(masks, torch.tensor([4, 7]), torch.tensor([0.6, 0.9]), (1, 3))
    assert out.tolist() == [[5, 8, 8]]


def test_miou_leaves_out_background_and_classes_absent_everywhere() -> None:
    # rows: true background, class 0 (never present nor predicted), class 1
    confusion = torch.tensor([[5, 0, 1], [0, 0, 0], [2, 0, 3]])
    assert _mean_iou(confusion) == pytest.approx(100.0 * 3 / 6)  # class 1: 3 / (3 + 1 + 2)


# ---------------------------------------------------------------------------- captions
def test_caption_verbatim_references_and_hand_case() -> None:
    verbatim = {0: CAPTIONS[0][1], 1: CAPTIONS[1][0]}
    res = _run(CaptionEval(), _Oracle(captions=verbatim))
    assert res["eval/caption_bleu4"] == pytest.approx(100.0)
    # Image 1's caption misses its last word. Corpus BLEU-4 (image 0 matches its first
    # reference exactly, 5 words): clipped n-gram precisions (5+4)/10, (4+3)/8, (3+2)/6,
    # (2+1)/4, brevity penalty 1 (10 words against 10).
    hand = {0: CAPTIONS[0][0], 1: "a big blue ball right"}
    res = _run(CaptionEval(), _Oracle(captions=hand))
    bleu = (9 / 10 * 7 / 8 * 5 / 6 * 3 / 4) ** 0.25
    assert res["eval/caption_bleu4"] == pytest.approx(100.0 * bleu, abs=1e-4)
    # CIDEr-D (×10 per image, ×100 reported). Every IDF is log 2 and every n-gram occurs
    # once per caption, so each n-gram cosine is #shared / sqrt(#hyp · #ref). Image 0's
    # caption is its first reference (cosine 1 for every n); against its second, one word
    # longer (length penalty exp(-1 / 72)), it shares the unigrams the / red / cube / left
    # (4 of 5 and 6) and the bigram "red cube" (1 of 4 and 5), no 3- or 4-gram. Image 1
    # shares 4/5, 3/4, 2/3, 1/2 of its n-grams with its single reference, same length.
    second = math.exp(-1 / 72) * (4 / math.sqrt(5 * 6) + 1 / math.sqrt(4 * 5) + 0 + 0) / 4
    image0 = 10 * (1.0 + second) / 2
    image1 = 10 * (4 / 5 + 3 / 4 + 2 / 3 + 1 / 2) / 4
    assert res["eval/caption_cider_d"] == pytest.approx(100.0 * (image0 + image1) / 2, rel=1e-6)


# ---------------------------------------------------------------------------- question probe
def _one_hot(labels: list[int], k: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), k).float()


COUNT_FIT = [0] * 15 + [1] * 9 + [2] * 6  # majority 0
COUNT_TEST = [0, 0, 1, 1, 1, 1, 1, 2]  # majority 1: 2 of 8 are 0
LR_FIT = [0] * 12 + [1] * 8
LR_TEST = [1, 1, 1, 0]


def _questions() -> dict:
    return {
        ("train", "count"): (_one_hot(COUNT_FIT, 3), COUNT_FIT),
        ("test_ood", "count"): (_one_hot(COUNT_TEST, 3), COUNT_TEST),
        ("train", "left_right"): (_one_hot(LR_FIT, 2), LR_FIT),
        ("test_ood", "left_right"): (_one_hot(LR_TEST, 2), LR_TEST),
    }


def test_probe_linear_code_gives_100_and_constant_features_the_majority_rate() -> None:
    res = _run(QuestionProbeEval(), _Base(), _Data(_questions()))
    assert res["eval/probe_count_top1"] == 100.0 and res["eval/probe_left_right_top1"] == 100.0
    # Constant features: the probe predicts the fit split's majority answer (0 for both),
    # right on 2 of 8 "count" and 1 of 4 "left_right" test images.
    res = _run(QuestionProbeEval(), _Base(constant_features=True), _Data(_questions()))
    assert res["eval/probe_count_top1"] == pytest.approx(100.0 * 2 / 8)
    assert res["eval/probe_left_right_top1"] == pytest.approx(100.0 * 1 / 4)


@pytest.mark.parametrize("left_right_val", ["absent", "empty"])
def test_probe_picks_c_on_the_val_split_when_it_has_the_question(left_right_val: str) -> None:
    """Val images of "count" show answer 1 but are labelled 0 (the fit majority): only the
    most regularised probe (C = 1e-4, which predicts the majority) is right there, so C is
    1e-4 and the test top-1 drops to the majority rate. "left_right" has no val images (the
    datamodule raises, or the loader is empty): C is picked on the held-out part of the fit
    split, with a warning."""
    questions = {**_questions(), ("val", "count"): (_one_hot([1] * 6, 3), [0] * 6)}
    if left_right_val == "empty":
        questions["val", "left_right"] = (torch.zeros(0, 2), [])
    data = _Data(questions)
    held_out = _run(QuestionProbeEval(), _Base(), data)
    assert held_out["eval/probe_count_C"] > 1e-4
    with pytest.warns(UserWarning, match="no 'left_right' question.*picked on 0.2 of the train"):
        res = _run(QuestionProbeEval(val_split="val"), _Base(), data)
    assert res["eval/probe_count_C"] == 1e-4
    assert res["eval/probe_count_top1"] == pytest.approx(100.0 * 2 / 8)
    assert res["eval/probe_left_right_C"] == held_out["eval/probe_left_right_C"]


# ---------------------------------------------------------------------------- retrieval
class _CaptionIds:
    """Tokenizer stand-in: a caption → the id of the image it was written for."""

    def __call__(self, texts: list[str]) -> Tensor:
        ids = {c: i for i, refs in CAPTIONS.items() for c in refs}
        return torch.tensor([[ids[t], 0] for t in texts])


def test_caption_retrieval_recall_hand_case() -> None:
    """Image i embeds as e_i (its code row). Image 0's two captions embed as e_0, image 1's
    as e_0 + e_1 / 2 (cosine 0.89 with image 0, 0.45 with image 1). Text→image R@1: the
    first two captions find image 0, the third finds image 0 too, a miss: 2/3. Image→text
    R@1: image 0's best captions are its own (cosine 1), image 1's best is its own (0.45
    against 0): 100 %."""
    text = torch.stack([_one_hot([0], 4)[0], _one_hot([0], 4)[0] + 0.5 * _one_hot([1], 4)[0]])
    res = _run(CaptionRetrievalEval(ks=(1,)), _Oracle(text=text), _Data(tokenizer=_CaptionIds()))
    assert res == {
        "eval/caption_retrieval_i2t_r1": pytest.approx(100.0),
        "eval/caption_retrieval_t2i_r1": pytest.approx(100.0 * 2 / 3),
    }
    with pytest.warns(UserWarning, match="has no tokenizer"):
        assert _run(CaptionRetrievalEval(), _Oracle(text=text)) == {}


# ---------------------------------------------------------------------------- skipping, fit
class _NoQuestions(_Data):
    question_dataloader = None  # a datamodule without the probe questions


def test_module_without_detect_is_skipped_naming_the_method() -> None:
    with pytest.warns(UserWarning, match=r"DetectionEval skipped: .*`detect\(images\)`"):
        res = _run(DetectionEval(), _Base())
    assert res == {}
    with pytest.warns(UserWarning, match=r"`question_dataloader\(split, question\)`"):
        _run(QuestionProbeEval(), _Base(), _NoQuestions())


def test_callbacks_in_trainer_fit_publish_metrics(tmp_path, capsys) -> None:
    exact = {i: _dets(XYXY[i], [1.0] * len(XYXY[i]), LABELS[i]) for i in (0, 1)}
    masks = {
        i: _segs([_box_mask(b) for b in XYXY[i]], [1.0] * len(XYXY[i]), LABELS[i]) for i in (0, 1)
    }
    module = _Oracle(
        detections=exact, segments=masks, captions={0: CAPTIONS[0][0], 1: CAPTIONS[1][0]}
    )
    callbacks = [QuestionProbeEval(), DetectionEval(), SegmentationEval(), CaptionEval()]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's few-workers / small-batch hints
        trainer.fit(module, datamodule=_Data(_questions()))
    assert module.training  # the callbacks restored training mode
    expected = {
        "eval/probe_count_top1": 100.0,
        "eval/probe_left_right_top1": 100.0,
        "eval/detection_map": 100.0,
        "eval/detection_map_50": 100.0,
        "eval/segmentation_map": 100.0,
        "eval/segmentation_miou": 100.0,
        "eval/caption_bleu4": 100.0,
    }
    for key, value in expected.items():
        assert float(trainer.callback_metrics[key]) == pytest.approx(value), key
    out = capsys.readouterr().out
    assert "detection box mAP: 100.00% (mAP@50 100.00%) on 2 val images, 3 objects" in out
    assert "question probes (trunk) top-1, fitted on train, scored on test_ood:" in out
