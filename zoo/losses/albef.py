"""ALBEF's pre-training losses (Li et al., 2021), as mPLUG and TiMix use them.

Facts from the paper (ALBEF §3.2–3.3) and the official code (salesforce/ALBEF,
``models/model_pretrain.py`` and ``models/xbert.py``; chaoyajiang/TiMiX,
``models/model_pretrain_mplug.py`` and ``models/modeling_mplug.py``):

- **ITA with momentum distillation** (ALBEF Eqs. 1–2 and 6). With ``s`` the image→text
  logits ``v·tᵀ/τ`` of the online encoders and ``s_m`` those of the momentum encoders,
  the targets are ``q = α·softmax(s_m) + (1 − α)·y`` with ``y`` the one-hot pair labels
  (:func:`ita_targets`), and ``L_itc = ½[H(q_i2t, softmax(s_i2t)) + H(q_t2i, softmax(s_t2i))]``
  (:func:`ita_loss`). α = 0.4, ramped linearly from 0 over the first epoch in the official
  training loop (``Pretrain.py``: ``alpha * min(1, i / len(loader))`` in epoch 0); the ramp
  belongs to the caller. α = 0 gives CLIP's hard-target InfoNCE.
- **ITM** (Eq. 3). A 2-way classifier on the fusion encoder's [CLS]: each batch has B
  positive pairs and 2B negatives (one hard negative text per image and one hard negative
  image per text), ``L_itm = CE`` over the 3B rows (:func:`itm_loss`). The negatives are
  sampled from the ITC softmax over the batch with the diagonal zeroed
  (:func:`sample_hard_negatives`).
- **MLM** (Eq. 4 and 7). 15 % of the tokens are chosen, of which 80 % become [MASK], 10 % a
  random token and 10 % stay (:func:`mask_tokens`); the official ``mask`` never chooses
  [PAD] or [CLS]. ``L_mlm = (1 − α)·CE(p, y) + α·H(softmax(logits_m), p)`` over the chosen
  positions (:func:`mlm_loss`), with ``logits_m`` from the momentum model on the same
  masked text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zoo.losses.contrastive import soft_target_ce

IGNORE_INDEX = -100  # transformers' and the official code's "no MLM target here"


def ita_targets(sim_m: torch.Tensor, alpha: float) -> torch.Tensor:
    """ALBEF's pseudo-targets ``α·softmax(sim_m) + (1 − α)·I`` (Eq. 6), computed without grad.

    ``sim_m`` is (B, N) momentum-encoder logits (already divided by τ); N > B when a feature
    queue adds columns, whose identity part is then zero (``sim_targets.fill_diagonal_(1)``
    in the official code). Each row sums to 1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the distillation weight alpha must be in [0, 1], got {alpha}")
    if sim_m.dim() != 2 or sim_m.shape[1] < sim_m.shape[0]:
        raise ValueError(f"sim_m must be (B, N) with N >= B, got {tuple(sim_m.shape)}")
    with torch.no_grad():
        eye = torch.eye(*sim_m.shape, device=sim_m.device, dtype=torch.float32)
        soft = sim_m.float().softmax(dim=1)
        return (alpha * soft + (1.0 - alpha) * eye).to(sim_m.dtype)


