"""Tip-Adapter's cache model (Zhang et al., ECCV 2022, arXiv 2111.03930; official code
github.com/gaopengcuhk/Tip-Adapter @ d0e2d6f, ``main.py``, ``main_imagenet.py``, ``utils.py``).

The few-shot training set becomes a key-value cache beside CLIP's zero-shot classifier:

- keys ``F`` (N·K, d): the frozen CLIP's image features of the K-shot train set, each image
  seen in ``augment_epoch`` = 10 augmentation passes; the passes are averaged *before* the
  L2 normalisation (``utils.build_cache_model``): :func:`cache_keys_from_passes`;
- values ``L`` (N·K, N): one-hot labels;
- for a test feature f (L2-normalised), the affinity ``A = exp(−β(1 − f Fᵀ))``, written in
  the code as ``((-1) * (beta - beta * affinity)).exp()`` (:func:`affinity_weights` keeps that
  form, so the floats are the official ones) and the logits
  ``logits = 100 · f Wᵀ + α · A L`` (:func:`tip_logits`): the CLIP term uses the literal 100
  of the code (``clip_logits = 100. * features @ clip_weights``, i.e. ``(100·f) Wᵀ``), not the
  model's ``logit_scale`` (equal for OpenAI's weights; ``clip_scale=None`` in
  :class:`TipAdapterHead` takes the model's instead);
- Tip-Adapter-F makes the keys learnable: an ``nn.Linear(d, N·K, bias=False)`` whose weight is
  initialised to F (the code's ``adapter.weight = cache_keys.t()``), so ``A = adapter(f)``.

``A L`` is computed as a per-class sum of the affinity weights (:func:`class_sums`), not as a
matrix product with a one-hot matrix: the same numbers (up to float summation order) at 1/C
of the cost. Keys are stored shot-major (key ``k·C + c`` is shot k of class c) when every
class has the same number of shots, so the sum is a reshape (:func:`arrange_cache`).

**α/β search** (``utils.search_hp``): β over ``search_step[0]`` values
``0.1 + i (search_scale[0] − 0.1) / search_step[0]`` (i = 0 … steps − 1: the grid starts at
0.1 and stops one step short of the scale), α likewise over ``search_scale[1]`` /
``search_step[1]``; β is the outer loop, α the inner one, and a grid point replaces the best
only with a strictly higher accuracy (first best wins; when no point scores above 0 the code
returns β = α = 0). :func:`search_alpha_beta` reproduces that choice, vectorised: for each β
and each sample, the set of α for which the true class wins is an interval (every class's
logit is a line in α), found with one pass over the classes; counting the grid's α in the
intervals gives the accuracy of the whole α row at once. Bounds rule out, exactly, the
classes that cannot beat the true class anywhere on a block of β values, so only the few
competing classes are evaluated at every β (:func:`_count_pruned`). The counts equal the
official loop's except where a class's logit ties the true class's to the last bit of
float32 (there the official ``topk`` and this comparison may break the tie differently; the
code's own fp16 GPU arithmetic resolves such ties arbitrarily too). ``main.py`` searches on
the validation features; ``main_imagenet.py`` on the *test* features (the zoo's default is
validation; ``search_on: test`` in :class:`lightning_modules.tip_adapter.TipAdapter`
reproduces the ImageNet script).

Cost at ImageNet scale (``benchmarks/tip_adapter.py``, 16,000 keys, 2 CPU cores): the
search on 4,000 validation features takes 1.5 s and the logits of 50,000 test features
11.5 s, ~10 s of which is the float32 affinity product ``f Fᵀ`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.backbones import DualEncoder
from zoo.backbones.clip_head import ClipHead, register_clip_head

#: The first value of both search grids (``utils.search_hp``).
GRID_START = 0.1
#: The CLIP logit scale of the official code (``100. * features @ clip_weights``).
OFFICIAL_CLIP_SCALE = 100.0


# ------------------------------------------------------------------------------ the cache
def cache_keys_from_passes(passes: Sequence[Tensor]) -> Tensor:
    """Cache keys from the augmentation passes' features (each ``(N·K, d)``, unnormalised,
    same sample order): their mean, then L2-normalised rows (``build_cache_model``)."""
    if not passes:
        raise ValueError("the cache needs at least one augmentation pass of features")
    return F.normalize(torch.stack(list(passes)).mean(dim=0), dim=-1)


def balanced_shots(key_labels: Tensor, num_classes: int) -> int | None:
    """K when the keys are shot-major with K shots of every class (label of key j is
    ``j mod C``), else ``None``."""
    n = key_labels.numel()
    if num_classes <= 0 or n == 0 or n % num_classes:
        return None
    shots = n // num_classes
    expected = torch.arange(num_classes, device=key_labels.device).repeat(shots)
    return shots if torch.equal(key_labels, expected) else None


def arrange_cache(keys: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(keys, labels)`` reordered: shot-major when every class has the same number of
    shots (the per-class sum is then a reshape), else grouped by class. The order of the
    keys changes no logit: the cache term sums over a class's keys."""
    labels = labels.long()
    if labels.numel() != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} cache keys but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"cache labels must lie in [0, {num_classes}), got {labels.unique()}")
    order = torch.sort(labels, stable=True).indices  # class-major, data order within a class
    counts = torch.bincount(labels, minlength=num_classes)
    if labels.numel() and bool((counts == counts[0]).all()):
        shots = int(counts[0])
        order = order.view(num_classes, shots).t().reshape(-1)  # shot-major
    return keys[order], labels[order]


