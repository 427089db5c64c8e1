"""Weighted k-nearest-neighbour classification on frozen features.

Protocol (InstDisc, Wu et al. 2018, §3.5; DINO, Caron et al. 2021, ``eval_knn.py``):
features are L2-normalised, each test sample retrieves its k most cosine-similar train
samples s_1 … s_k, and each neighbour votes for its class with weight exp(s_i / T):

    score_c(x) = Σ_{i ≤ k, y_i = c} exp(s_i / T),     ŷ(x) = argmax_c score_c(x)

(k = 20, T = 0.07 in DINO). Vectorised with ``topk`` and ``scatter_add``, chunked over test
rows so the similarity matrix never exceeds ``chunk_size × N_train``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.eval.zeroshot import topk_accuracy


def knn_classify(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Weighted kNN votes: ``(predictions (M,), scores (M, num_classes))``.

    ``k`` is capped at the number of train samples. Ties in the argmax go to the lowest
    class index (``torch.argmax`` returns the first maximum).
    """
    train = F.normalize(train_x.float(), dim=-1)
    test = F.normalize(test_x.float(), dim=-1)
    train_y = train_y.long().to(train.device)
    k = min(k, train.shape[0])
    chunks: list[Tensor] = []
    for rows in torch.split(test, chunk_size):
        sims, idx = (rows @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(rows.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
        chunks.append(votes.scatter_add_(1, train_y[idx], (sims / temperature).exp()))
    scores = torch.cat(chunks)
    return scores.argmax(dim=1), scores


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    top_k: Sequence[int] = (1, 5),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-k accuracy (percent) of the weighted kNN vote scores, ``{"top1": …, "top5": …}``."""
    _, scores = knn_classify(train_x, train_y, test_x, num_classes, k, temperature, chunk_size)
    return topk_accuracy(scores, test_y, top_k)
