r"""GroupViT (Xu et al., "GroupViT: Semantic Segmentation Emerges from Text Supervision",
CVPR 2022): a ViT whose stages end in grouping blocks that merge image tokens into segments.

Stage s runs ``depths[s]`` transformer blocks over [tokens; group tokens]; its grouping block
(not after the last stage) then assigns every token to one of ``num_output_groups[s]`` groups:

.. math::
    A = \mathrm{GumbelSoftmax}_{groups}\big(W_q \hat g \cdot (W_k x)^\top / \sqrt{d}\big),
    \quad \hat A = \mathrm{onehot}(\arg\max A) - \mathrm{sg}(A) + A,\quad
    g' = \hat g + W_o \frac{\hat A\, W_v x}{\sum \hat A + 1}

(hard assignment with the straight-through estimator during training; the soft softmax over
groups, without Gumbel noise, in evaluation). :math:`\hat g` are the stage's group tokens
projected to the output count by a token-mixing MLP and refined by cross-attention to the
image tokens. The next stage's learned group tokens are added to a projection of the previous
ones. The pooled output is the mean of the final tokens after a LayerNorm.

Blocks come from timm (``Block``, ``Mlp``, ``DropPath``, ``trunc_normal_``); the grouping
attention is written here because it has no counterpart there. Architecture facts from the
official code (NVlabs/GroupViT ``models/group_vit.py``, also vendored by CoCu): patch
embedding conv + LayerNorm, learned absolute position embedding (interpolated at other
sizes), ``assign_eps = 1``, Gumbel τ = 1, single-head assignment, channel MLP ratio 4 and
token-mixing ratio 0.5, stochastic depth linear over all blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GroupViTSpec:
    """GroupViT shape. Defaults: CoCu / GroupViT's configs (embed 384, depths [6, 3, 3],
    heads 6, group tokens [64, 8, 0], output groups [64, 8], patch 16, drop path 0.1)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depths: list[int] = field(default_factory=lambda: [6, 3, 3])
    num_heads: int = 6
    num_group_tokens: list[int] = field(default_factory=lambda: [64, 8, 0])
    num_output_groups: list[int] = field(default_factory=lambda: [64, 8])
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    hard_assignment: bool = True
    gumbel_tau: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.depths)
        if len(self.num_group_tokens) != n or len(self.num_output_groups) != n - 1:
            raise ValueError(
                "group_vit: depths, num_group_tokens (same length) and num_output_groups (one "
                f"fewer) disagree: {self.depths}, {self.num_group_tokens}, {self.num_output_groups}"
            )
        if any(g <= 0 for g in self.num_group_tokens[:-1]) or self.num_group_tokens[-1] != 0:
            raise ValueError(
                "group_vit: every stage but the last needs group tokens, the last none; got "
                f"num_group_tokens {self.num_group_tokens}"
            )


def gumbel_hard_assign(
    logits: torch.Tensor, dim: int, tau: float = 1.0, gumbel: bool = True, hard: bool = True
) -> torch.Tensor:
    """Softmax over ``dim`` of (logits + Gumbel noise) / τ (noise only with ``gumbel``); with
    ``hard`` the one-hot argmax in the forward pass and the soft gradient in the backward
    pass (straight-through)."""
    if gumbel:
        u = torch.rand_like(logits).clamp_(torch.finfo(logits.dtype).tiny, 1.0)
        logits = (logits - torch.log(-torch.log(u))) / tau
    soft = logits.softmax(dim)
    if not hard:
        return soft
    index = soft.argmax(dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return one_hot - soft.detach() + soft


class AssignAttention(nn.Module):
    """Single-head token → group assignment (queries: groups, keys / values: tokens)."""

    def __init__(
        self,
        dim: int,
        hard: bool = True,
        gumbel: bool = True,
        tau: float = 1.0,
        assign_eps: float = 1.0,
    ):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.scale = dim**-0.5
        self.hard, self.gumbel, self.tau, self.assign_eps = hard, gumbel, tau, assign_eps

    def forward(self, groups: torch.Tensor, tokens: torch.Tensor):
        """``(new groups (B, G, C), soft assignment (B, G, N))``; the soft assignment (softmax
        over groups, no noise) is what zero-shot segmentation reads."""
        raw = self.q_proj(groups) @ self.k_proj(tokens).transpose(1, 2) * self.scale  # (B,G,N)
        attn = gumbel_hard_assign(
            raw, dim=1, tau=self.tau, gumbel=self.gumbel and self.training, hard=self.hard
        )
        soft = raw.softmax(dim=1)
        attn = attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)
        return self.proj(attn @ self.v_proj(tokens)), soft


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block (groups attend to tokens), then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        from timm.layers import Mlp

        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key, key, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