def class_sums(weights: Tensor, key_labels: Tensor, num_classes: int) -> Tensor:
    """``weights L``: (B, N·K) per-key weights summed per class → (B, C)."""
    shots = balanced_shots(key_labels, num_classes)
    if shots is not None:
        return weights.view(weights.shape[0], shots, num_classes).sum(dim=1)
    out = weights.new_zeros(weights.shape[0], num_classes)
    return out.index_add_(1, key_labels, weights)


def affinity_weights(affinity: Tensor, beta: float | Tensor) -> Tensor:
    """``exp(−β(1 − A))``, computed as the official ``((-1) * (beta - beta * A)).exp()``."""
    return ((-1) * (beta - beta * affinity)).exp()


def cache_logits(
    affinity: Tensor, key_labels: Tensor, num_classes: int, beta: float | Tensor
) -> Tensor:
    """The cache term before α: ``exp(−β(1 − A)) L`` (B, C)."""
    return class_sums(affinity_weights(affinity, beta), key_labels, num_classes)


#: The precisions the affinity product ``f Fᵀ`` may run in (:func:`affinity_product`).
AFFINITY_DTYPES = ("float32", "bfloat16")


def affinity_product(features: Tensor, keys: Tensor, dtype: str = "float32") -> Tensor:
    """``f Fᵀ`` as float32. ``dtype="bfloat16"`` runs the product in bfloat16 (operands
    rounded, float32 accumulation, the result rounded to bfloat16: torch has no float32
    output for bfloat16 products on CPU): with AMX about 2.5× faster at ImageNet scale, the
    largest cost of Tip-Adapter's inference. The official code computes it in float16 on a
    GPU (11 mantissa bits to bfloat16's 8): an affinity is off by up to ~2⁻⁸, its cache
    weight ``exp(β(A − 1))`` by up to ~β·2⁻⁸ relative, so the chosen (α, β) can move by a grid
    step. Off by default."""
    if dtype == "float32":
        return features @ keys.t()
    if dtype != "bfloat16":
        raise ValueError(f"affinity dtype must be one of {AFFINITY_DTYPES}, got {dtype!r}")
    return F.linear(features.to(torch.bfloat16), keys.to(torch.bfloat16)).float()


def clip_logits(features: Tensor, text_weights: Tensor, scale: float | Tensor) -> Tensor:
    """``(scale · f) Wᵀ`` for L2-normalised f: the code's ``100. * features @ clip_weights``."""
    return scale * features @ text_weights.t()


def tip_logits(clip: Tensor, cache: Tensor, alpha: float | Tensor) -> Tensor:
    """``clip_logits + cache_logits * alpha`` (the code's order of operations)."""
    return clip + cache * alpha


