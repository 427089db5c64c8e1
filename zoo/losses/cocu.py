r"""CoCu's multi-label image–text contrastive loss (GroupViT's ``MultiLabelContrastive``).

For B images with embeddings :math:`\hat z_i` and K prompt texts per image
:math:`\hat p_{i,k}` (all L2-normalised; columns gathered over the data-parallel ranks):

.. math::
    L_{ML} = \tfrac12\Big[\tfrac1B\sum_i \mathrm{CE}_{soft}\big(s\,\hat z_i \hat P^\top,\;
             Y^{I\to T}_i\big) + \tfrac1{BK}\sum_{i,k}\mathrm{CE}_{soft}\big(s\,\hat p_{i,k}
             \hat Z^\top,\; Y^{T\to I}_{i,k}\big)\Big]

with :math:`Y^{I\to T}_{i,(j,k)} = [i = j]/K` (each image's K prompts share the target mass)
and :math:`Y^{T\to I}_{(i,k),j} = [i = j]` (each prompt targets its own image). Official code:
``models/multi_label_contrastive.py`` (``multi_label_loss``), with timm's
``SoftTargetCrossEntropy`` (here :func:`zoo.losses.soft_target_ce`) and ``dist_collect``
(an all-gather that passes gradients: the ``"with_grad"`` policy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.contrastive import soft_target_ce
from zoo.losses.distributed import GatherPolicy, gather


def multi_label_targets(batch: int, prompts: int, total: int, offset: int, device=None):
    """``(image→text (B, total·K), text→image (B·K, total))`` soft targets for this rank's
    B images starting at global index ``offset`` among ``total`` gathered images."""
    own = torch.arange(batch, device=device) + offset
    cols = (own.view(-1, 1) * prompts + torch.arange(prompts, device=device)).view(batch, prompts)
    y_it = torch.zeros(batch, total * prompts, device=device)
    y_it.scatter_(1, cols, 1.0 / prompts)
    y_ti = F.one_hot(own.repeat_interleave(prompts), total).float()
    return y_it, y_ti


def multi_label_contrastive(
    z_image: torch.Tensor,
    z_prompts: torch.Tensor,
    scale: torch.Tensor | float,
    gather_policy: GatherPolicy = "with_grad",
) -> torch.Tensor:
    """:math:`L_{ML}` (module docstring) for ``z_image`` (B, D) and ``z_prompts`` (B, K, D)."""
    b, k, _ = z_prompts.shape
    z_i = F.normalize(z_image, dim=-1)
    z_p = F.normalize(z_prompts, dim=-1).reshape(b * k, -1)
    all_i, offset = gather(z_i, gather_policy)
    all_p, _ = gather(z_p, gather_policy)
    y_it, y_ti = multi_label_targets(b, k, all_i.shape[0], offset, z_i.device)
    loss_i = soft_target_ce(scale * z_i @ all_p.T, y_it.to(z_i.dtype))
    loss_t = soft_target_ce(scale * z_p @ all_i.T, y_ti.to(z_i.dtype))
    return 0.5 * (loss_i + loss_t)
