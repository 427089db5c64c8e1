r"""DETR's Hungarian matcher and set criterion (Carion et al. 2020), as ViSFT trains its head.

Sources: DETR official code ``models/matcher.py`` and ``models/detr.py`` (``SetCriterion``),
reused unchanged by ViSFT (``mmf/models/visft/matcher.py``, ``visft_heads.py``:
``build_detection_loss``) with ``set_cost_class 1, set_cost_bbox 5, set_cost_giou 2``,
``bbox_loss_coef 5, giou_loss_coef 2, eos_coef 0.1, aux_loss true``.

Matching (DETR Eq. 1, with the official cost). For prediction :math:`i` (class probabilities
:math:`\hat p_i = \mathrm{softmax}(\text{logits}_i)`, box :math:`\hat b_i`) and target
:math:`j` (class :math:`c_j`, box :math:`b_j`, both normalised cxcywh):

.. math:: C_{ij} = -\lambda_{cls}\,\hat p_i(c_j) + \lambda_{L1}\,\lVert\hat b_i - b_j\rVert_1
          - \lambda_{giou}\,\mathrm{GIoU}(\hat b_i, b_j)

(the probability stands in for the NLL, as in the official code), with
:math:`\lambda = (1, 5, 2)`; the assignment of minimum total cost per image comes from
:func:`zoo.losses.matching.hungarian_match` (scipy ``linear_sum_assignment``).

Loss (DETR Eq. 2). With :math:`\sigma` the matching, :math:`N` the number of target boxes in
the batch (averaged over data-parallel ranks, at least 1) and :math:`\varnothing` the
no-object class (index ``num_classes``):

- ``loss_ce``: cross-entropy over *all* queries, matched queries against their target class,
  the others against :math:`\varnothing`, each query weighted by its target class weight
  (1, and ``eos_coef = 0.1`` for :math:`\varnothing`) and the sum divided by the sum of the
  weights (``F.cross_entropy(..., weight=...)``'s mean, as the official code);
- ``loss_bbox``: :math:`\frac1N\sum_{j}\lVert\hat b_{\sigma(j)} - b_j\rVert_1`;
- ``loss_giou``: :math:`\frac1N\sum_{j}\bigl(1 - \mathrm{GIoU}(\hat b_{\sigma(j)}, b_j)\bigr)`,
  GIoU from ``torchvision.ops.generalized_box_iou`` on ``box_convert(..., "cxcywh", "xyxy")``;
- ``cardinality_error`` (logged, no gradient): mean over images of
  :math:`|\#\{i: \arg\max \hat p_i \ne \varnothing\} - \#\text{targets}|`.

Every earlier decoder layer in ``outputs["aux_outputs"]`` is matched on its own and gives the
same terms with suffix ``_i`` (``loss_ce_0``, ...). The total is
:math:`\sum_k w_k\,\mathcal L_k` over :func:`detr_weight_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from zoo.losses.distributed import world_info
from zoo.losses.matching import hungarian_match, matched_indices

Target = Mapping[str, torch.Tensor]
Outputs = Mapping[str, Any]

DETR_LOSS_WEIGHTS: dict[str, float] = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def detr_weight_dict(
    num_decoder_layers: int, ce: float = 1.0, bbox: float = 5.0, giou: float = 2.0
) -> dict[str, float]:
    """``{"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}`` plus a ``_i`` copy for each of
    the ``num_decoder_layers - 1`` auxiliary layers (DETR / ViSFT ``build_detection_loss``;
    ViSFT's ``loss_attr`` weight is left out: attribute prediction is off for COCO)."""
    if num_decoder_layers < 1:
        raise ValueError(f"num_decoder_layers must be >= 1, got {num_decoder_layers}")
    base = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    out = dict(base)
    for i in range(num_decoder_layers - 1):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    return out


def _check_outputs(outputs: Outputs, where: str, num_classes: int | None = None) -> None:
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise KeyError(f"DETR {where} has no {key!r}; keys: {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"DETR {where}: pred_logits {tuple(logits.shape)} must be (B, Q, classes + 1) and "
            f"pred_boxes {tuple(boxes.shape)} must be (B, Q, 4)"
        )
    if num_classes is not None and logits.shape[2] != num_classes + 1:
        raise ValueError(
            f"DETR {where}: pred_logits has {logits.shape[2]} classes; expected "
            f"num_classes + 1 = {num_classes + 1} (the last is no-object)"
        )


def _concat_targets(
    targets: Sequence[Target], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All targets' labels ``(T,)`` and boxes ``(T, 4)``, and each image's count."""
    if len(targets) != batch_size:
        raise ValueError(f"{len(targets)} target dicts for a batch of {batch_size} images")
    for b, t in enumerate(targets):
        for key in ("labels", "boxes"):
            if key not in t:
                raise KeyError(f"targets[{b}] has no {key!r}; keys: {sorted(t)}")
        labels, boxes = t["labels"], t["boxes"]
        if labels.ndim != 1 or labels.dtype != torch.int64:
            raise ValueError(
                f"targets[{b}]['labels'] must be int64 (N,), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"targets[{b}]['boxes'] must be ({labels.shape[0]}, 4) normalised cxcywh, "
                f"got {tuple(boxes.shape)}"
            )
    sizes = [len(t["labels"]) for t in targets]
    labels = torch.cat([t["labels"] for t in targets])
    boxes = torch.cat([t["boxes"] for t in targets])
    return labels, boxes, sizes


def _check_target_values(
    labels: torch.Tensor, boxes: torch.Tensor, sizes: list[int], num_classes: int
) -> None:
    # one host sync for the whole batch; the matcher syncs anyway
    bad = (labels < 0) | (labels >= num_classes) | (boxes[:, 2:] <= 0).any(1)
    if labels.numel() and bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        image = int(torch.searchsorted(torch.tensor(sizes).cumsum(0), row, right=True))
        raise ValueError(
            f"targets[{image}]: label {int(labels[row])} must lie in [0, {num_classes}) and the "
            f"box {boxes[row].tolist()} (cx, cy, w, h) must have w, h > 0"
        )


class HungarianMatcher:
    """One-to-one assignment of queries to targets of minimum DETR cost (module docstring).

    Weights default to ViSFT's ``set_cost_class 1, set_cost_bbox 5, set_cost_giou 2``
    (DETR's own defaults in ``main.py`` are the same)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all matching costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost(self, outputs: Outputs, targets: Sequence[Target]) -> tuple[torch.Tensor, list[int]]:
        """``(B, Q, T)`` cost of every query against every target of the batch (``T`` =
        all targets concatenated), built in one batched op, and the per-image counts."""
        _check_outputs(outputs, "outputs")
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q = logits.shape[:2]
        tgt_labels, tgt_boxes, sizes = _concat_targets(targets, b)
        prob = logits.flatten(0, 1).float().softmax(-1)  # (B·Q, C + 1)
        out_boxes = boxes.flatten(0, 1).float()
        tgt_boxes = tgt_boxes.to(out_boxes)
        cost_class = -prob[:, tgt_labels.to(prob.device)]
        cost_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        cost = self.cost_class * cost_class + self.cost_bbox * cost_bbox
        cost = cost + self.cost_giou * cost_giou
        return cost.view(b, q, -1), sizes

    def __call__(
        self, outputs: Outputs, targets: Sequence[Target]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(query_idx, target_idx)`` int64 CPU tensors, target indices local."""
        cost, sizes = self.cost(outputs, targets)
        return hungarian_match(cost, sizes)


class SetCriterion(nn.Module):
    """DETR's set loss: match, then ``loss_ce`` / ``loss_bbox`` / ``loss_giou`` per decoder layer.

    ``forward(outputs, targets)`` takes :class:`~zoo.heads.detr.DETRHead`'s output and a list
    of ``{"labels": int64 (N,), "boxes": float (N, 4) normalised cxcywh}`` (``N`` may be 0)
    and returns every term (``loss_ce``, ``loss_bbox``, ``loss_giou``, their ``_i`` copies for
    the auxiliary layers, ``cardinality_error`` for logging) and ``"loss"``, the weighted
    total. ``weight_dict=None`` means :func:`detr_weight_dict` for as many layers as the
    outputs carry; a computed loss term without a weight is an error rather than silently
    dropped (the official code drops it)."""

    def __init__(
        self,
        num_classes: int,
        eos_coef: float = 0.1,
        weight_dict: Mapping[str, float] | None = None,
        matcher: HungarianMatcher | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.eos_coef = eos_coef
        self.weight_dict = dict(weight_dict) if weight_dict is not None else None
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _num_boxes(self, count: int, device: torch.device) -> float:
        """Targets per rank averaged over data-parallel ranks, at least 1 (official code)."""
        _, world = world_info()
        n = torch.tensor([float(count)], device=device)
        if world > 1:
            torch.distributed.all_reduce(n)
        return max(n.item() / world, 1.0)

    def layer_losses(
        self,
        outputs: Outputs,
        labels: torch.Tensor,
        boxes: torch.Tensor,
        sizes: torch.Tensor,
        matches: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """The terms of one decoder layer given its matching (module docstring).

        ``labels`` / ``boxes`` are all targets concatenated, ``sizes`` the count per image."""
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        batch_idx, query_idx = (i.to(device) for i in matched_indices(matches))
        # matched target rows in the concatenation: image offset + local index
        offsets = sizes.cumsum(0) - sizes
        target_idx = torch.cat([t for _, t in matches]).to(device) + offsets[batch_idx]

        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=device
        )
        target_classes[batch_idx, query_idx] = labels[target_idx]
        loss_ce = F.cross_entropy(
            logits.float().transpose(1, 2), target_classes, weight=self.class_weight
        )

        src = pred_boxes[batch_idx, query_idx].float()
        tgt = boxes[target_idx].to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        giou = generalized_box_iou(
            box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
        ).diagonal()
        loss_giou = (1 - giou).sum() / num_boxes

        with torch.no_grad():
            predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
            cardinality = F.l1_loss(predicted, sizes.float())
        return {
            "loss_ce": loss_ce,
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
            "cardinality_error": cardinality,
        }

    def forward(self, outputs: Outputs, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        _check_outputs(outputs, "outputs", self.num_classes)
        aux = list(outputs.get("aux_outputs", []))
        for i, layer in enumerate(aux):
            _check_outputs(layer, f"aux_outputs[{i}]", self.num_classes)
        device = outputs["pred_logits"].device
        labels, boxes, sizes = _concat_targets(targets, outputs["pred_logits"].shape[0])
        _check_target_values(labels, boxes, sizes, self.num_classes)
        labels, boxes = labels.to(device), boxes.to(device)
        counts = torch.tensor(sizes, dtype=torch.int64, device=device)
        num_boxes = self._num_boxes(len(labels), device)

        losses: dict[str, torch.Tensor] = {}
        for suffix, layer in [("", outputs), *((f"_{i}", a) for i, a in enumerate(aux))]:
            matches = self.matcher(layer, targets)
            terms = self.layer_losses(layer, labels, boxes, counts, matches, num_boxes)
            losses.update({k + suffix: v for k, v in terms.items()})

        weights = (
            self.weight_dict if self.weight_dict is not None else detr_weight_dict(len(aux) + 1)
        )
        unweighted = sorted(k for k in losses if k.startswith("loss_") and k not in weights)
        if unweighted:
            raise KeyError(
                f"SetCriterion weight_dict has no weight for {unweighted}; build it with "
                f"detr_weight_dict({len(aux) + 1}) for a {len(aux) + 1}-layer decoder"
            )
        losses["loss"] = sum(weights[k] * v for k, v in losses.items() if k in weights)
        return losses
