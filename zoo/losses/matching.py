"""Bipartite matching of predictions to targets (DETR / Mask2Former), on scipy.

Both set-prediction heads score every (query, target) pair with a weighted cost and take the
assignment of minimum total cost per image (Carion et al. 2020, Eq. 1). The cost matrix of a
batch is built in one batched tensor op; only the assignment itself runs per image, because
scipy's ``linear_sum_assignment`` (the Hungarian solver DETR's official code uses) works on
one matrix at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment


def hungarian_match(
    cost: torch.Tensor, sizes: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minimum-cost assignment per image.

    ``cost`` is ``(B, Q, T)``: the cost of every query against the targets of the whole batch
    concatenated (``T = sum(sizes)``), as DETR's matcher computes it, or already split per image
    with ``T = max(sizes)``. ``sizes[b]`` is how many targets image ``b`` has. Returns, per
    image, ``(query_idx, target_idx)`` int64 tensors sorted by query, with ``target_idx`` local
    to the image (``0 .. sizes[b]-1``).
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be (batch, queries, targets), got shape {tuple(cost.shape)}")
    if len(sizes) != cost.shape[0]:
        raise ValueError(f"{len(sizes)} target counts for a batch of {cost.shape[0]}")
    concatenated = cost.shape[2] == sum(sizes) and len(sizes) > 1
    if not concatenated and cost.shape[2] < max(sizes, default=0):
        raise ValueError(
            f"cost has {cost.shape[2]} target columns; sizes need {sum(sizes)} (concatenated) "
            f"or at least {max(sizes)} (per image)"
        )
    matrices = cost.detach().float().cpu()
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = 0
    for b, n in enumerate(sizes):
        columns = slice(start, start + n) if concatenated else slice(0, n)
        rows, cols = linear_sum_assignment(matrices[b, :, columns].numpy())
        out.append(
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
        )
        start += n
    return out


def matched_indices(
    matches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch_idx, query_idx)`` of every matched prediction, for one gather of the outputs."""
    batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
    query = torch.cat([q for q, _ in matches])
    return batch, query