def ita_loss(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    sim_i2t_m: torch.Tensor,
    sim_t2i_m: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """``½[soft_target_ce(sim_i2t, q_i2t) + soft_target_ce(sim_t2i, q_t2i)]`` with
    ``q = ita_targets(sim_m, α)`` (ALBEF Eq. 6; official ``loss_ita``). All four are logits
    already divided by τ; α = 0 is :func:`zoo.losses.clip_infonce`."""
    return 0.5 * (
        soft_target_ce(sim_i2t, ita_targets(sim_i2t_m, alpha))
        + soft_target_ce(sim_t2i, ita_targets(sim_t2i_m, alpha))
    )


def sample_hard_negatives(
    sim: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each row i, one index j ≠ i drawn with probability ∝ softmax(sim[i, :B])_j.

    ``sim`` is (B, N ≥ B) ITC logits; like the official code (``softmax(sim[:, :bs])``,
    ``fill_diagonal_(0)``) only the batch columns count. One ``torch.multinomial`` call over
    all rows replaces the official per-row loop. A row whose off-diagonal probabilities all
    underflow to 0 (possible at τ = 0.001) falls back to a uniform draw over the other
    samples instead of failing.
    """
    b = sim.shape[0]
    if sim.dim() != 2 or sim.shape[1] < b:
        raise ValueError(f"the ITC logits must be (B, N) with N >= B, got {tuple(sim.shape)}")
    if b < 2:
        raise ValueError("ITM hard negatives need a batch of at least 2 pairs")
    with torch.no_grad():
        off_diagonal = ~torch.eye(b, dtype=torch.bool, device=sim.device)
        weights = sim[:, :b].float().softmax(dim=1) * off_diagonal
        empty = weights.sum(dim=1, keepdim=True) <= 0
        weights = torch.where(empty, off_diagonal.float(), weights)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """ALBEF Eq. 3: cross-entropy of the ITM head, label 1 for the B positive rows and 0 for
    the 2B negative rows, averaged over all 3B (official ``loss_itm``)."""
    logits = torch.cat([pos_logits, neg_logits])
    labels = torch.cat(
        [
            torch.ones(pos_logits.shape[0], dtype=torch.long, device=logits.device),
            torch.zeros(neg_logits.shape[0], dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits, labels)


def mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    soft_targets: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """``(1 − α)·CE(logits, labels) + α·H(soft_targets, softmax(logits))`` over the masked
    positions (ALBEF Eq. 7; official ``BertForMaskedLM`` / ``FusionForMaskedLM`` with
    ``soft_labels``): both terms are means over the positions whose label is not −100.

    ``logits`` (B, L, V), ``labels`` (B, L), ``soft_targets`` (B, L, V) probabilities from
    the momentum model or None (plain MLM). A batch with no masked token gives 0 (the
    official code gives NaN), keeping the graph connected.
    """
    chosen = labels != IGNORE_INDEX
    count = chosen.sum().clamp(min=1)
    logp = logits.float().log_softmax(dim=-1)
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    hard = (nll * chosen).sum() / count
    if soft_targets is None or alpha == 0.0:
        return hard
    distill = (-(soft_targets.float() * logp).sum(dim=-1) * chosen).sum() / count
    return (1.0 - alpha) * hard + alpha * distill


def mask_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    probability: float,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking as in ALBEF's ``mask``: returns ``(masked_ids, labels)``.

    Each real token (``mask == 1``) not in ``special_ids`` is chosen with ``probability``;
    a chosen token becomes ``mask_id`` with probability 0.8, else a uniform random id in
    ``[0, vocab_size)`` with probability 0.5 (10 % overall), else stays. ``labels`` holds
    the original id at chosen positions and −100 elsewhere. All draws use ``generator``
    (on the ids' device), so a seed fixes the masking. The official code excludes [PAD] and
    [CLS] only; pass those as ``special_ids`` to match it, or all special ids as
    transformers' ``DataCollatorForLanguageModeling`` does.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"the MLM probability must be in [0, 1], got {probability}")
    if ids.shape != mask.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} differ in shape")

    def uniform() -> torch.Tensor:
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    special = torch.as_tensor(list(special_ids), dtype=ids.dtype, device=ids.device)
    eligible = mask.bool() & ~torch.isin(ids, special)
    chosen = (uniform() < probability) & eligible
    replaced = (uniform() < 0.8) & chosen
    randomised = (uniform() < 0.5) & chosen & ~replaced
    random_ids = torch.randint(
        vocab_size, ids.shape, generator=generator, device=ids.device, dtype=ids.dtype
    )
    masked = torch.where(replaced, torch.full_like(ids, mask_id), ids)
    masked = torch.where(randomised, random_ids, masked)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked, labels