# ------------------------------------------------------------------------------ the head
@register_clip_head
class TipAdapterHead(ClipHead):
    """Tip-Adapter's classifier: the zero-shot text classifier plus the cache model.

    State: ``text_weights`` (C, d) unit rows; ``keys`` an ``nn.Linear(d, N·K, bias=False)``
    whose weight holds the cache keys F (trainable in Tip-Adapter-F, frozen otherwise);
    ``key_labels`` (N·K,) the class of each key (the one-hot values L); ``alpha``, ``beta``
    the current hyper-parameters (the search writes them); ``ready`` whether the cache has
    been built (a checkpoint of a fit that built it restores it instead of rebuilding).

    ``logits(encoder, f) = clip_scale · f̂ Wᵀ + α · exp(−β(1 − f̂ Fᵀ)) L`` with f̂ = f / ‖f‖;
    ``clip_scale`` is the official 100, or ``None`` for the CLIP's ``exp(logit_scale)``.
    """

    type_name = "tip_adapter"

    def __init__(
        self,
        embed_dim: int,
        classnames: list[str],
        num_keys: int,
        clip_scale: float | None = OFFICIAL_CLIP_SCALE,
        affinity_dtype: str = "float32",
    ):
        super().__init__(classnames)
        if affinity_dtype not in AFFINITY_DTYPES:
            raise ValueError(
                f"affinity_dtype must be one of {AFFINITY_DTYPES}, got {affinity_dtype!r}"
            )
        self.embed_dim, self.num_keys = int(embed_dim), int(num_keys)
        self.clip_scale = None if clip_scale is None else float(clip_scale)
        self.affinity_dtype = affinity_dtype
        self.keys = nn.Linear(self.embed_dim, self.num_keys, bias=False)
        nn.init.zeros_(self.keys.weight)  # filled by set_cache() or the state dict
        self.register_buffer("key_labels", torch.zeros(self.num_keys, dtype=torch.long))
        self.register_buffer("text_weights", torch.zeros(len(self.classnames), self.embed_dim))
        self.register_buffer("alpha", torch.tensor(1.0))
        self.register_buffer("beta", torch.tensor(1.0))
        self.register_buffer("ready", torch.tensor(False))

    def to_config(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "classnames": list(self.classnames),
            "num_keys": self.num_keys,
            "clip_scale": self.clip_scale,
            "affinity_dtype": self.affinity_dtype,
        }

    # --- state --------------------------------------------------------------------------
    @torch.no_grad()
    def set_cache(self, keys: Tensor, labels: Tensor) -> None:
        """Fill the cache (in place: an optimiser built on ``keys.weight`` keeps it)."""
        if keys.shape != self.keys.weight.shape:
            raise ValueError(
                f"the cache has {tuple(keys.shape)} keys, the head was built for "
                f"{tuple(self.keys.weight.shape)} (the few-shot train split changed size?)"
            )
        keys, labels = arrange_cache(keys, labels.to(keys.device), len(self.classnames))
        self.keys.weight.copy_(keys)
        self.key_labels.copy_(labels)
        self.ready.fill_(True)

    @torch.no_grad()
    def set_hyperparameters(self, alpha: float, beta: float) -> None:
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)

    # --- the classifier -----------------------------------------------------------------
    def scale(self, encoder: DualEncoder | None) -> float | Tensor:
        if self.clip_scale is not None:
            return self.clip_scale
        if encoder is None:
            raise ValueError("clip_scale=None takes the CLIP's logit scale: pass the encoder")
        return encoder.logit_scale.exp()

    def class_weights(self, encoder: DualEncoder) -> Tensor:
        return self.text_weights

    def tip_logits(
        self, features: Tensor, text_weights: Tensor, encoder: DualEncoder | None = None
    ) -> Tensor:
        """Logits of L2-normalised ``features`` against ``text_weights`` plus the cache."""
        clip = clip_logits(features, text_weights, self.scale(encoder))
        # exp(−β(1 − A)) in place on the fresh affinity (no temporaries: the largest tensor
        # here, B × N·K): β·A − β is the code's (−1)·(β − β·A) bit for bit, and autograd
        # allows it (the product keeps its inputs, not its output)
        if self.affinity_dtype == "float32":
            affinity = self.keys(features)
        else:
            affinity = affinity_product(features, self.keys.weight, self.affinity_dtype)
        weights = affinity.mul_(self.beta).sub_(self.beta).exp_()
        cache = class_sums(weights, self.key_labels, len(self.classnames))
        return tip_logits(clip, cache, self.alpha)

    def logits(self, encoder: DualEncoder, image_features: Tensor) -> Tensor:
        return self.tip_logits(F.normalize(image_features, dim=-1), self.text_weights, encoder)


# ------------------------------------------------------------------------------ the search
def search_grid(scale: float, steps: int) -> list[float]:
    """One axis of ``search_hp``'s grid: ``[i (scale − 0.1) / steps + 0.1 for i < steps]``."""
    if steps < 1:
        raise ValueError(f"search_step must be >= 1, got {steps}")
    return [i * (scale - GRID_START) / steps + GRID_START for i in range(steps)]


