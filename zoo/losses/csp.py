r"""CSP's losses (Mai et al., ICML 2023) and the geo-prior loss it fine-tunes with.

**Pre-training** (``contsoftmax``, the "Multi-Class" loss of the README's best model
CSP-MC-BLD; official code ``main/losses.py``, ``contsoftmax_loss``). Every embedding is
L2-normalised; ``e(x)`` is the location encoder, ``h = img_dec(f(I))`` the projected frozen
image feature, ``e'`` a second (dropout) pass of ``e``; a temperature *divides* the cosine,
as in the code (τ_B = 20 on iNat2018 gives the soft logits cos / 20):

.. math::
    L_B = \mathrm{CE}_j\big(\cos(e(x_i), h_j) / τ_B,\ i\big)                       \\
    L_L = \mathrm{CE}\big([\cos(e(x_i), h_i), \cos(e(x^-_{i,1}), h_i), …,
          \cos(e(x^-_{i,K}), h_i)] / τ_L,\ 0\big)                                   \\
    L_D = \mathrm{CE}_j\big(\cos(e(x_i), e'(x_j)) / τ_D,\ i\big)                    \\
    L = L_B + w_L L_L + w_D L_D

(:func:`in_batch_loss`, :func:`random_location_loss`, :func:`simcse_loss`,
:class:`CSPLoss`). ``L_B`` is location → image only; the code's ``contsoftmaxsym`` adds the
image → location cross-entropy (summed, not averaged): ``symmetric=True``. The K random
locations x⁻ per sample (``num_neg_rand_loc``, 1 in the run scripts) come from
:func:`sample_locations`.

**Fine-tuning**: the presence-only geo-prior loss of Mac Aodha et al. 2019 (eq. 7), as the
code's ``embedding_loss`` computes it, with σ the sigmoid, ``s = e(x) W^T`` the class
logits of a bias-free head, C classes and pos_weight = C (:func:`geo_prior_loss`):

.. math::
    L = \operatorname{mean}_{b,c}\big[-𝟙[c≠y_b]\log(1-σ(s_{bc}))
        - 𝟙[c=y_b]\,C\log σ(s_{by_b})\big]
        + w\,\operatorname{mean}_{b,c}\big[-\log(1-σ(s^-_{bc}))\big]

with ``s⁻`` the logits at one random location per sample. The logs are computed with
``logsigmoid`` (exact); the code's ``-log(p + 1e-5)`` caps each term at ≈ 11.5: pass
``log_eps=1e-5`` for it.

**Random locations** (:func:`sample_locations`, the code's ``rand_samples``):

- ``spherical``: uniform on the sphere: lon uniform in [-180°, 180°), sin(lat) uniform in
  [-1, 1] (the paper's "uniformly sampled" negatives; Mac Aodha et al.'s corrected sampler);
- ``sphericalold``: the ICCV-2019 sampler the CSP run scripts pass (``--neg_rand_type
  sphericalold``): with a ~ U[-1, 1] and θ ~ U[0, 2π),
  ``lon = 180·√(1−a²)·cos θ``, ``lat = 90·√(1−a²)·sin θ``. Scaled to the unit disc,
  (lon/180, lat/90) is the projection of a uniform point on the sphere onto a plane, so
  samples never leave the ellipse (lon/180)² + (lat/90)² ≤ 1 (no point near a pole at a
  longitude far from 0), pile up near its rim, and E[(lat/90)²] = 1/3 where the uniform
  sampler gives (4/π²)(π²/4 − 2) ≈ 0.19.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NegativeSampler = Literal["spherical", "sphericalold"]
NEGATIVE_SAMPLERS: tuple[str, ...] = ("spherical", "sphericalold")


# --- random locations -------------------------------------------------------------------------
def sample_locations(
    n: int,
    kind: NegativeSampler = "spherical",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` random (lon, lat) in degrees, ``(n, 2)`` float32, from ``generator`` (the global
    torch RNG when ``None``). See the module docstring for the two samplers."""
    if kind not in NEGATIVE_SAMPLERS:
        raise ValueError(f"negative location sampler {kind!r} is not one of {NEGATIVE_SAMPLERS}")
    u = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    if kind == "spherical":
        lon = 360.0 * u[:, 0] - 180.0
        lat = torch.rad2deg(torch.asin(2.0 * u[:, 1] - 1.0))
    else:
        a = 2.0 * u[:, 0] - 1.0
        theta = 2.0 * math.pi * u[:, 1]
        radius = torch.sqrt(1.0 - a * a)
        lon = 180.0 * radius * torch.cos(theta)
        lat = 90.0 * radius * torch.sin(theta)
    return torch.stack((lon, lat), dim=1).to(torch.float32)


