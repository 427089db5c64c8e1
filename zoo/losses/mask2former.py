r"""Mask2Former's point-sampled matching and set losses (ViSFT's segmentation loss).

Cheng et al., CVPR 2022, Sec. 3.2 ("Improving training efficiency") and the official code:
facebookresearch/Mask2Former ``mask2former/modeling/criterion.py`` and ``matcher.py``, with
the point sampler of detectron2's PointRend (``point_sample``,
``get_uncertain_point_coords_with_randomness``); ViSFT copies them
(``mmf/models/visft/segment_criterion.py``, ``segment_matcher.py``, ``point_sampler.py``)
and sets the numbers in ``visft.py``.

Masks are compared on ``P`` points, never on full maps. Coordinates are ``(x, y)`` in
``[0, 1]²`` over the whole map, read with bilinear ``grid_sample`` (``align_corners=False``,
zero padding), so predictions and targets of different resolutions line up.

**Matching** (one random point set per image, shared by all its queries and targets;
``P = num_points`` uniform points), the cost of query ``q`` for target ``t``::

    C = λ_cls·(−p_q(c_t)) + λ_mask·BCE_P(m_q, g_t) + λ_dice·Dice_P(m_q, g_t)

with ``p_q = softmax`` of the class logits, ``BCE_P`` the sigmoid binary cross-entropy
averaged over the points and ``Dice_P = 1 − (2·Σ σ(m)·g + 1) / (Σ σ(m) + Σ g + 1)``;
``λ = (2, 5, 5)`` in ViSFT. The minimum-cost assignment per image comes from
:func:`zoo.losses.matching.hungarian_match` (scipy's ``linear_sum_assignment``).

**Losses** on a matched set (``N_m`` = number of target masks in the batch, averaged over
data-parallel ranks and clamped to ≥ 1):

- ``loss_ce``: cross-entropy over all queries, unmatched queries labelled "no object",
  class weights 1 and ``eos_coef = 0.1`` for "no object" (weighted mean, as
  ``F.cross_entropy`` with ``weight``).
- ``loss_mask = Σ_matched mean_P BCE(m, g) / N_m`` and
  ``loss_dice = Σ_matched Dice_P(m, g) / N_m`` on ``P = num_points`` points chosen per
  matched mask by uncertainty (PointRend): draw ``oversample_ratio·P`` uniform candidates,
  keep the ``⌊importance_sample_ratio·P⌋`` whose sampled logit is most uncertain
  (uncertainty ``−|logit|``), fill the rest with fresh uniform points. ViSFT: ``P = 12544``,
  oversample 3, importance 0.75.
- The same terms for every ``aux_outputs[i]`` (re-matched per layer), suffixed ``_i``.
  Weights (:func:`mask2former_weight_dict`): ``loss_ce`` 2, ``loss_mask`` 5, ``loss_dice`` 5
  and the same for each suffix; ViSFT has 9 decoder layers and so 1 + 9 predictions (the
  learnable queries are supervised before the first layer), 1 + 9 sets of terms. The
  criterion returns the unweighted terms and ``"loss"``, their weighted sum.

Differences from the official code, none of which changes a value: the cost matrix and the
point sets of a whole batch are built in batched tensor ops (the official loops per image);
random draws go through an optional ``torch.Generator`` (so the stream of draws differs,
the distribution does not); a batch where no image has a target gives ``loss_mask`` and
``loss_dice`` of 0 (still attached to the graph) instead of failing on empty tensors; a loss
without a weight is an error rather than silently dropped. Target masks of different sizes
are zero-padded at the bottom and right, as the official ``nested_tensor_from_tensor_list``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from zoo.losses.distributed import world_info
from zoo.losses.matching import hungarian_match, matched_indices

MaskTarget = Mapping[str, torch.Tensor]


def mask2former_weight_dict(
    num_decoder_layers: int,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> dict[str, float]:
    """``{"loss_ce": 2, "loss_mask": 5, "loss_dice": 5}`` plus a ``_i`` copy for each of the
    ``num_decoder_layers`` auxiliary predictions (ViSFT ``visft.py``: ``range(9)``; the
    official Mask2Former: ``range(DEC_LAYERS - 1)`` with ``DEC_LAYERS = 10``)."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    out = dict(base)
    for i in range(num_decoder_layers):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    return out


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None):
    # a generator lives on one device; draw there and move, so a CPU generator drives CUDA runs
    if generator is None:
        return torch.rand(shape, device=like.device)
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def point_sample(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``values`` ``(N, C, H, W)`` at ``coords`` ``(N, P, 2)`` → ``(N, C, P)``.

    ``coords`` are ``(x, y)`` in ``[0, 1]`` over the whole map: ``F.grid_sample`` on
    ``2·coords − 1`` with ``align_corners=False`` (so pixel ``(i, j)``'s centre is
    ``((j + 0.5)/W, (i + 0.5)/H)``) and zero padding, as detectron2's ``point_sample``.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(values.float(), grid.float(), align_corners=False).squeeze(3)


def mask_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """PointRend's uncertainty of a foreground logit: ``−|logit|`` (largest at 0)."""
    return -logits.abs()


@torch.no_grad()
def get_uncertain_point_coords_with_randomness(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    uncertainty: Callable[[torch.Tensor], torch.Tensor] = mask_uncertainty,
) -> torch.Tensor:
    """Points ``(N, num_points, 2)`` for mask logits ``(N, 1, H, W)`` (PointRend sampling).

    Draws ``int(oversample_ratio·num_points)`` uniform candidates first (one draw), keeps the
    ``int(importance_sample_ratio·num_points)`` with the highest ``uncertainty`` of the
    *sampled* logit (ordered most uncertain first), then appends fresh uniform points (a
    second draw) for the rest.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    n = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = _uniform((n, num_sampled, 2), mask_logits, generator)
    scores = uncertainty(point_sample(mask_logits, candidates))[:, 0, :]
    num_uncertain = int(importance_sample_ratio * num_points)
    top = scores.topk(num_uncertain, dim=1).indices
    coords = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        coords = torch.cat([coords, _uniform((n, num_random, 2), mask_logits, generator)], dim=1)
    return coords


def sigmoid_ce_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """``Σ_masks mean_points BCE(σ(logit), label) / num_masks`` for ``(M, P)`` inputs."""
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """``Σ_masks [1 − (2·Σ σ·g + 1)/(Σ σ + Σ g + 1)] / num_masks`` for ``(M, P)`` inputs."""
    probs = point_logits.sigmoid().flatten(1)
    numerator = 2 * (probs * point_labels).sum(-1)
    denominator = probs.sum(-1) + point_labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def batch_sigmoid_ce_cost(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE: logits ``(..., Q, P)`` × labels ``(T, P)`` → ``(..., Q, T)``."""
    pos = F.binary_cross_entropy_with_logits(
        point_logits, torch.ones_like(point_logits), reduction="none"
    )
    neg = F.binary_cross_entropy_with_logits(
        point_logits, torch.zeros_like(point_logits), reduction="none"
    )
    cost = torch.einsum("...qp,tp->...qt", pos, point_labels) + torch.einsum(
        "...qp,tp->...qt", neg, 1 - point_labels
    )
    return cost / point_logits.shape[-1]


def batch_dice_cost(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss: logits ``(..., Q, P)`` × labels ``(T, P)`` → ``(..., Q, T)``."""
    probs = point_logits.sigmoid()
    numerator = 2 * torch.einsum("...qp,tp->...qt", probs, point_labels)
    denominator = probs.sum(-1)[..., None] + point_labels.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def _check_targets(targets: Sequence[MaskTarget], batch: int, num_classes: int | None) -> None:
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets for a batch of {batch} predictions")
    for i, t in enumerate(targets):
        for key in ("labels", "masks"):
            if key not in t:
                raise KeyError(f"targets[{i}] has no {key!r} (keys: {sorted(t)})")
        labels, masks = t["labels"], t["masks"]
        if labels.dim() != 1 or masks.dim() != 3 or labels.shape[0] != masks.shape[0]:
            raise ValueError(
                f"targets[{i}]: 'labels' must be (N,) and 'masks' (N, H, W) with the same N, "
                f"got {tuple(labels.shape)} and {tuple(masks.shape)}"
            )
        if labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"targets[{i}]['labels'] must be integer, got {labels.dtype}")
    if num_classes is not None:
        all_labels = torch.cat([t["labels"] for t in targets])
        if all_labels.numel() and (all_labels.min() < 0 or all_labels.max() >= num_classes):
            raise ValueError(
                f"target 'labels' must be in [0, {num_classes}), got values in "
                f"[{int(all_labels.min())}, {int(all_labels.max())}]"
            )


def _concat_targets(
    targets: Sequence[MaskTarget], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All targets' labels ``(T,)`` and masks ``(T, H_max, W_max)`` (zero-padded), sizes."""
    sizes = [int(t["labels"].shape[0]) for t in targets]
    labels = torch.cat([t["labels"] for t in targets]).to(like.device, torch.int64)
    masks = [t["masks"] for t in targets]
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    if any(m.shape[-2:] != (h, w) for m in masks):
        masks = [F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) for m in masks]
    return labels, torch.cat(masks).to(like.device, torch.float32), sizes


class MaskHungarianMatcher:
    """Mask2Former's point-sampled Hungarian matcher (module docstring for the cost)."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("MaskHungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[MaskTarget],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Cost ``(B, Q, T)`` of every query against every target of the batch
        (``T = Σ sizes``; only image ``b``'s own block is meaningful), and ``sizes``."""
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        labels, masks, sizes = _concat_targets(targets, pred_masks)
        with torch.autocast(pred_masks.device.type, enabled=False):
            probs = pred_logits.float().softmax(-1)
            cost_class = -probs[..., labels]
            # one point set per image, shared by its queries and its targets
            coords = _uniform((pred_masks.shape[0], self.num_points, 2), pred_masks, generator)
            pred_points = point_sample(pred_masks, coords)
            image_of_target = torch.repeat_interleave(
                torch.arange(len(sizes), device=pred_masks.device),
                torch.as_tensor(sizes, device=pred_masks.device),
            )
            target_points = point_sample(masks[:, None], coords[image_of_target])[:, 0]
            # (B, Q, B, ...) is never formed: each image's queries meet all T targets once
            cost = (
                self.cost_mask * batch_sigmoid_ce_cost(pred_points, target_points)
                + self.cost_class * cost_class
                + self.cost_dice * batch_dice_cost(pred_points, target_points)
            )
        return cost, sizes

    def __call__(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[MaskTarget],
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(query_idx, target_idx)`` int64, ``target_idx`` local to the image."""
        _check_targets(targets, outputs["pred_logits"].shape[0], None)
        cost, sizes = self.cost_matrix(outputs, targets, generator)
        return hungarian_match(cost, sizes)


class MaskSetCriterion(nn.Module):
    """Mask2Former's ``SetCriterion`` with ``losses=["labels", "masks"]`` (module docstring).

    ``forward(outputs, targets, generator=None)`` takes the head's output (``pred_logits``,
    ``pred_masks``, optional ``aux_outputs``) and per image ``{"labels": int64 (N,),
    "masks": float or bool (N, H_t, W_t)}`` (``N`` may be 0); it returns the unweighted
    terms ``loss_ce``, ``loss_mask``, ``loss_dice`` and their ``_i`` copies for
    ``aux_outputs[i]``, and ``"loss"``, the total weighted by ``weight_dict``.
    ``weight_dict=None`` uses :func:`mask2former_weight_dict` with as many auxiliary copies
    as the output has ``aux_outputs``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: MaskHungarianMatcher | None = None,
        weight_dict: Mapping[str, float] | None = None,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else MaskHungarianMatcher()
        self.weight_dict = dict(weight_dict) if weight_dict is not None else None
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(
        self,
        pred_logits: torch.Tensor,
        targets: Sequence[MaskTarget],
        matches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Weighted cross-entropy; unmatched queries target the no-object class."""
        batch_idx, query_idx = matched_indices(matches)
        target_classes = torch.full(
            pred_logits.shape[:2], self.num_classes, dtype=torch.int64, device=pred_logits.device
        )
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, matches)])
        target_classes[batch_idx, query_idx] = matched_labels.to(pred_logits.device, torch.int64)
        return F.cross_entropy(
            pred_logits.float().transpose(1, 2),
            target_classes,
            weight=self.empty_weight.to(pred_logits.device),
        )

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        target_masks: torch.Tensor,
        target_offsets: torch.Tensor,
        matches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_mask, loss_dice)`` on uncertainty-sampled points of the matched masks."""
        batch_idx, query_idx = matched_indices(matches)
        if batch_idx.numel() == 0:
            # no target in the batch: zero, but still a function of the predictions
            zero = pred_masks.sum() * 0.0
            return zero, zero
        batch_idx, query_idx = batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)
        target_idx = torch.cat([j for _, j in matches]).to(pred_masks.device)
        src = pred_masks[batch_idx, query_idx][:, None]
        tgt = target_masks[target_offsets[batch_idx] + target_idx][:, None]
        coords = get_uncertain_point_coords_with_randomness(
            src.detach(),
            self.num_points,
            self.oversample_ratio,
            self.importance_sample_ratio,
            generator=generator,
        )
        labels = point_sample(tgt, coords)[:, 0]
        logits = point_sample(src, coords)[:, 0]
        return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def _num_masks(self, targets: Sequence[MaskTarget], device: torch.device) -> float:
        # averaged over data-parallel ranks, as the official criterion does
        total = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        _, world = world_info()
        if world > 1:
            dist.all_reduce(total)
        return torch.clamp(total / world, min=1).item()

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[MaskTarget],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        pred_logits: torch.Tensor = outputs["pred_logits"]
        _check_targets(targets, pred_logits.shape[0], self.num_classes)
        if pred_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes; the criterion expects "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        _, target_masks, sizes = _concat_targets(targets, pred_logits)
        offsets = torch.tensor([0, *sizes[:-1]], device=pred_logits.device).cumsum(0)
        num_masks = self._num_masks(targets, pred_logits.device)
        aux: list[Mapping[str, torch.Tensor]] = list(outputs.get("aux_outputs") or [])
        layers = [("", outputs), *((f"_{i}", layer) for i, layer in enumerate(aux))]
        losses: dict[str, torch.Tensor] = {}
        for suffix, layer in layers:
            matches = self.matcher(layer, targets, generator=generator)
            loss_mask, loss_dice = self.loss_masks(
                layer["pred_masks"], target_masks, offsets, matches, num_masks, generator
            )
            losses[f"loss_ce{suffix}"] = self.loss_labels(layer["pred_logits"], targets, matches)
            losses[f"loss_mask{suffix}"] = loss_mask
            losses[f"loss_dice{suffix}"] = loss_dice
        weights = self.weight_dict
        if weights is None:
            weights = mask2former_weight_dict(len(aux))
        missing = sorted(set(losses) - set(weights))
        if missing:
            raise KeyError(
                f"MaskSetCriterion.weight_dict has no weight for {missing}; build it with "
                f"mask2former_weight_dict({len(aux)}) for {len(aux)} auxiliary outputs"
            )
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses


def targets_from_padded(
    masks: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """The criterion's per-image targets from a padded batch (``ImageMaskBuilder(instance=
    True)``: ``masks`` (B, N, H, W), ``masks_mask`` (B, N) True where real, ``classes``
    (B, N))."""
    if masks.dim() != 4 or valid.shape != masks.shape[:2] or labels.shape != masks.shape[:2]:
        raise ValueError(
            f"expected masks (B, N, H, W) with masks_mask and classes (B, N), got "
            f"{tuple(masks.shape)}, {tuple(valid.shape)}, {tuple(labels.shape)}"
        )
    return [
        {"labels": labels[b][valid[b]].long(), "masks": masks[b][valid[b]]}
        for b in range(masks.shape[0])
    ]