@dataclass(frozen=True)
class CacheSearch:
    """The result of :func:`search_alpha_beta`: the chosen point, its accuracy (percent)
    and the number of correct samples at every grid point (β rows, α columns)."""

    alpha: float
    beta: float
    accuracy: float
    correct: Tensor
    betas: list[float]
    alphas: list[float]
    num_samples: int


class _ClassSlots:
    """The affinities of a chunk arranged per class: ``(S, K_max, C)``, classes with fewer
    shots padded with −inf (an affinity weight of exactly 0)."""

    def __init__(self, key_labels: Tensor, num_classes: int):
        self.num_classes = num_classes
        counts = torch.bincount(key_labels, minlength=num_classes)
        self.counts = counts.float()
        self.shots = balanced_shots(key_labels, num_classes)
        self.index: Tensor | None = None
        if self.shots is None:
            kmax = int(counts.max())
            order = torch.sort(key_labels, stable=True).indices
            rank = torch.arange(key_labels.numel(), device=key_labels.device)
            rank = rank - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            index = torch.full(
                (kmax, num_classes), key_labels.numel(), dtype=torch.long, device=key_labels.device
            )
            index[rank, key_labels[order]] = order
            self.index, self.shots = index, kmax

    def view(self, affinity: Tensor) -> Tensor:
        if self.index is None:
            return affinity.view(affinity.shape[0], -1, self.num_classes)
        return F.pad(affinity, (0, 1), value=-torch.inf)[:, self.index]


def _weights_into(affinity: Tensor, beta: float, out: Tensor) -> Tensor:
    """:func:`affinity_weights` without temporaries: ``β·A − β`` equals the official
    ``(−1)·(β − β·A)`` bit for bit (IEEE subtraction is antisymmetric)."""
    torch.mul(affinity, beta, out=out)
    return out.sub_(beta).exp_()


def _alpha_wins(lower: Tensor, upper: Tensor, never: Tensor, alphas: Tensor) -> Tensor:
    """(..., len(alphas)): the grid's α that lie strictly inside (lower, upper)."""
    return (alphas > lower[..., None]) & (alphas < upper[..., None]) & ~never[..., None]


