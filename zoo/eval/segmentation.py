"""Zero-shot semantic segmentation of GroupViT-style models, scored by mIoU.

- :func:`groupvit_class_map`: GroupViT's group-to-text assignment (official
  ``segmentation/evaluation/group_vit_seg.py``, ``GroupViTSegInference.encode_decode``),
  vectorised over the batch: each pixel takes its argmax group; group g's class scores are
  ``softmax(s·ĝ·t̂ᵀ)`` restricted to the image's top-5 classes by pooled affinity
  (renormalised) times the unrestricted softmax; a pixel is background (class 0) when its
  best score is below ``min(bg_thresh, the image's best group score)``, else its class + 1.
- :class:`SegmentationFolder`: image + label-mask pairs in the PASCAL VOC layout
  (``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
  ``ImageSets/Segmentation/<split>.txt``) or the digit mosaics' (``images/<split>/*.png`` +
  ``masks/<split>/*.png``); masks hold class indices, 0 background, 255 ignored.
- :func:`mean_iou`: torchmetrics ``MulticlassJaccardIndex`` (``ignore_index=255``, macro
  average over the classes present in the prediction or the ground truth, as
  mmsegmentation's nan-mean).
- :class:`ZeroShotSegmentationEval`: the callback; logs ``eval/<name>_miou`` (default name
  ``zeroshot_seg``, in %).

Inference is "whole image" at the evaluation size (``image_size`` short side, or the
mosaics' own 32 px in the tiny recipe); GroupViT's VOC protocol uses a sliding window
(448 crop, stride 224) at scale (2048, 448), not implemented here: the paper-scale recipes
evaluate whole images resized to a 448 short side, which is documented there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from zoo.eval.callbacks import EvalCallback
from zoo.protocols import data_tokenizer

IGNORE_INDEX = 255


def groupvit_class_map(
    pixel_groups: Tensor,
    group_embeddings: Tensor,
    image_embeddings: Tensor,
    class_embeddings: Tensor,
    logit_scale: Tensor | float,
    bg_thresh: float = 0.95,
    with_background: bool = True,
    topk: int = 5,
) -> Tensor:
    """(B, H, W) long class map (see the module docstring).

    ``pixel_groups`` (B, H, W, G): soft pixel→group assignment; ``group_embeddings``
    (B, G, D), ``image_embeddings`` (B, D) and ``class_embeddings`` (N, D): L2-normalised.
    """
    s = torch.as_tensor(logit_scale, dtype=group_embeddings.dtype).reshape(())
    num_classes = class_embeddings.shape[0]
    group_aff = s * group_embeddings @ class_embeddings.T  # (B, G, N)
    pre = group_aff.softmax(dim=-1)
    avg = (s * image_embeddings @ class_embeddings.T).softmax(dim=-1)  # (B, N)
    keep = torch.zeros_like(avg, dtype=torch.bool)
    keep.scatter_(1, avg.topk(min(topk, num_classes), dim=-1).indices, True)
    group_aff = group_aff.masked_fill(~keep.unsqueeze(1), float("-inf")).softmax(dim=-1) * pre
    best_group = pixel_groups.argmax(dim=-1)  # (B, H, W)
    b, h, w = best_group.shape
    scores = group_aff.gather(1, best_group.view(b, h * w, 1).expand(-1, -1, num_classes))
    top, label = scores.max(dim=-1)  # (B, H*W)
    if not with_background:
        return label.view(b, h, w)
    thresh = group_aff.flatten(1).amax(dim=1).clamp(max=bg_thresh).view(b, 1)
    return torch.where(top < thresh, 0, label + 1).view(b, h, w)


def mean_iou(
    preds: Iterable[Tensor], targets: Iterable[Tensor], num_classes: int
) -> tuple[float, Tensor]:
    """``(mIoU in %, per-class IoU)`` over all pixels of the pairs (255 in a target is
    ignored); classes absent from both predictions and targets are left out of the mean."""
    from torchmetrics.classification import MulticlassJaccardIndex

    per_class = MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="none")
    macro = MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="macro")
    for p, t in zip(preds, targets, strict=True):
        p, t = p.reshape(-1).long().cpu(), t.reshape(-1).long().cpu()
        per_class.update(p, t)
        macro.update(p, t)
    return 100.0 * float(macro.compute()), per_class.compute()


class SegmentationFolder(Dataset):
    """Image + label-mask pairs read from a folder (``layout``: ``voc`` or ``mosaics``; see
    the module docstring). Items: ``{"image": (3, H, W) float, "mask": (H, W) long}``;
    ``transform`` maps the PIL image to a tensor (the model's eval transform without a crop:
    masks keep the image's size and predictions are resized to them). With ``size``, the
    image (bilinear) and mask (nearest) are resized so their shorter side is ``size``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        layout: str = "voc",
        transform: Any = None,
        size: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation data folder not found: {self.root}")
        if layout == "voc":
            ids_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not ids_file.is_file():
                raise FileNotFoundError(f"VOC split list not found: {ids_file}")
            ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
            self.pairs = [
                (
                    self.root / "JPEGImages" / f"{i}.jpg",
                    self.root / "SegmentationClass" / f"{i}.png",
                )
                for i in ids
            ]
        elif layout == "mosaics":
            masks = sorted((self.root / "masks" / split).glob("*.png"))
            if not masks:
                raise FileNotFoundError(f"no label masks in {self.root / 'masks' / split}")
            self.pairs = [(self.root / "images" / split / m.name, m) for m in masks]
        else:
            raise ValueError(f"unknown segmentation layout {layout!r}; expected voc or mosaics")
        for image, mask in self.pairs[:1]:
            for path in (image, mask):
                if not path.is_file():
                    raise FileNotFoundError(f"{layout} {split}: missing {path}")
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from PIL import Image

        image_path, mask_path = self.pairs[index]
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(mask_path)
        if mask.mode == "P":  # VOC's palette PNGs: the palette index is the class
            mask = Image.fromarray(np.asarray(mask))
        if self.size is not None:
            w, h = image.size
            scale = self.size / min(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = image.resize(new, Image.BILINEAR)
            mask = mask.resize(new, Image.NEAREST)
        if self.transform is not None:
            x = self.transform(image)
        else:
            x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        return {"image": x, "mask": torch.from_numpy(np.asarray(mask).astype(np.int64))}


class ZeroShotSegmentationEval(EvalCallback):
    """Zero-shot semantic segmentation mIoU (``eval/<name>_miou``, %).

    Asks the datamodule for ``task_dataloader("segmentation", split)`` (batches of
    ``image`` / ``mask``), ``segmentation_classnames`` (the foreground classes; mask value
    c + 1 is class c, 0 background) and ``templates``; the module for ``class_weights`` and
    ``semantic_segmentation(images, class_weights, bg_thresh)``. Scored over
    ``len(classnames) + 1`` classes (background included) with 255 ignored.

    ``bg_thresh``: one value (GroupViT's per-dataset constant, e.g. 0.95 on VOC), or a list
    of candidates with ``select_split``: each is scored on that held-out split, the best
    mIoU's threshold is used on ``split`` and logged as ``eval/<name>_bg_thresh`` (a model
    whose class scores are flatter than the constant assumes, a small one trained briefly,
    would otherwise label almost every pixel background, and picking the threshold on the
    test split would tune on it).
    """

    model_protocols = ()
    data_protocols = ()

    def __init__(
        self,
        split: str = "test",
        bg_thresh: float | list[float] = 0.95,
        name: str = "zeroshot_seg",
        max_batches: int | None = None,
        every_n_epochs: int = 0,
        select_split: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        self.split, self.bg_thresh, self.name, self.max_batches = (
            split,
            bg_thresh,
            name,
            max_batches,
        )
        candidates = [float(t) for t in bg_thresh] if isinstance(bg_thresh, list) else None
        if candidates is not None and (not candidates or select_split is None):
            raise ValueError(
                "ZeroShotSegmentationEval: a list of bg_thresh candidates needs select_split "
                "(a held-out split to choose on, not the evaluated one)"
            )
        if select_split is not None and select_split == split:
            raise ValueError(f"select_split must differ from split ({split!r})")
        self.candidates, self.select_split = candidates, select_split

    def check_data(self, trainer: pl.Trainer) -> None:
        """Open the evaluated split and the one the threshold is chosen on at fit start, so
        a missing folder or split list fails before training, named."""
        datamodule = trainer.datamodule
        for split in dict.fromkeys(s for s in (self.split, self.select_split) if s):
            datamodule.task_dataloader("segmentation", split)

    def unavailable(self, pl_module: Any, datamodule: Any) -> str | None:
        if datamodule is None:
            return "the trainer has no datamodule"
        missing = [
            f"the datamodule's {m}"
            for m in ("task_dataloader", "segmentation_classnames")
            if not hasattr(datamodule, m)
        ]
        missing += [
            f"the module's {m}"
            for m in ("class_weights", "semantic_segmentation")
            if not hasattr(pl_module, m)
        ]
        return f"missing {', '.join(missing)}" if missing else None

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any):
        classnames = list(datamodule.segmentation_classnames)
        weights = pl_module.class_weights(
            classnames, list(datamodule.templates), tokenizer=data_tokenizer(datamodule)
        )
        metrics: dict[str, float] = {}
        chosen = ""
        bg_thresh = self.bg_thresh
        if self.candidates is not None:
            assert self.select_split is not None
            scores = [
                self._miou(trainer, pl_module, datamodule, weights, self.select_split, t)[0]
                for t in self.candidates
            ]
            best = max(range(len(scores)), key=scores.__getitem__)  # ties: the first listed
            bg_thresh = self.candidates[best]
            metrics[f"{self.name}_bg_thresh"] = bg_thresh
            tried = ", ".join(f"{t:g}: {m:.2f}" for t, m in zip(self.candidates, scores))
            chosen = f", chosen on {self.select_split} mIoU ({tried})"
        miou, count = self._miou(trainer, pl_module, datamodule, weights, self.split, bg_thresh)
        if count == 0:
            return self._skip(f"the {self.split} segmentation loader yielded no images")
        metrics[f"{self.name}_miou"] = miou
        return (
            metrics,
            f"{self.name} mIoU: {miou:.2f}% ({len(classnames)} classes + background, "
            f"bg_thresh {bg_thresh:g}{chosen}) on {count} {self.split} images",
        )

    def _miou(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        datamodule: Any,
        weights: Tensor,
        split: str,
        bg_thresh: float,
    ) -> tuple[float, int]:
        """mIoU (%) and image count of one split at one background threshold."""
        limit = self._max_batches(trainer) or self.max_batches
        preds, targets = [], []
        for i, batch in enumerate(datamodule.task_dataloader("segmentation", split)):
            if limit is not None and i >= limit:
                break
            images = batch["image"].to(pl_module.device)
            with self._encoding(trainer):
                pred = pl_module.semantic_segmentation(images, weights, bg_thresh=bg_thresh)
            mask = batch["mask"]
            if pred.shape[-2:] != mask.shape[-2:]:
                pred = F.interpolate(pred[:, None].float(), size=mask.shape[-2:], mode="nearest")[
                    :, 0
                ]
            preds.append(pred.long().cpu())
            targets.append(mask)
        if not preds:
            return float("nan"), 0
        miou, _ = mean_iou(preds, targets, len(weights) + 1)
        return miou, sum(len(p) for p in preds)
