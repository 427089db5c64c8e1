r"""CLIP-rocket losses (Fini et al., "Improved baselines for vision-language pre-training",
TMLR 2023; official code ``losses.py``, class ``CL2LLoss`` and its subclasses).

Notation: one weak pair (x⁰, t⁰) and K strong pairs (xᵏ, tᵏ) per sample; ẑ the global
embeddings of the weak pair (CLIP's projections), û the local embeddings of the strong views
(the separate "l2l" projectors), all L2-normalised; s the global logit scale, s′ the local
one; CE_ε the cross-entropy with label smoothing ε.

.. math::
    L_g^{I\to T} = \mathrm{CE}(s\,\hat z_I \hat z_T^\top),\qquad
    L_l^{I\to T} = \tfrac{1}{K^2}\sum_{j,k}\mathrm{CE}_\varepsilon(s'\,\hat u_I^j (\hat u_T^k)^\top)

and symmetrically T→I;

.. math::
    L_I = \frac{L_g^{I\to T} + K L_l^{I\to T}}{1+K},\quad
    L_T = \frac{L_g^{T\to I} + K L_l^{T\to I}}{1+K},\quad
    L = \frac{L_I + L_T}{2}\times(2\ \text{if reduction = sum else}\ 1).

Since L is linear in the terms, ``(L_I + L_T)/2 = (L_g + K·L_l)/(1+K)`` with
``L_g = clip_infonce(ẑ_I, ẑ_T, s)`` (no smoothing: the official global term has none) and
``L_l`` the mean of the two local directions; with K = 0, L is exactly ``clip_infonce``.

The K² local pairs are one batched matmul (:func:`cl2l_local_terms`): anchors of both
directions stacked ``(2, K·B, E)`` against the gathered candidates ``(2, K·N, E)``, then one
cross-entropy over all ``2·K²·B`` rows. The official code builds the K² logit matrices in a
Python loop; the values are the same (tested against a loop of :func:`clip_infonce`).

Non-contrastive baselines of the paper (each added to the CL2L loss, as in the official
``BarLIPLoss`` / ``SiamLIPLoss`` / ``SwALIPLoss``):

- :func:`barlip_loss`: Barlow-Twins cross-correlation between image and text projections;
- :func:`siamlip_loss`: SimSiam-style ``2 − 2·cos(p, sg(v))`` across modalities (BYOLIP: the
  same with targets from a momentum encoder, in the module);
- :func:`swalip_loss`: SwAV-style swapped prediction of Sinkhorn codes between view pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.losses.contrastive import clip_infonce
from zoo.losses.distributed import GatherPolicy, gather, world_info

Reduction = Literal["avg", "sum"]


def _gather_views(views: Tensor, policy: GatherPolicy) -> tuple[Tensor, int]:
    """``(V, B, E)`` per-rank views → ``(V, N, E)`` over ranks (one collective for every
    view), and this rank's row offset."""
    v, b, e = views.shape
    flat, offset = gather(views.permute(1, 0, 2).reshape(b, v * e), policy)
    return flat.view(-1, v, e).permute(1, 0, 2), offset


