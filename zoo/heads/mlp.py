"""Projection MLPs built from a block spec (SLIP's SSL head, CLIP-rocket's projectors, ...)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

_NORMS = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm}
_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class MLPSpec:
    """``Linear → norm → act`` for each hidden width, then a final ``Linear``.

    SLIP's SSL head is ``MLPSpec(hidden_dims=[4096, 4096], out_dim=256, norm="bn")``:
    Linear(vw, 4096) → BN → ReLU → Linear(4096, 4096) → BN → ReLU → Linear(4096, 256).
    ``last_norm`` appends a norm after the final linear (BarLIP-style projector). With DDP,
    set ``trainer.sync_batchnorm: true`` to get SyncBN as in the paper.
    """

    hidden_dims: list[int] = field(default_factory=lambda: [4096, 4096])
    out_dim: int = 256
    norm: Literal["bn", "ln", "none"] = "bn"
    act: Literal["relu", "gelu", "silu"] = "relu"
    bias: bool = True
    last_norm: bool = False


class ProjectionMLP(nn.Sequential):
    def __init__(self, in_dim: int, spec: MLPSpec):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        dims = [in_dim, *spec.hidden_dims]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]), start=1):
            layers[f"layer{i}"] = nn.Linear(d_in, d_out, bias=spec.bias)
            if spec.norm != "none":
                layers[f"{spec.norm}{i}"] = _NORMS[spec.norm](d_out)
            layers[f"{spec.act}{i}"] = (
                _ACTS[spec.act](inplace=True) if spec.act == "relu" else _ACTS[spec.act]()
            )
        last = len(dims)
        layers[f"layer{last}"] = nn.Linear(dims[-1], spec.out_dim, bias=spec.bias)
        if spec.last_norm and spec.norm != "none":
            layers[f"{spec.norm}{last}"] = _NORMS[spec.norm](spec.out_dim)
        super().__init__(layers)
        self.in_dim, self.out_dim = in_dim, spec.out_dim
