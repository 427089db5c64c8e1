"""LoRA adapter packages (``lora_adapter``): the LoRA matrices alone, merged into a base at load.

``zoo export CKPT --adapter-only`` writes, instead of the merged backbone, a model folder
whose ``model.safetensors`` holds only the adapter of a peft-wrapped backbone (ViSFT stage 2:
the ``lora_A`` / ``lora_B`` matrices), under ``backbone.`` plus peft's own key names
(``get_peft_model_state_dict``, e.g. ``backbone.base_model.model.blocks.0.attn.qkv.lora_A.weight``).
Its ``architecture`` entry says how to rebuild the full model:

- ``base``: the base model's own architecture entry (a ``vision_encoder`` spec);
- ``base_module``: the submodule of the base the LoRA wraps (``visual``: the timm ViT);
- ``lora``: the :class:`~zoo.lora.LoraSpec` (``r``, ``alpha``, ``dropout``,
  ``target_modules``, ``qv_only``, ``modules_to_save``);
- ``base_sha256``: the digest of the base weights the adapter was trained on
  (:func:`zoo.visft.backbone.state_sha256` over the wrapped submodule's state dict: names,
  dtypes, shapes and bytes).

``zoo.load(ADAPTER, base=BASE)`` builds ``base`` from the adapter's entry, loads the base
package's verified weights into it, refuses them (:class:`BaseWeightsMismatchError`, naming
both digests) unless they hash to ``base_sha256``, then wraps ``base_module`` with the LoRA of
``lora``, loads the adapter strictly and merges it (``W + (alpha / r)·BA``, peft's
``merge_and_unload``): the result is the same module the merged export holds.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.hub.architectures import ADAPTER_BASES, architecture_entry, get_architecture
from zoo.hub.security import TamperedWeightsError

ADAPTER = "lora_adapter"
#: The fields of an adapter's ``architecture`` entry besides ``type`` / ``num_parameters``.
ENTRY_FIELDS = ("base", "base_module", "lora", "base_sha256")


class BaseWeightsMismatchError(TamperedWeightsError):
    """The base given to an adapter package does not hash to the base it was trained on."""


class LoraAdapterWeights(nn.Module):
    """The adapter's tensors under peft's dotted key names (the state dict keys are exactly
    those names: nested containers mirror them), with the entry that places them on a base
    (``fields``: ``base``, ``base_module``, ``lora``, ``base_sha256``). It has no forward: it
    is what an adapter package stores, merged into its base by :func:`attach_adapter`."""

    def __init__(self, shapes: Mapping[str, tuple[torch.Size, torch.dtype]], fields: Mapping):
        super().__init__()
        self.fields = {k: copy.deepcopy(fields[k]) for k in ENTRY_FIELDS}
        for key, (shape, dtype) in shapes.items():
            *path, leaf = key.split(".")
            parent: nn.Module = self
            try:
                for part in path:
                    if part not in parent._modules:
                        parent.add_module(part, nn.Module())
                    parent = parent._modules[part]
                param = nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
                parent.register_parameter(leaf, param)
            except (KeyError, AttributeError) as err:
                raise ValueError(f"adapter key {key!r} cannot be stored: {err}") from None


# --------------------------------------------------------------------------- export side


def _lora_spec_of(module: nn.Module, peft_model: Any) -> Any:
    """The module's own :class:`~zoo.lora.LoraSpec` (``lora_spec``), else read off peft."""
    from zoo.lora import FusedQVLoraLinear, LoraSpec

    spec = getattr(module, "lora_spec", None)
    if isinstance(spec, LoraSpec):
        return spec
    config = peft_model.peft_config[peft_model.active_adapter]
    targets = config.target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    return LoraSpec(
        r=int(config.r),
        alpha=float(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=targets,
        qv_only=any(isinstance(m, FusedQVLoraLinear) for m in peft_model.modules()),
        modules_to_save=list(config.modules_to_save) if config.modules_to_save else None,
    )


def find_peft_model(module: nn.Module) -> Any:
    """The peft-wrapped backbone of a Lightning module: ``module.backbone`` when it is a
    ``PeftModel``, else its only ``PeftModel`` child; ``None`` when it has none."""
    from peft import PeftModel

    backbone = getattr(module, "backbone", None)
    if isinstance(backbone, PeftModel):
        return backbone
    found = [child for child in module.children() if isinstance(child, PeftModel)]
    if len(found) > 1:
        raise ValueError(f"{type(module).__name__} has {len(found)} peft models; expected one")
    return found[0] if found else None


def _base_module_path(base: nn.Module, keys: list[str]) -> str:
    """Where in the exported base the adapted model sits: ``""`` (the base itself) or the
    direct child whose state dict has exactly ``keys``."""
    for path, sub in [("", base), *base.named_children()]:
        if list(sub.state_dict()) == keys:
            return path
    raise ValueError(
        f"the exported {type(base).__name__} holds no submodule with the adapted model's "
        "weights; the adapter cannot be placed on it"
    )


def module_adapter(module: nn.Module, exported: tuple[str, nn.Module]) -> LoraAdapterWeights:
    """The adapter of a Lightning module with a peft-wrapped backbone, described against
    ``exported``, the ``(architecture, model)`` its ``export_model()`` gives (the merged
    backbone, whose architecture entry the base shares)."""
    from peft import get_peft_model_state_dict

    from zoo.visft.backbone import state_sha256

    peft_model = find_peft_model(module)
    if peft_model is None:
        raise ValueError(
            f"{type(module).__name__} has no LoRA adapter (no peft-wrapped backbone, e.g. "
            "ViSFT stage 1 or finetune: full); export the whole model without --adapter-only"
        )
    base_name, base_model = exported
    if base_name not in ADAPTER_BASES:
        raise ValueError(
            f"an adapter package needs a base of type {' or '.join(ADAPTER_BASES)}; "
            f"{type(module).__name__} exports a {base_name!r}"
        )
    # the base weights as they were before the LoRA (peft's unload: no merge), on a copy
    plain = copy.deepcopy(peft_model).unload()
    fields = {
        "base": architecture_entry(get_architecture(base_name), base_model),
        "base_module": _base_module_path(base_model, list(plain.state_dict())),
        "lora": dataclasses.asdict(_lora_spec_of(module, peft_model)),
        "base_sha256": state_sha256(plain),
    }
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    adapter = LoraAdapterWeights({k: (v.shape, v.dtype) for k, v in state.items()}, fields)
    adapter.load_state_dict(state, strict=True)
    return adapter.eval()


# --------------------------------------------------------------------------- the architecture


def _wrap(base: nn.Module, entry: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """``base``'s ``base_module`` wrapped (in place) with the entry's LoRA."""
    from zoo.lora import LoraSpec, apply_lora_spec
    from zoo.specs import to_spec

    target = base.get_submodule(entry["base_module"]) if entry["base_module"] else base
    return target, apply_lora_spec(target, to_spec(LoraSpec, dict(entry["lora"])))


def build_adapter(entry: Mapping[str, Any]) -> LoraAdapterWeights:
    """An empty :class:`LoraAdapterWeights` for ``entry``: its keys and shapes are those of
    the LoRA of ``entry["lora"]`` on ``entry["base"]``, found on the meta device (no memory,
    no base weights)."""
    from peft import get_peft_model_state_dict

    with torch.device("meta"):
        base = get_architecture(entry["base"]["type"]).build(entry["base"])
        _, peft_model = _wrap(base, entry)
        state = get_peft_model_state_dict(peft_model)
    return LoraAdapterWeights({k: (v.shape, v.dtype) for k, v in state.items()}, entry)


def describe_adapter(module: nn.Module) -> dict[str, Any]:
    if not isinstance(module, LoraAdapterWeights):
        raise ValueError(f"a {ADAPTER} entry describes LoraAdapterWeights, not {module!r}")
    return copy.deepcopy(module.fields)


# --------------------------------------------------------------------------- load side


def _base_state(base: Any, trust_pickle: bool) -> tuple[dict[str, Tensor], str, str | None]:
    """(backbone state, a description, architecture type) of ``base``: a loaded
    :class:`~zoo.hub.model.ZooModel`, a folder (``Path``, or a ``str`` naming an existing
    folder), or a model name / ``local-dir:`` / ``hf-hub:`` URI."""
    from zoo.hub.config import read_config
    from zoo.hub.model import ZooModel
    from zoo.hub.registry import HF_HUB, LOCAL_DIR, find_model_folder, resolve_model_dir
    from zoo.hub.weights import load_weights, split_state

    if isinstance(base, ZooModel):
        kind = base.config["architecture"]["type"]
        return base.encoder.state_dict(), f"the loaded model {base.name!r}", kind
    if isinstance(base, nn.Module):
        return base.state_dict(), f"the given {type(base).__name__}", None
    if isinstance(base, Path) or (
        isinstance(base, str)
        and not base.startswith((LOCAL_DIR, HF_HUB))
        and Path(base).expanduser().is_dir()
    ):
        folder = find_model_folder(Path(base))
    elif isinstance(base, str):
        folder = resolve_model_dir(base)
    else:
        raise TypeError(
            f"base must be a ZooModel, a model folder or a model name / URI, got {type(base)}"
        )
    config = read_config(folder)
    state, _ = split_state(load_weights(folder, config, trust_pickle))
    return state, f"the base {folder}", config["architecture"]["type"]


def attach_adapter(
    entry: Mapping[str, Any],
    adapter_state: Mapping[str, Tensor],
    base: Any,
    trust_pickle: bool = False,
    name: str = "this adapter",
) -> nn.Module:
    """The base model of ``entry`` with ``base``'s weights and the adapter merged in.

    Raises :class:`BaseWeightsMismatchError` (both digests in the message) when the base
    weights do not hash to ``entry["base_sha256"]``, and ``ValueError`` when they do not fit
    the base architecture or the adapter keys do not fit the LoRA."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from zoo.visft.backbone import state_sha256

    if base is None:
        raise ValueError(
            f"{name} is a LoRA adapter package ({ADAPTER}): it holds only the LoRA matrices and "
            f"needs its base {entry['base']['type']} (weights sha256 {entry['base_sha256']}). "
            "Load it with zoo.load(ADAPTER, base='local-dir:BASE' | BASE_NAME | folder | ZooModel)"
        )
    state, where, kind = _base_state(base, trust_pickle)
    expected = entry["base"]["type"]
    if kind is not None and kind != expected:
        raise ValueError(f"{where} is a {kind!r} model; {name} needs a {expected!r} base")
    model = get_architecture(expected).build(entry["base"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{where} does not fit {name}'s base architecture: {err}") from None
    target = model.get_submodule(entry["base_module"]) if entry["base_module"] else model
    actual, recorded = state_sha256(target), entry["base_sha256"]
    if actual != recorded:
        raise BaseWeightsMismatchError(
            f"{where} is not the base {name} was trained on: its weights hash to sha256 "
            f"{actual}, the adapter records base sha256 {recorded}. Refusing to merge the "
            "adapter into other weights (a base stored in another dtype hashes differently)."
        )
    target, peft_model = _wrap(model, entry)
    result = set_peft_model_state_dict(peft_model, dict(adapter_state))
    missing = sorted(set(get_peft_model_state_dict(peft_model)) - set(adapter_state))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"{name}'s weights do not fit its LoRA: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    merged = peft_model.merge_and_unload()
    if not entry["base_module"]:
        return merged
    parent, _, leaf = entry["base_module"].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, merged)
    return model
