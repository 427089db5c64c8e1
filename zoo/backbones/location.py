"""Location encoders: the Space2Vec "grid-cell" encoding and its feed-forward network.

CSP (Mai et al., ICML 2023) and the geo priors it fine-tunes (Mac Aodha et al., ICCV 2019)
encode a geo-location ``x = (lon, lat)``, in degrees, as ``e(x) = NN(PE(x))``. The encoder
here is the one of CSP's released models (official code, ``main/SpatialRelationEncoder.py``:
``GridCellSpatialRelationEncoder``; ``main/module.py``: ``MultiLayerFeedForwardNN``;
Space2Vec, Mai et al., ICLR 2020, the ``gridcell`` type):

- **multi-scale sinusoids** (:class:`GridCellEncoding`): S timescales in a geometric series
  ``λ_s = r_min · (r_max / r_min)^(s / (S − 1))``, s = 0 … S − 1 (``_cal_freq_list``,
  ``freq_init="geometric"``), and for each coordinate d ∈ (lon, lat), in that order, the
  pairs ``sin(x_d / λ_s), cos(x_d / λ_s)`` for s = 0 … S − 1, so 4S values; the angles are
  the raw degrees divided by λ (no conversion to radians, as the official ``gridcell``
  type). CSP's runs use S = 32, r_min = 0.1, r_max = 360: the finest wave has a period of
  2π·0.1 ≈ 0.63°, the coarsest 2π·360°.
- **feed-forward network** (:class:`LocationMLP`): ``num_hidden_layers`` hidden layers of
  width ``hidden_dim`` then an output layer of width ``out_dim`` (``num_filts``). Every
  layer, the output one included, is ``Linear → activation → dropout``; a hidden layer
  whose input and output widths agree adds its input (skip connection), and hidden layers
  end with a LayerNorm. Linear weights are Xavier-uniform initialised. CSP: 1 hidden layer
  of 512, output 256, dropout 0.5, LeakyReLU (slope 0.2) on iNat2018 and GELU on fMoW,
  LayerNorm and skip connections on (the ``use_layn`` / ``skip_connection`` defaults).

The feed-forward network is written out here rather than built from
:class:`zoo.heads.mlp.ProjectionMLP`: CSP's applies the activation and dropout to the output
layer too, orders dropout before the residual sum and LayerNorm after it, and its dropout is
what makes the two passes of CSP's SimCSE term differ. Only the ``gridcell`` encoding of the
released CSP models is implemented (Space2Vec's ``theory`` / sphere variants are not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Activation = Literal["leakyrelu", "relu", "gelu", "sigmoid", "tanh"]


def _activation(name: Activation) -> nn.Module:
    # The official get_activation_function: LeakyReLU with negative slope 0.2.
    table = {
        "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
    }
    if name not in table:
        raise ValueError(f"location encoder activation {name!r} is not one of {sorted(table)}")
    return table[name]()


@dataclass
class LocationEncoderSpec:
    """The location encoder ``e(x) = NN(PE(x))`` (defaults: CSP's iNat2018 run script).

    Attributes:
        frequency_num: S, the number of timescales per coordinate (``--frequency_num``).
        min_radius: r_min, the smallest timescale in degrees (``--min_radius``).
        max_radius: r_max, the largest timescale in degrees (``--max_radius``).
        hidden_dim: width of each hidden layer (``--hidden_dim``).
        num_hidden_layers: hidden layers before the output layer (``--num_hidden_layer``;
            0 makes the network a single ``Linear → act → dropout``).
        out_dim: the embedding width ``num_filts``.
        activation: ``leakyrelu`` (iNat2018) or ``gelu`` (fMoW), or ``relu`` / ``sigmoid``
            / ``tanh``.
        dropout: dropout probability after every layer's activation.
        layer_norm: LayerNorm at the end of each hidden layer (``--use_layn``).
        skip_connection: residual sum in hidden layers of equal in/out width.
    """

    frequency_num: int = 32
    min_radius: float = 0.1
    max_radius: float = 360.0
    hidden_dim: int = 512
    num_hidden_layers: int = 1
    out_dim: int = 256
    activation: Activation = "leakyrelu"
    dropout: float = 0.5
    layer_norm: bool = True
    skip_connection: bool = True

    def __post_init__(self) -> None:
        if self.frequency_num < 2:
            raise ValueError(f"location.frequency_num must be >= 2, got {self.frequency_num}")
        if not 0 < self.min_radius < self.max_radius:
            raise ValueError(
                "location radii need 0 < min_radius < max_radius, got "
                f"{self.min_radius} and {self.max_radius}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"location.dropout must be in [0, 1), got {self.dropout}")
        _activation(self.activation)  # fail now on an unknown name


def grid_cell_timescales(frequency_num: int, min_radius: float, max_radius: float) -> torch.Tensor:
    """``λ_s = r_min · (r_max / r_min)^(s / (S − 1))`` for s = 0 … S − 1, float64."""
    steps = torch.arange(frequency_num, dtype=torch.float64) / (frequency_num - 1)
    return min_radius * torch.exp(steps * math.log(max_radius / min_radius))


class GridCellEncoding(nn.Module):
    """``PE(lon, lat)``: ``[sin(lon/λ_0), cos(lon/λ_0), …, sin(lon/λ_{S−1}), cos(lon/λ_{S−1}),
    sin(lat/λ_0), cos(lat/λ_0), …]``, 4S values, parameter-free.

    The angles are computed in float64 (as the official NumPy code) and returned in float32:
    at r_min = 0.1 a longitude of 180° is an angle of 1,800 rad, where float32 rounding
    alone would shift the phase by ~1e-4 rad.
    """

    def __init__(self, frequency_num: int = 32, min_radius: float = 0.1, max_radius: float = 360.0):
        super().__init__()
        self.frequency_num = frequency_num
        timescales = grid_cell_timescales(frequency_num, min_radius, max_radius)
        self.register_buffer("timescales", timescales, persistent=False)

    @property
    def out_dim(self) -> int:
        return 4 * self.frequency_num

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        """``lonlat`` ``(..., 2)`` degrees → ``(..., 4S)`` float32."""
        if lonlat.shape[-1] != 2:
            raise ValueError(f"expected (..., 2) (lon, lat) coordinates, got {tuple(lonlat.shape)}")
        angles = lonlat.to(torch.float64).unsqueeze(-1) / self.timescales  # (..., 2, S)
        pairs = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., 2, S, 2)
        return pairs.flatten(-3).to(torch.float32)


class _FeedForwardLayer(nn.Module):
    """``Linear → act → dropout (→ + input) (→ LayerNorm)``: one layer of the official
    ``SingleFeedForwardNN``."""

    def __init__(
        self, d_in: int, d_out: int, activation: Activation, dropout: float, norm: bool, skip: bool
    ):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        nn.init.xavier_uniform_(self.linear.weight)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.skip = skip and d_in == d_out  # a residual needs equal widths (official rule)
        self.norm = nn.LayerNorm(d_out) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.act(self.linear(x)))
        if self.skip:
            y = y + x
        return self.norm(y)


class LocationMLP(nn.Sequential):
    """The official ``MultiLayerFeedForwardNN``: hidden layers with LayerNorm / skip as the
    spec says, then an output layer with activation and dropout but neither."""

    def __init__(self, in_dim: int, spec: LocationEncoderSpec):
        widths = [in_dim] + [spec.hidden_dim] * spec.num_hidden_layers
        layers = [
            _FeedForwardLayer(
                d_in, d_out, spec.activation, spec.dropout, spec.layer_norm, spec.skip_connection
            )
            for d_in, d_out in zip(widths[:-1], widths[1:])
        ]
        layers.append(
            _FeedForwardLayer(widths[-1], spec.out_dim, spec.activation, spec.dropout, False, False)
        )
        super().__init__(*layers)


class LocationEncoder(nn.Module):
    """``e(x) = LocationMLP(GridCellEncoding(x))``: ``(B, 2)`` (lon, lat) degrees →
    ``(B, out_dim)``. Dropout makes two training-mode passes differ (CSP's SimCSE views)."""

    def __init__(self, spec: LocationEncoderSpec | None = None):
        super().__init__()
        spec = spec or LocationEncoderSpec()
        self.spec = spec
        self.encoding = GridCellEncoding(spec.frequency_num, spec.min_radius, spec.max_radius)
        self.mlp = LocationMLP(self.encoding.out_dim, spec)

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoding(lonlat))