def _interval(gap: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per constraint ``α γ > gap``: the lower bound (γ > 0), the upper bound (γ < 0), and
    whether it can never hold (γ = 0, gap ≥ 0); −inf / +inf / False where it says nothing."""
    ratio = gap / gamma
    lower = torch.where(gamma > 0, ratio, -torch.inf)
    upper = torch.where(gamma < 0, ratio, torch.inf)
    return lower, upper, (gamma == 0) & (gap >= 0)


def _count_plain(
    affinity: Tensor,
    gap: Tensor,
    labels: Tensor,
    slots: _ClassSlots,
    key_labels: Tensor,
    betas: list[float],
    alphas: Tensor,
    correct: Tensor,
) -> None:
    """Every β on every (sample, class): the reference path of the vectorised search."""
    buffer = torch.empty_like(affinity)
    for i, beta in enumerate(betas):
        cache = class_sums(_weights_into(affinity, beta, buffer), key_labels, slots.num_classes)
        gamma = cache.gather(1, labels[:, None]) - cache
        lower, upper, never = _interval(gap, gamma)
        wins = _alpha_wins(lower.amax(1), upper.amin(1), never.any(1), alphas)
        correct[i] += wins.sum(0)


def _count_pruned(
    affinity: Tensor,
    gap: Tensor,
    labels: Tensor,
    slots: _ClassSlots,
    betas: list[float],
    alphas: Tensor,
    correct: Tensor,
    block: int,
    pair_budget: int,
) -> None:
    """The same counts as :func:`_count_plain`, evaluating exactly only the (sample, class)
    pairs where the class can beat the true class y somewhere on the grid.

    A class c adds a constraint only if ``gap_c + α (g_c(β) − g_y(β)) ≥ 0`` for some grid
    point (g the cache term, α ≥ 0). Two bounds rule most pairs out without evaluating g_c:

    1. everywhere: ``g_c(β) ≤ n_c e^{β(a_c − 1)}`` (a_c the affinity of c's closest key, n_c its
       number of keys) and, by convexity (Jensen), ``g_y(β) ≥ n_y e^{β(ā_y − 1)}`` (ā_y the
       mean affinity of y's keys); so when ``n_c ≤ n_y`` and ``a_c ≤ ā_y``, g_c ≤ g_y for
       every β and c matters only if ``gap_c ≥ 0``;
    2. per block of ``block`` β values [β_lo, β_hi], for the pairs left: g_c is at most
       ``n_c · max(e^{β_lo(a_c − 1)}, e^{β_hi(a_c − 1)})`` (each term is monotone in β) and g_y
       at least its smallest exact value in the block; the class's logit minus y's is a
       line in α, so checking both ends of the α range decides the whole block.

    The pairs that survive are evaluated exactly, β by β of their block.
    """
    per_class = slots.view(affinity)  # (S, K, C)
    num, kmax, _ = per_class.shape
    dtype, device = affinity.dtype, affinity.device
    beta_t = torch.tensor(betas, dtype=dtype, device=device)
    a_lo, a_hi = float(alphas.min()), float(alphas.max())
    tol = 1e-4 * (1.0 + float(torch.where(gap.isfinite(), gap, 0.0).abs().amax()))
    own = per_class.gather(2, labels[:, None, None].expand(-1, kmax, 1))[..., 0]  # (S, K)
    own_cache = affinity_weights(own[:, None, :], beta_t[None, :, None]).sum(-1)  # (S, nβ)
    own_count = slots.counts[labels]
    own_mean = torch.where(own.isfinite(), own, 0.0).sum(1) / own_count
    best_key = per_class.amax(dim=1)  # (S, C)
    # bound 1, dense: one pass over (S, C)
    maybe = (gap > -tol) | (best_key > own_mean[:, None]) | (slots.counts > own_count[:, None])
    rows, cols = maybe.nonzero(as_tuple=True)
    pair_gap, pair_best = gap[rows, cols], best_key[rows, cols]
    pair_count = slots.counts[cols]
    starts = list(range(0, len(betas), block))
    edges = torch.tensor(
        [betas[s] for s in starts] + [betas[min(s + block, len(betas)) - 1] for s in starts],
        dtype=dtype,
        device=device,
    )
    ends = affinity_weights(pair_best[:, None], edges)  # (pairs, 2·blocks)
    bound = pair_count[:, None] * torch.maximum(ends[:, : len(starts)], ends[:, len(starts) :])
    own_least = torch.stack([own_cache[:, s : s + block].amin(1) for s in starts], 1)[rows]
    for b, start in enumerate(starts):
        stop = min(start + block, len(betas))
        width = stop - start
        # bound 2, per block, on the pairs bound 1 left
        margin = bound[:, b] - own_least[:, b]
        keep = torch.maximum(pair_gap + a_lo * margin, pair_gap + a_hi * margin) > -tol
        idx = keep.nonzero(as_tuple=True)[0]
        touched, slot = torch.unique(rows[idx], return_inverse=True)
        lower = torch.full((touched.numel(), width), -torch.inf, dtype=dtype, device=device)
        upper = torch.full_like(lower, torch.inf)
        never = torch.zeros_like(lower)
        step = max(1, pair_budget // (width * kmax))
        for p in range(0, idx.numel(), step):
            pick = idx[p : p + step]
            r, c = rows[pick], cols[pick]
            weights = affinity_weights(per_class[r, :, c][:, None, :], beta_t[start:stop, None])
            gamma = own_cache[r, start:stop] - weights.sum(-1)
            lo, up, nv = _interval(pair_gap[pick][:, None], gamma)
            index = slot[p : p + step, None].expand(-1, width)
            lower.scatter_reduce_(0, index, lo, "amax")
            upper.scatter_reduce_(0, index, up, "amin")
            never.scatter_reduce_(0, index, nv.to(dtype), "amax")
        # samples no class can beat in this block are right at every α
        correct[start:stop] += num - touched.numel()
        correct[start:stop] += _alpha_histogram(lower, upper, never > 0, alphas)


def _alpha_histogram(lower: Tensor, upper: Tensor, never: Tensor, alphas: Tensor) -> Tensor:
    """(width, len(alphas)): per β column, how many rows have each grid α strictly inside
    (lower, upper); ``alphas`` ascending. A difference array over α, one entry per row."""
    first = torch.searchsorted(alphas, lower.contiguous(), right=True)  # first α > lower
    stop = torch.searchsorted(alphas, upper.contiguous(), right=False)  # first α ≥ upper
    valid = (first < stop) & ~never
    width, n = lower.shape[1], alphas.numel()
    diff = torch.zeros(width, n + 1, dtype=torch.long, device=alphas.device)
    column = torch.arange(width, device=alphas.device).expand_as(first)
    ones = valid.long()
    diff.index_put_((column, first), ones, accumulate=True)
    diff.index_put_((column, stop), -ones, accumulate=True)
    return diff.cumsum(1)[:, :n]


def _check_finite(affinity: Tensor, beta: float) -> None:
    """The cache weights of the grid must be finite numbers (NaN features, or learned keys
    so large that ``exp(β(A − 1))`` overflows, would make the comparisons meaningless)."""
    top = affinity.amax()
    if not bool(torch.isfinite(top)) or not bool(torch.isfinite(affinity_weights(top, beta))):
        raise ValueError(
            f"the α/β search met non-finite cache weights (largest affinity {float(top):.4g} "
            f"at β = {beta:.4g}): are the features / keys finite and about unit length?"
        )


@torch.no_grad()
def search_alpha_beta(
    features: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    clip: Tensor,
    labels: Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    chunk_size: int | None = None,
    prune: bool = True,
    block: int = 10,
    affinity_dtype: str = "float32",
) -> CacheSearch:
    """``utils.search_hp``: the (α, β) of the grid with the best accuracy of
    ``clip + α exp(−β(1 − f Fᵀ)) L`` on ``(features, labels)``.

    ``features`` (S, d) L2-normalised, ``keys`` (N·K, d) the cache keys (Tip-Adapter-F: the
    learned ones, unnormalised as the code leaves them), ``key_labels`` (N·K,), ``clip``
    (S, C) the zero-shot logits of the same features; ``betas`` / ``alphas`` the grid
    (:func:`search_grid`). Samples are processed in chunks of ``chunk_size`` (default: about
    64 MB of affinities per chunk), the affinity ``f Fᵀ`` computed once per chunk.

    For each β every α is scored at once (see the module docstring); with ``prune`` (default)
    only the classes that can beat the true class within a block of ``block`` β values are
    evaluated (:func:`_count_pruned`: exact, the same counts as ``prune=False``, faster when
    few classes compete, as in real few-shot data). ``affinity_dtype`` is the precision of
    ``f Fᵀ`` (:func:`affinity_product`). Ties between grid points go to the first
    in (β, α) order, as the official loop's strict ``>``; a sample counts as correct when
    its class's logit is strictly the highest.
    """
    betas, alphas = [float(b) for b in betas], [float(a) for a in alphas]
    if not betas or not alphas:
        raise ValueError("the search grid is empty")
    if min(betas) <= 0 or min(alphas) < 0:
        raise ValueError(f"the search grid needs β > 0 and α ≥ 0, got {betas[0]}, {alphas[0]}")
    num_samples, num_classes = clip.shape
    if features.shape[0] != num_samples or labels.shape[0] != num_samples:
        raise ValueError(
            f"search: {features.shape[0]} features, {num_samples} clip logits, "
            f"{labels.shape[0]} labels"
        )
    keys, key_labels = arrange_cache(keys, key_labels.to(keys.device), num_classes)
    slots = _ClassSlots(key_labels, num_classes)
    labels = labels.long().to(clip.device)
    alpha_grid = torch.tensor(alphas, dtype=clip.dtype, device=clip.device)
    if bool((alpha_grid[1:] <= alpha_grid[:-1]).any()):
        raise ValueError(f"the α grid must be increasing, got {alphas}")
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(1, keys.shape[0]))
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long, device=clip.device)
    for start in range(0, num_samples, chunk_size):
        y = labels[start : start + chunk_size]
        logits = clip[start : start + chunk_size]
        affinity = affinity_product(features[start : start + chunk_size], keys, affinity_dtype)
        _check_finite(affinity, max(betas))
        gap = logits - logits.gather(1, y[:, None])
        gap.scatter_(1, y[:, None], -torch.inf)  # the true class constrains nothing
        if prune:
            _count_pruned(affinity, gap, y, slots, betas, alpha_grid, correct, block, 1 << 22)
        else:
            _count_plain(affinity, gap, y, slots, key_labels, betas, alpha_grid, correct)
    flat = int(torch.argmax(correct.flatten()))  # the first maximum: the official strict ">"
    best = int(correct.flatten()[flat])
    if best == 0:  # the code's initial best_beta = best_alpha = 0 survive
        return CacheSearch(0.0, 0.0, 0.0, correct.cpu(), betas, alphas, num_samples)
    i, j = divmod(flat, len(alphas))
    return CacheSearch(
        alphas[j], betas[i], 100.0 * best / num_samples, correct.cpu(), betas, alphas, num_samples
    )
