"""Projection MLPs built from a block spec (SLIP's SSL head, CLIP-rocket's projectors, ...)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from zoo.heads.norm import GlobalBatchNorm1d

_NORMS = {"bn": nn.BatchNorm1d, "syncbn": GlobalBatchNorm1d, "ln": nn.LayerNorm}
_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class MLPSpec:
    """``Linear → norm → act`` for each hidden width, then a final ``Linear``.

    SLIP's SSL head is ``MLPSpec(hidden_dims=[4096, 4096], out_dim=256)``:
    Linear(vw, 4096) → SyncBN → ReLU → Linear(4096, 4096) → SyncBN → ReLU → Linear(4096, 256).
    ``norm="syncbn"`` (default) normalises over the global batch under data parallelism on
    any device (:class:`GlobalBatchNorm1d`; plain BN with one process); ``"bn"`` uses
    per-rank statistics. ``last_norm`` appends a norm after the final linear (BarLIP-style);
    ``last_norm_affine=False`` makes that last norm parameter-free (CLIP-rocket's SiamLIP
    projector ends in ``BatchNorm1d(affine=False)``).
    """

    hidden_dims: list[int] = field(default_factory=lambda: [4096, 4096])
    out_dim: int = 256
    norm: Literal["syncbn", "bn", "ln", "none"] = "syncbn"
    act: Literal["relu", "gelu", "silu"] = "relu"
    bias: bool = True
    last_norm: bool = False
    last_norm_affine: bool = True


def _norm_name(norm: str) -> str:
    # both batch norms are "bn<i>" so state dicts load across them (and SLIP's no-decay
    # keyword rule sees "bn")
    return "bn" if norm == "syncbn" else norm


class ProjectionMLP(nn.Sequential):
    def __init__(self, in_dim: int, spec: MLPSpec):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        dims = [in_dim, *spec.hidden_dims]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]), start=1):
            layers[f"layer{i}"] = nn.Linear(d_in, d_out, bias=spec.bias)
            if spec.norm != "none":
                layers[f"{_norm_name(spec.norm)}{i}"] = _NORMS[spec.norm](d_out)
            layers[f"{spec.act}{i}"] = (
                _ACTS[spec.act](inplace=True) if spec.act == "relu" else _ACTS[spec.act]()
            )
        last = len(dims)
        layers[f"layer{last}"] = nn.Linear(dims[-1], spec.out_dim, bias=spec.bias)
        if spec.last_norm and spec.norm != "none":
            affine = {
                "elementwise_affine" if spec.norm == "ln" else "affine": spec.last_norm_affine
            }
            layers[f"{_norm_name(spec.norm)}{last}"] = _NORMS[spec.norm](spec.out_dim, **affine)
        super().__init__(layers)
        self.in_dim, self.out_dim, self.spec = in_dim, spec.out_dim, spec