class GroupingBlock(nn.Module):
    """Projects S_in group tokens to S_out, refines them by cross-attention to the image
    tokens, and assigns the tokens to them (:class:`AssignAttention`)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        num_group_token: int,
        num_output_group: int,
        hard: bool = True,
        tau: float = 1.0,
    ):
        from timm.layers import Mlp

        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_group_token, int(0.5 * dim), num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, heads)
        self.assign = AssignAttention(dim, hard=hard, gumbel=hard, tau=tau)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(4.0 * dim), dim)

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor):
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        projected = self.norm_post_tokens(
            self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2)
        )
        projected = self.pre_assign_attn(projected, x)
        new_x, soft = self.assign(projected, x)
        new_x = new_x + projected
        return new_x + self.mlp_channels(self.norm_new_x(new_x)), soft


class GroupViT(nn.Module):
    """The GroupViT image encoder. ``forward(images)`` → pooled features (B, C);
    :meth:`forward_groups` → final tokens (B, G, C) and the soft assignment of every
    grouping stage."""

    def __init__(self, spec: GroupViTSpec):
        from timm.layers import Mlp, trunc_normal_
        from timm.models.vision_transformer import Block

        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = nn.Conv2d(spec.in_chans, d, spec.patch_size, spec.patch_size)
        self.patch_norm = nn.LayerNorm(d)
        self.grid = spec.img_size // spec.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, d))
        trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths)).tolist()
        self.stages = nn.ModuleList()
        self.group_tokens = nn.ParameterList()
        self.group_projectors = nn.ModuleList()
        self.grouping = nn.ModuleList()
        offset = 0
        for s, depth in enumerate(spec.depths):
            self.stages.append(
                nn.ModuleList(
                    Block(
                        d,
                        spec.num_heads,
                        spec.mlp_ratio,
                        qkv_bias=True,
                        drop_path=rates[offset + i],
                    )
                    for i in range(depth)
                )
            )
            offset += depth
            n_group = spec.num_group_tokens[s]
            token = nn.Parameter(torch.zeros(1, max(n_group, 0), d))
            has_projector = s > 0 and n_group > 0
            if (
                not has_projector
            ):  # zero-initialised only when a projection of the previous adds to it
                trunc_normal_(token, std=0.02)
            self.group_tokens.append(token)
            self.group_projectors.append(
                nn.Sequential(
                    nn.LayerNorm(d), _TokenMixer(Mlp(spec.num_group_tokens[s - 1], d // 2, n_group))
                )
                if has_projector
                else nn.Identity()
            )
            if s < len(spec.depths) - 1:
                self.grouping.append(
                    GroupingBlock(
                        d,
                        spec.num_heads,
                        n_group,
                        spec.num_output_groups[s],
                        hard=spec.hard_assignment,
                        tau=spec.gumbel_tau,
                    )
                )
        self.norm = nn.LayerNorm(d)
        self.num_features = d
        self.apply(_init_weights)

    @property
    def width(self) -> int:
        return self.num_features

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        if h == w == self.grid:
            return self.pos_embed
        grid = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward_groups(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """``(tokens (B, G, C) after the final norm, soft assignments [(B, G_s, N_s)], patch
        grid (h, w))``."""
        x = self.patch_embed(images)
        hw = (x.shape[2], x.shape[3])
        x = self.patch_norm(x.flatten(2).transpose(1, 2)) + self._pos_embed(*hw)
        group = None
        assignments = []
        for s, blocks in enumerate(self.stages):
            n_group = self.spec.num_group_tokens[s]
            if n_group > 0:
                token = self.group_tokens[s].expand(x.shape[0], -1, -1)
                if group is not None:
                    token = token + self.group_projectors[s](group)
                x = torch.cat([x, token], dim=1)
            for block in blocks:
                x = block(x)
            if n_group > 0:
                x, group = x[:, :-n_group], x[:, -n_group:]
            if s < len(self.grouping):
                x, soft = self.grouping[s](x, group)
                assignments.append(soft)
        return self.norm(x), assignments, hw

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_groups(images)[0].mean(dim=1)


class _TokenMixer(nn.Module):
    """An MLP over the token axis (GroupViT's ``MixerMlp``)."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


def _init_weights(m: nn.Module) -> None:
    from timm.layers import trunc_normal_

    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def group_pixel_assignment(
    assignments: list[torch.Tensor],
    grid: tuple[int, int],
    size: tuple[int, int],
    batch: int = 1,
) -> torch.Tensor:
    """Soft pixel → final-group assignment (B, H, W, G): the stages' soft assignments chained
    (token→group₁ then group₁→group₂, a matrix product), on the patch grid, resized
    bilinearly to ``size`` (GroupViT's ``get_attn_maps``). Without a grouping stage (a
    one-stage GroupViT, i.e. a plain ViT) each patch is its own group: the identity
    assignment, repeated ``batch`` times."""
    n = grid[0] * grid[1]
    if assignments:
        chained = assignments[0].transpose(1, 2)  # (B, N, G_1)
        for soft in assignments[1:]:  # (B, G_s, G_{s-1})
            chained = chained @ soft.transpose(1, 2)
    else:  # no grouping stage: every patch token is its own group
        chained = torch.eye(n).expand(batch, n, n)
    b, _, g = chained.shape
    maps = chained.transpose(1, 2).reshape(b, g, *grid)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.permute(0, 2, 3, 1)
