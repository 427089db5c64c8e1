"""Image–text retrieval recall R@k (CLIP zero-shot retrieval on Flickr30k / MS-COCO).

Protocol (CLIP, Radford et al. 2021, §3.1.6 / Table 13; open_clip ``zero_shot_retrieval``):
image and caption embeddings are L2-normalised and ranked by cosine similarity. Caption j
belongs to image ``text_to_image[j]`` (COCO and Flickr30k have 5 captions per image).

- image→text R@k: percentage of images with *at least one* of their captions among the k
  most similar captions (a hit rate, not the fraction of relevant captions retrieved);
- text→image R@k: percentage of captions whose image is among the k most similar images.

Exact ties are resolved in expectation over a uniformly random tie-break (reference code
ranks ties by sort order, i.e. arbitrarily): if g negatives score strictly above the best
positive, and q negatives and p positives tie with it, the hit probability at k is
``1 − C(q, m) / C(p + q, m)`` with m = k − g (0 when m ≤ 0, 1 when m > q). Without ties
this is the usual 0/1 hit (equal to ``torchmetrics.retrieval.RetrievalHitRate``, tested);
a collapsed model (all similarities equal) scores chance, k / N, instead of 0 % or 100 %.
Images without any caption are left out of the image→text average.

Retrieval by match (:func:`matched_recall_from_similarity`): where the data knows which
images fit a caption beyond its own (a caption that names one tile of a digit mosaic fits
every mosaic with that digit there), a hit is any fitting item in the top k. Pair recall then
has a ceiling far below 100 % (with m fitting images, a perfect model's text→image R@1 is
about 1/m), and the match recall is the one that reads as "how often is the top-k right".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _tie_counts(sim: Tensor, positive: Tensor) -> Tensor:
    """Per query row: (#negatives above, #negatives tied with, #positives at) the best positive."""
    best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    above, tied = sim > best, sim == best
    return torch.stack(
        [(above & ~positive).sum(1), (tied & ~positive).sum(1), (tied & positive).sum(1)], dim=1
    )


def _counts(sim: Tensor, query_ids: Tensor, gallery_ids: Tensor, chunk_size: int) -> Tensor:
    """``(Q, 3)`` tie counts; query i and gallery item j are relevant iff their ids match."""
    out = [
        _tie_counts(rows, ids[:, None] == gallery_ids[None, :])
        for rows, ids in zip(torch.split(sim, chunk_size), torch.split(query_ids, chunk_size))
    ]
    return torch.cat(out)


def _hit_probability(counts: Tensor, k: int) -> Tensor:
    """P(a positive is in the top k) under a uniformly random order of the tied items."""
    g, q, p = counts.double().unbind(dim=1)
    m = k - g
    m_safe = m.clamp(min=0).minimum(q)  # keep lgamma arguments valid where unused
    log_ratio = (  # log C(q, m) − log C(p + q, m): all-negative first m tied slots
        torch.lgamma(q + 1)
        - torch.lgamma(q - m_safe + 1)
        - torch.lgamma(p + q + 1)
        + torch.lgamma(p + q - m_safe + 1)
    )
    hit = 1.0 - log_ratio.exp()
    return torch.where(m <= 0, 0.0, torch.where(m > q, 1.0, hit))


def retrieval_recall_from_similarity(
    similarity: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R@k (percent) from an image × caption similarity matrix ``(N_img, N_txt)``.

    Returns ``{"i2t_r1": …, "i2t_r5": …, …, "t2i_r1": …, …}``.
    """
    sim = similarity.float()
    n_img, n_txt = sim.shape
    t2i = text_to_image.long().to(sim.device)
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(t2i.shape)}")
    images = torch.arange(n_img, device=sim.device)
    has_caption = torch.zeros(n_img, dtype=torch.bool, device=sim.device)
    has_caption[t2i] = True
    i2t = _counts(sim, images, t2i, chunk_size)[has_caption]
    t2i_counts = _counts(sim.T, t2i, images, chunk_size)
    out: dict[str, float] = {}
    for name, counts in (("i2t", i2t), ("t2i", t2i_counts)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float(_hit_probability(counts, k).mean())
    return out


def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image→text and text→image R@k (percent) of cosine similarities; see module docstring."""
    image = F.normalize(image_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    return retrieval_recall_from_similarity(image @ text.T, text_to_image, ks, chunk_size)


def matched_recall_from_similarity(
    similarity: Tensor,
    relevance: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R@k (percent) by match: ``similarity`` ``(N_img, N_txt)``, ``relevance`` ``(N_txt,
    N_img)`` bool (image j fits caption i). text→image: a hit when a fitting image is in the
    top k; image→text: when a caption the image fits is. Ties as in the module docstring;
    queries with nothing relevant are left out. Returns ``{"i2t_r1": …, "t2i_r1": …}``."""
    sim = similarity.float()
    rel = relevance.to(device=sim.device, dtype=torch.bool)
    if rel.shape != (sim.shape[1], sim.shape[0]):
        raise ValueError(
            f"relevance must have shape (N_txt, N_img) = {(sim.shape[1], sim.shape[0])}, "
            f"got {tuple(rel.shape)}"
        )
    out: dict[str, float] = {}
    for name, scores, positive in (("i2t", sim, rel.T), ("t2i", sim.T, rel)):
        counts = torch.cat(
            [
                _tie_counts(rows, pos)
                for rows, pos in zip(
                    torch.split(scores, chunk_size), torch.split(positive, chunk_size)
                )
            ]
        )[positive.any(dim=1)]
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float(_hit_probability(counts, k).mean())
    return out
