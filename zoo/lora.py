"""LoRA on peft for timm ViTs and transformers models: apply, merge / unmerge, export.

:func:`apply_lora` wraps a model in a ``peft.PeftModel``: the base weights are frozen,
``lora_B`` starts at zero (so the wrapped model initially equals the base model exactly)
and only the LoRA matrices (plus any ``modules_to_save``) train. Targets are module names:
``qkv`` for timm's fused attention projection, ``q_proj`` / ``v_proj`` for transformers'
CLIP, Llama and friends.

``qv_only=True`` adapts only the query and value thirds of a fused ``qkv`` Linear, each with
its own rank-``r`` pair, as ViSFT does with loralib's
``MergedLinear(..., enable_lora=[True, False, True])`` on EVA-CLIP's qkv. peft cannot
express this (it adapts whole modules; its old ``enable_lora`` option was removed), so
:class:`FusedQVLoraLinear` is a small peft LoRA layer registered through peft's custom
module API; its ``lora_A`` (2r × in) and ``lora_B`` (2·d × r) have loralib's shapes.

Exports: :func:`merged_state_dict` gives the base model's own keys with the LoRA deltas
folded in (``timm.create_model(same args).load_state_dict(sd, strict=True)`` works);
:func:`save_adapter` / :func:`load_adapter` write and read the adapter alone (peft's
``adapter_model.safetensors`` + ``adapter_config.json``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.tuners.lora import Linear as PeftLoraLinear
from safetensors.torch import load_file
from torch import nn

ADAPTER_FILE = "adapter_model.safetensors"  # peft's name (peft.utils.SAFETENSORS_WEIGHTS_NAME)


@dataclass
class LoraSpec:
    """LoRA settings of a recipe (``model.lora:`` in a config)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["qkv"])
    qv_only: bool = False
    modules_to_save: list[str] | None = None


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("qkv",),
    qv_only: bool = False,
    modules_to_save: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA (scaling ``alpha / r``) on the Linear layers named
    ``target_modules``; with ``qv_only`` every target must be a fused qkv Linear and only
    its q and v thirds are adapted. ``modules_to_save`` (e.g. a classifier head) train in
    full and are saved with the adapter."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    if qv_only:
        config._register_custom_module({nn.Linear: FusedQVLoraLinear})
    return get_peft_model(model, config)


def apply_lora_spec(model: nn.Module, spec: LoraSpec) -> PeftModel:
    return apply_lora(
        model,
        r=spec.r,
        alpha=spec.alpha,
        dropout=spec.dropout,
        target_modules=spec.target_modules,
        qv_only=spec.qv_only,
        modules_to_save=spec.modules_to_save,
    )


def merge(model: PeftModel) -> None:
    """Fold the LoRA deltas into the base weights (faster inference); :func:`unmerge`
    takes them out again. Outputs are unchanged up to float rounding, but unmerging does
    not restore the base weights bit for bit: export with :func:`merged_state_dict`."""
    model.merge_adapter()


def unmerge(model: PeftModel) -> None:
    model.unmerge_adapter()


def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict, under its own key names, with the LoRA deltas merged.

    Works on a copy (peft's ``merge_and_unload``), so ``model`` and its base weights stay
    exactly as they are; the copy costs one model's memory for the duration of the call.
    """
    plain = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


def adapter_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's weights only (LoRA matrices and ``modules_to_save``), peft's keys."""
    return get_peft_model_state_dict(model)


def save_adapter(model: PeftModel, directory: str | Path) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``."""
    model.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory) / ADAPTER_FILE


def load_adapter(model: PeftModel, directory: str | Path) -> None:
    """Load adapter weights written by :func:`save_adapter` into ``model``, a model wrapped
    by :func:`apply_lora` with the same settings. Missing or unexpected adapter keys are an
    error (peft itself only warns)."""
    weights = load_file(str(Path(directory) / ADAPTER_FILE))
    result = set_peft_model_state_dict(model, weights)
    expected = set(get_peft_model_state_dict(model))
    missing = sorted(expected - set(weights))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"adapter in {directory} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


class FusedQVLoraLinear(PeftLoraLinear):
    """LoRA on the q and v thirds of a fused ``qkv`` Linear (out = 3·d), k left alone.

    loralib ``MergedLinear`` with ``enable_lora=[True, False, True]``: ``lora_A`` maps the
    input to 2r features (r for q, r for v), ``lora_B`` (2d × r) is block-diagonal (rows
    ``:d`` read the first r, rows ``d:`` the last r), the delta is scaled by ``alpha / r``.
    Registered with ``LoraConfig._register_custom_module`` (peft's custom-layer API).
    """

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: Any, **kw: Any):
        if self.out_features % 3:
            raise ValueError(
                f"qv_only needs a fused qkv Linear, got out_features {self.out_features}"
            )
        if config.lora_bias or config.use_dora:
            raise ValueError("qv_only supports plain LoRA only (no lora_bias, no DoRA)")
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kw)
        # replace peft's whole-matrix pair with loralib's q/v pair, then re-initialise it the
        # peft way (A Kaiming-uniform as nn.Linear, B zero)
        d = self.out_features // 3
        self.lora_A[adapter_name] = nn.Linear(self.in_features, 2 * r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, 2 * d, bias=False)
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)

    def _qv_delta(self, adapter: str, a: torch.Tensor) -> torch.Tensor:
        """The output delta for ``a = lora_A(x)`` (…, 2r): ``[B_q a_q, 0, B_v a_v]``."""
        r, b = self.r[adapter], self.lora_B[adapter].weight
        d = b.shape[0] // 2
        q = F.linear(a[..., :r], b[:d])
        v = F.linear(a[..., r:], b[d:])
        return torch.cat([q, torch.zeros_like(q), v], dim=-1)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        a = self.lora_A[adapter].weight  # (2r, in)
        # the delta of W is _qv_delta applied to the rows of A, transposed
        return self._qv_delta(adapter, a.T).T * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            if self.disable_adapters and self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_a, dropout = self.lora_A[adapter], self.lora_dropout[adapter]
            a = lora_a(dropout(x.to(lora_a.weight.dtype)))
            result = result + (self._qv_delta(adapter, a) * self.scaling[adapter]).to(result.dtype)
        return result
