"""TiMix's losses and schedule (Jiang et al., AAAI 2024; official code github.com/chaoyajiang/TiMiX
@ 3363466: ``models/clip/model.py``, ``models/model_pretrain_mplug.py``, ``TPMix.py``,
``pretrain_mplug.py``).

- PTA loss (patch–text alignment): L_PTA = CE(log p, patch label), averaged over every patch
  of every (image, phrase) pair (the official ``nn.CrossEntropyLoss`` on the predictor's
  log-probabilities, which is the NLL of those log-probabilities): :func:`pta_loss`;
- saliency: s = z-score over patches of log p[..., 1] (official ``_normal_noise``: mean and
  the unbiased standard deviation of ``torch.std``): :func:`patch_saliency`;
- soft labels: Y = λ·P + (1 − λ)·P.flip(0), P = softmax(sim_i2t) of the un-mixed batch, a
  constant (computed under no_grad), λ the kept fraction of the target
  (:mod:`zoo.data.window_mix`): :func:`mixed_soft_labels`;
- mixed ITC: L_mix = ½[CE_soft(v̂ Tᵀ/τ, Y) + CE_soft(T v̂ᵀ/τ, Y′)] on L2-normalised mixed-image
  features v̂ and text features T, with :func:`zoo.losses.soft_target_ce`. The official code
  uses Y′ = Y (the same soft label for the text→image direction, ``text_targets="same"``,
  the default here); ``"transposed"`` uses Y′ = Yᵀ, the column-wise reading of Y, offered
  because the paper's own equation could not be checked: :func:`mixed_itc`;
- γ: the weight of L_mix ramps linearly 0 → 1 over the iterations of epoch 0
  (γ = min(1, i / iterations per epoch)), then stays 1; mixing stops from epoch
  ``mix_until_epoch`` (20: ``if epoch >= 20: tpmix = None``): :func:`mix_weight`,
  :func:`mixing_active`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.losses.contrastive import soft_target_ce

TextTargets = Literal["same", "transposed"]
TEXT_TARGETS = ("same", "transposed")


def pta_loss(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of (…, N, 2) patch log-probabilities against (…, N) 0/1 labels."""
    return F.nll_loss(log_probs.reshape(-1, 2), labels.reshape(-1).long())


def patch_saliency(log_probs: Tensor) -> Tensor:
    """(B, N, 2) log-probabilities → (B, N) z-scores of log p[..., 1] over the patches."""
    score = log_probs[..., 1]
    return (score - score.mean(dim=1, keepdim=True)) / score.std(dim=1, keepdim=True)


def mixed_soft_labels(probs: Tensor, lam: float) -> Tensor:
    """Y = λ·P + (1 − λ)·P.flip(0): target i keeps λ of its own row, source B−1−i gives the rest."""
    probs = probs.detach()
    return lam * probs + (1.0 - lam) * probs.flip(0)


def mixed_itc(
    image_features: Tensor,
    text_features: Tensor,
    targets: Tensor,
    temperature: Tensor | float,
    text_targets: TextTargets = "same",
    normalize: bool = True,
) -> Tensor:
    """L_mix of the module docstring on (B, D) mixed-image and text features."""
    if text_targets not in TEXT_TARGETS:
        raise ValueError(f"text_targets must be one of {TEXT_TARGETS}, got {text_targets!r}")
    if normalize:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    logits = image_features @ text_features.T / temperature
    text_side = targets if text_targets == "same" else targets.T
    return 0.5 * (soft_target_ce(logits, targets) + soft_target_ce(logits.T, text_side))


def mix_weight(epoch: int, iteration: int, iterations_per_epoch: int) -> float:
    """γ: i / len(loader) during epoch 0 (capped at 1), then 1."""
    if epoch > 0:
        return 1.0
    return min(1.0, iteration / max(int(iterations_per_epoch), 1))


def mixing_active(epoch: int, mix_until_epoch: int) -> bool:
    """Whether the mixed step runs in ``epoch`` (official: epochs 0 … 19)."""
    return epoch < mix_until_epoch


def identity_targets(batch: int, device: torch.device | None = None) -> Tensor:
    """The hard ITC targets I (λ = 1 with P one-hot on the diagonal)."""
    return torch.eye(batch, device=device)