def local_logits(
    u_i: Tensor, u_t: Tensor, gather_policy: GatherPolicy = "constant", normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Cosine logits of every (anchor view, candidate view) pair, both directions, in one
    batched matmul: ``(2, K, B, K, N)`` indexed ``[direction, anchor view, anchor row,
    candidate view, candidate column]`` (direction 0: image anchors against text candidates,
    1: text against image), and the anchors' labels ``(B,)`` (their rows in the gathered
    batch). ``u_i``, ``u_t``: ``(K, B, E)``."""
    if u_i.shape != u_t.shape or u_i.dim() != 3:
        raise ValueError(
            f"local embeddings must both be (K, B, E), got {tuple(u_i.shape)} and {tuple(u_t.shape)}"
        )
    if normalize:
        u_i, u_t = F.normalize(u_i, dim=-1), F.normalize(u_t, dim=-1)
    k, b, e = u_i.shape
    anchors = torch.stack([u_i, u_t])  # (2, K, B, E)
    gathered, offset = _gather_views(anchors.reshape(2 * k, b, e), gather_policy)
    candidates = gathered.view(2, k, -1, e).flip(0)  # texts for image anchors, images for text
    n = candidates.shape[2]
    logits = torch.bmm(anchors.reshape(2, k * b, e), candidates.reshape(2, k * n, e).mT)
    labels = torch.arange(b, device=u_i.device) + offset
    return logits.view(2, k, b, k, n), labels


def cl2l_local_terms(
    u_i: Tensor,
    u_t: Tensor,
    scale: Tensor | float,
    label_smoothing: float = 0.1,
    gather_policy: GatherPolicy = "constant",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(L_l^{I→T}, L_l^{T→I})``: the smoothed cross-entropies averaged over the K² (image
    view j, text view k) pairs (official ``CL2LLoss``, ``clip_loss_image_local`` /
    ``clip_loss_text_local``). Every pair has B rows, so the mean over all rows of a
    direction is the mean over pairs of the per-pair means."""
    logits, labels = local_logits(u_i, u_t, gather_policy, normalize)
    k, b, n = logits.shape[1], logits.shape[2], logits.shape[4]
    rows = labels.view(1, 1, b, 1).expand(2, k, b, k).reshape(-1)
    per_row = F.cross_entropy(
        (scale * logits).reshape(-1, n), rows, reduction="none", label_smoothing=label_smoothing
    )
    image_to_text, text_to_image = per_row.view(2, -1).mean(dim=1)
    return image_to_text, text_to_image


def cl2l_loss(
    z_i: Tensor,
    z_t: Tensor,
    u_i: Tensor | None,
    u_t: Tensor | None,
    scale: Tensor | float,
    local_scale: Tensor | float,
    label_smoothing: float = 0.1,
    reduction: Reduction = "avg",
    gather_policy: GatherPolicy = "constant",
) -> dict[str, Tensor]:
    """The CL2L loss (module docstring) and its terms.

    ``z_i``, ``z_t``: ``(B, D)`` global embeddings of the weak pair; ``u_i``, ``u_t``:
    ``(K, B, E)`` local embeddings of the K strong views (``None`` or K = 0: CLIP);
    ``scale`` s and ``local_scale`` s′ are the exponentiated logit scales. Label smoothing
    applies to the local terms only. Returns ``loss``, ``clip_loss_global`` and, for K > 0,
    ``clip_loss_image_local``, ``clip_loss_text_local`` and ``clip_loss_local`` (their mean).
    """
    if reduction not in ("avg", "sum"):
        raise ValueError(f"reduction must be 'avg' or 'sum', got {reduction!r}")
    factor = 2.0 if reduction == "sum" else 1.0
    global_term = clip_infonce(z_i, z_t, scale, 0.0, gather_policy)
    k = 0 if u_i is None else u_i.shape[0]
    if k == 0:
        return {"loss": global_term * factor, "clip_loss_global": global_term}
    image_local, text_local = cl2l_local_terms(
        u_i, u_t, local_scale, label_smoothing, gather_policy
    )
    local = (image_local + text_local) / 2
    combined = (global_term + k * local) / (1 + k)
    return {
        "loss": combined * factor,
        "clip_loss_global": global_term,
        "clip_loss_image_local": image_local,
        "clip_loss_text_local": text_local,
        "clip_loss_local": local,
    }