# --- pre-training -----------------------------------------------------------------------------
def in_batch_loss(
    loc: torch.Tensor, img: torch.Tensor, temperature: float, symmetric: bool = False
) -> torch.Tensor:
    """``L_B``: location i against every image of the batch, target image i. ``symmetric``
    adds image → location (the code's ``contsoftmaxsym``, a sum of the two)."""
    logits = F.normalize(loc, dim=-1) @ F.normalize(img, dim=-1).T / temperature
    target = torch.arange(loc.shape[0], device=loc.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = loss + F.cross_entropy(logits.T, target)
    return loss


def random_location_loss(
    loc: torch.Tensor, rand_loc: torch.Tensor, img: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``L_L``: image i against its own location (class 0) and its K random ones.

    ``rand_loc`` is ``(K, B, D)`` (or ``(K·B, D)``, K-major as the code reshapes it): row
    ``[k, i]`` is sample i's k-th negative location embedding."""
    batch = loc.shape[0]
    rand_loc = rand_loc.reshape(-1, batch, loc.shape[-1])
    locations = F.normalize(torch.cat((loc.unsqueeze(0), rand_loc)), dim=-1)  # (1+K, B, D)
    cosines = torch.einsum("kbd,bd->bk", locations, F.normalize(img, dim=-1))
    target = torch.zeros(batch, dtype=torch.long, device=loc.device)
    return F.cross_entropy(cosines / temperature, target)


def simcse_loss(loc: torch.Tensor, loc_view: torch.Tensor, temperature: float) -> torch.Tensor:
    """``L_D``: location i's embedding against every location's second dropout pass, target
    its own (SimCSE). With dropout off the two passes agree, so the diagonal logit is
    exactly 1/τ."""
    logits = F.normalize(loc, dim=-1) @ F.normalize(loc_view, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(loc.shape[0], device=loc.device))


class CSPLoss(nn.Module):
    """``L = L_B + w_L·L_L + w_D·L_D`` (defaults: the iNat2018 run script: τ_B = 20,
    τ_L = τ_D = 1, w_L = w_D = 1). A weight of 0 skips its term's computation."""

    def __init__(
        self,
        temperature_batch: float = 20.0,
        temperature_location: float = 1.0,
        temperature_simcse: float = 1.0,
        location_weight: float = 1.0,
        simcse_weight: float = 1.0,
        symmetric: bool = False,
    ):
        super().__init__()
        for name, t in (
            ("temperature_batch", temperature_batch),
            ("temperature_location", temperature_location),
            ("temperature_simcse", temperature_simcse),
        ):
            if t <= 0:
                raise ValueError(f"{name} must be > 0, got {t}")
        self.temperature_batch = temperature_batch
        self.temperature_location = temperature_location
        self.temperature_simcse = temperature_simcse
        self.location_weight = location_weight
        self.simcse_weight = simcse_weight
        self.symmetric = symmetric

    def forward(
        self,
        loc: torch.Tensor,
        img: torch.Tensor,
        rand_loc: torch.Tensor | None = None,
        loc_view: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The terms and their weighted sum ``loss``; ``rand_loc`` / ``loc_view`` are needed
        when their weight is not 0."""
        terms = {"batch_loss": in_batch_loss(loc, img, self.temperature_batch, self.symmetric)}
        loss = terms["batch_loss"]
        if self.location_weight:
            if rand_loc is None:
                raise ValueError("the random-location term needs rand_loc embeddings")
            terms["location_loss"] = random_location_loss(
                loc, rand_loc, img, self.temperature_location
            )
            loss = loss + self.location_weight * terms["location_loss"]
        if self.simcse_weight:
            if loc_view is None:
                raise ValueError("the SimCSE term needs a second (dropout) pass loc_view")
            terms["simcse_loss"] = simcse_loss(loc, loc_view, self.temperature_simcse)
            loss = loss + self.simcse_weight * terms["simcse_loss"]
        return {"loss": loss, **terms}


# --- fine-tuning --------------------------------------------------------------------------------
def _neg_log_sigmoid(logits: torch.Tensor, log_eps: float) -> torch.Tensor:
    """``-log σ(z)``: exact (``logsigmoid``) when ``log_eps`` is 0, else the code's
    ``-log(σ(z) + eps)``."""
    if log_eps:
        return -torch.log(torch.sigmoid(logits) + log_eps)
    return -F.logsigmoid(logits)


def geo_prior_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    rand_logits: torch.Tensor,
    pos_weight: float | None = None,
    rand_weight: float = 1.0,
    log_eps: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The presence-only loss (module docstring): ``logits`` ``(B, C)`` at the observed
    locations, ``labels`` ``(B,)``, ``rand_logits`` ``(B, C)`` at random locations;
    ``pos_weight`` defaults to C. Returns ``loss`` and its two means (``presence_loss``,
    ``background_loss``). ``-log(1 − σ(z))`` is ``-log σ(−z)``."""
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"geo-prior labels must be in [0, {logits.shape[1]}), got "
            f"[{int(labels.min())}, {int(labels.max())}] (unlabelled samples in the batch?)"
        )
    weight = float(logits.shape[1]) if pos_weight is None else float(pos_weight)
    rows = labels.unsqueeze(1)
    absent = _neg_log_sigmoid(-logits, log_eps)
    present = weight * _neg_log_sigmoid(logits.gather(1, rows), log_eps)
    presence = absent.scatter(1, rows, present).mean()
    background = _neg_log_sigmoid(-rand_logits, log_eps).mean()
    return {
        "loss": presence + rand_weight * background,
        "presence_loss": presence,
        "background_loss": background,
    }
