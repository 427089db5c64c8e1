"""Contrastive losses: the symmetric CLIP InfoNCE and SimCLR's NT-Xent.

Both are vectorised over the batch and correct under data parallelism via a gather policy
(see :mod:`zoo.losses.distributed`). Each rank computes the loss of its local anchors
against all gathered candidates (the "local loss" formulation); averaged over ranks this is
the full-batch loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.losses.distributed import GatherPolicy, gather


def clip_infonce(
    z_i: torch.Tensor,
    z_t: torch.Tensor,
    scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
    gather_policy: GatherPolicy = "constant",
    normalize: bool = True,
) -> torch.Tensor:
    r"""Symmetric image–text InfoNCE (CLIP; SLIP ``losses.CLIPLoss``).

    .. math::
        L_{CLIP} = \tfrac12\big[\mathrm{CE}(s\,\hat Z_I \hat Z_T^\top, y)
                 + \mathrm{CE}(s\,\hat Z_T \hat Z_I^\top, y)\big]

    with :math:`\hat Z` the L2-normalised embeddings, :math:`s = \exp(t)` the logit scale and
    :math:`y_j` the index of sample j in the global batch. Rows are this rank's samples;
    columns are the whole gathered batch. ``label_smoothing`` is passed to the cross-entropy
    (CLIP-rocket uses 0.1 on its local terms). The default ``"constant"`` is the official SLIP
    code's gather (``all_gather_batch``: every gathered copy, the local one included, is a
    constant, so the gradient flows through the anchor rows only); ``"local_grad"`` (alias
    ``"no_grad"``) keeps the local slice's gradient (open_clip's ``gather_features``);
    ``"with_grad"`` gives the exact full-batch gradient under DDP. See
    :mod:`zoo.losses.distributed`.
    """
    if normalize:
        z_i, z_t = F.normalize(z_i, dim=-1), F.normalize(z_t, dim=-1)
    all_i, offset = gather(z_i, gather_policy)
    all_t, _ = gather(z_t, gather_policy)
    labels = torch.arange(z_i.shape[0], device=z_i.device) + offset
    logits_i = scale * z_i @ all_t.T
    logits_t = scale * z_t @ all_i.T
    return 0.5 * (
        F.cross_entropy(logits_i, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits_t, labels, label_smoothing=label_smoothing)
    )


def soft_target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy against a soft target distribution, averaged over rows.

    .. math:: L = -\tfrac1B \sum_i \sum_j Y_{ij} \log \mathrm{softmax}(x_i)_j

    ``targets`` has the shape of ``logits`` and each row is a distribution (it is not
    renormalised: a row summing to c scales that row's loss by c). With one-hot targets
    this equals ``F.cross_entropy(logits, targets.argmax(-1))``. The mixed image-text
    contrastive loss of TiMix and CoCu's multi-label contrastive loss are built on it;
    timm's ``SoftTargetCrossEntropy`` is the same sum, written here over the last dimension
    so it also takes batched (…, B, C) logits.
    """
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def nt_xent(
    q_a: torch.Tensor,
    q_b: torch.Tensor,
    temperature: float = 0.1,
    gather_policy: GatherPolicy = "with_grad",
    normalize: bool = True,
) -> torch.Tensor:
    r"""NT-Xent / SimCLR loss in SLIP's form (``losses.SIMCLRLoss``).

    For anchors :math:`q_a` against gathered keys :math:`k_a, k_b` (all L2-normalised):

    .. math::
        \ell_a = \mathrm{CE}\big([q_a k_b^\top,\; q_a k_a^\top - 10^9 I] / \tau,\; y\big),\quad
        \ell_b = \mathrm{CE}\big([q_b k_a^\top,\; q_b k_b^\top - 10^9 I] / \tau,\; y\big),\quad
        L_{SSL} = (\ell_a + \ell_b)/2

    i.e. a 2N-way classification where each anchor's positive is the other view of the same
    image and its 2N − 2 negatives are all other views (self-similarity masked out).
    SLIP gathers with gradient (``GatherLayer``); τ = 0.1.
    """
    if normalize:
        q_a, q_b = F.normalize(q_a, dim=-1), F.normalize(q_b, dim=-1)
    k_a, offset = gather(q_a, gather_policy)
    k_b, _ = gather(q_b, gather_policy)
    labels = torch.arange(q_a.shape[0], device=q_a.device) + offset
    self_mask = F.one_hot(labels, k_a.shape[0]).to(q_a.dtype) * 1e9
    logits_ab = q_a @ k_b.T / temperature
    logits_aa = q_a @ k_a.T / temperature - self_mask
    logits_ba = q_b @ k_a.T / temperature
    logits_bb = q_b @ k_b.T / temperature - self_mask
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return 0.5 * (loss_a + loss_b)


class ClipInfoNCE(nn.Module):
    """Module form of :func:`clip_infonce`, holding the gather policy and label smoothing.

    ``gather`` defaults to ``"constant"``, the official SLIP code's (``all_gather_batch``).
    """

    def __init__(
        self,
        gather: GatherPolicy = "constant",
        label_smoothing: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__()
        self.gather, self.label_smoothing, self.normalize = gather, label_smoothing, normalize

    def forward(self, z_i: torch.Tensor, z_t: torch.Tensor, scale) -> torch.Tensor:
        return clip_infonce(z_i, z_t, scale, self.label_smoothing, self.gather, self.normalize)


class NTXent(nn.Module):
    """Module form of :func:`nt_xent`."""

    def __init__(
        self, temperature: float = 0.1, gather: GatherPolicy = "with_grad", normalize: bool = True
    ):
        super().__init__()
        self.temperature, self.gather, self.normalize = temperature, gather, normalize

    def forward(self, q_a: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
        return nt_xent(q_a, q_b, self.temperature, self.gather, self.normalize)