class CL2LLoss(nn.Module):
    """Module form of :func:`cl2l_loss` holding ε, the reduction and the gather policy
    (default ``"constant"``: the official ``utils.all_gather_batch``)."""

    def __init__(
        self,
        label_smoothing: float = 0.1,
        reduction: Reduction = "avg",
        gather: GatherPolicy = "constant",
    ):
        super().__init__()
        if reduction not in ("avg", "sum"):
            raise ValueError(f"reduction must be 'avg' or 'sum', got {reduction!r}")
        self.label_smoothing, self.reduction, self.gather = label_smoothing, reduction, gather

    def forward(self, z_i, z_t, u_i, u_t, scale, local_scale) -> dict[str, Tensor]:
        return cl2l_loss(
            z_i,
            z_t,
            u_i,
            u_t,
            scale,
            local_scale,
            self.label_smoothing,
            self.reduction,
            self.gather,
        )


# --- BarLIP ---------------------------------------------------------------------------------
def barlip_pair_losses(
    v_i: Tensor, v_t: Tensor, lambda_: float = 5e-3, scale: float = 0.025
) -> Tensor:
    r"""BarLIP between every image view and every text view: ``(V_I, B, D)``, ``(V_T, B, D)``
    → ``(V_I, V_T)`` losses

    .. math:: \ell = s_B\Big[\sum_i (C_{ii}-1)^2 + \lambda\sum_{i\ne j} C_{ij}^2\Big],\quad
              C = v_I^\top v_T / N

    (official ``BarLIPLoss.barlip_loss``: λ = 5e-3, s_B = 0.025). All pairs' cross-correlations
    are one matmul (``(V_I·D) × (V_T·D)`` blocks); under data parallelism C is averaged over
    ranks with an autograd-aware all-reduce (the official code all-reduces without autograd).
    Computed in float32.

    Not lightly's ``BarlowTwinsLoss``: it standardises each batch inside the loss
    (``(z − mean) / std``), while BarLIP correlates the projector outputs as they are (the
    projector ends in an affine BatchNorm); the values and gradients differ.
    """
    vi, b, d = v_i.shape
    vt = v_t.shape[0]
    a = v_i.float().permute(1, 0, 2).reshape(b, vi * d)
    c = (a.T @ v_t.float().permute(1, 0, 2).reshape(b, vt * d)) / b
    _, world = world_info()
    if world > 1:
        from torch.distributed.nn.functional import all_reduce

        c = all_reduce(c) / world
    blocks = c.view(vi, d, vt, d).permute(0, 2, 1, 3)  # (V_I, V_T, D, D)
    diag = blocks.diagonal(dim1=-2, dim2=-1)  # (V_I, V_T, D)
    off_diagonal = blocks.pow(2).sum(dim=(-2, -1)) - diag.pow(2).sum(dim=-1)
    return scale * ((diag - 1).pow(2).sum(dim=-1) + lambda_ * off_diagonal)


def barlip_loss(
    v_i: Tensor,
    v_t: Tensor,
    v_i_local: Tensor | None = None,
    v_t_local: Tensor | None = None,
    lambda_: float = 5e-3,
    scale: float = 0.025,
) -> Tensor:
    """The BarLIP term: the mean over the global pair ``(v_i, v_t)`` (``(B, D)``) and the K²
    (image view, text view) local pairs (``(K, B, D)``) of :func:`barlip_pair_losses`
    (official ``BarLIPLoss.forward``: ``1 + K²`` terms)."""
    total = barlip_pair_losses(v_i[None], v_t[None], lambda_, scale).sum()
    count = 1
    if v_i_local is not None and v_i_local.shape[0] > 0:
        local = barlip_pair_losses(v_i_local, v_t_local, lambda_, scale)
        total, count = total + local.sum(), count + local.numel()
    return total / count


# --- SiamLIP / BYOLIP -----------------------------------------------------------------------
def siamlip_loss(
    p_i: Tensor,
    p_t: Tensor,
    v_i: Tensor,
    v_t: Tensor,
    p_i_local: Tensor | None = None,
    p_t_local: Tensor | None = None,
    v_i_local: Tensor | None = None,
    v_t_local: Tensor | None = None,
) -> Tensor:
    """SiamLIP (official ``SiamLIPLoss``): ``2 − 2·mean cos(p, sg(v))`` across modalities,
    averaged over the 2 global terms (image predictor → text target, text → image) and the
    2K² local ones (every image view's prediction against every text view's target, and
    back). Globals are ``(B, D)``, locals ``(K, B, D)``; the targets ``v`` are detached here
    (BYOLIP passes a momentum encoder's). The cosine is lightly's
    ``NegativeCosineSimilarity`` (``−mean cos``), broadcast over all view pairs at once."""
    from lightly.loss import NegativeCosineSimilarity

    ncs = NegativeCosineSimilarity(dim=-1)
    total = ncs(p_i, v_t.detach()) + ncs(p_t, v_i.detach())
    count = 2
    if p_i_local is not None and p_i_local.shape[0] > 0:
        k = p_i_local.shape[0]
        image_to_text = ncs(p_i_local[:, None], v_t_local.detach()[None])  # mean over K·K·B
        text_to_image = ncs(p_t_local[:, None], v_i_local.detach()[None])
        total = total + k * k * (image_to_text + text_to_image)
        count += 2 * k * k
    return 2 + 2 * total / count


# --- SwALIP ---------------------------------------------------------------------------------
def swalip_loss(
    u_i: Tensor,
    u_t: Tensor,
    scale: Tensor | float,
    sinkhorn_iterations: int = 3,
    sinkhorn_epsilon: float = 0.05,
    gather_policy: GatherPolicy = "constant",
) -> Tensor:
    r"""SwALIP (official ``SwALIPLoss``, model ``CL2L_*_SWALIP``), on the local embeddings
    ``(K, B, E)``. For anchor view j and candidate view l, the similarities
    :math:`S_{jl} = \hat u^j \hat u_{all}^{l\top}` (the other modality's gathered batch plays
    the prototypes) give Sinkhorn codes :math:`Q_{jl}` (3 iterations, ε = 0.05, no
    gradient); each pair predicts the codes of the swapped pair,

    .. math:: \ell = \frac{1}{K^2}\sum_{j,l}\tfrac12\big[\mathrm{CE}(s'S^{I}_{jl}, Q^{I}_{\bar j\bar l})
              + \mathrm{CE}(s'S^{T}_{jl}, Q^{T}_{\bar j\bar l})\big],\quad \bar j = K-1-j,

    with soft-target cross-entropy. The official code fixes K = 2 (its swap is ``1 − j``);
    :math:`\bar j = K-1-j` is the same there. The similarities are one batched matmul
    (:func:`local_logits`); the codes come from lightly's ``sinkhorn`` (the same algorithm
    as the official ``sinkhorn_knopp``: its extra division of the rows by the number of
    prototypes is a constant that the column normalisation cancels), called once per
    (direction, j, l) matrix because it normalises one 2-D matrix at a time (2K² calls).
    The module adds ``swalip_weight`` (0.2) times this to the CL2L loss.
    """
    from lightly.loss.swav_loss import sinkhorn

    sims, _ = local_logits(u_i, u_t, gather_policy)  # (2, K, B, K, N)
    two, k, b, _, n = sims.shape
    pairs = sims.permute(0, 1, 3, 2, 4).reshape(two * k * k, b, n)  # [d, j, l] → (B, N)
    distributed = world_info()[1] > 1
    codes = torch.stack(
        [
            sinkhorn(m.detach(), sinkhorn_iterations, sinkhorn_epsilon, distributed)
            for m in pairs.unbind(0)
        ]
    ).view(two, k, k, b, n)
    swapped = codes.flip(1, 2).reshape(-1, n)  # (j, l) → (K−1−j, K−1−l)
    logits = (scale * pairs).reshape(-1, n)
    return F.cross_entropy(logits, swapped)


__all__ = [
    "CL2LLoss",
    "Reduction",
    "barlip_loss",
    "barlip_pair_losses",
    "cl2l_local_terms",
    "cl2l_loss",
    "local_logits",
    "siamlip_loss",
    "swalip_loss",
]
