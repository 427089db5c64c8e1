"""The architecture registry of ``zoo export`` / ``zoo.load``.

Each architecture registers, under the ``type`` name its ``config.json`` entry carries:

- ``schema``: the pydantic model of its ``architecture`` entry (unknown keys refused);
- ``build(entry)``: a fresh module from the validated entry (weights load afterwards, strictly);
- ``describe(module)``: the entry fields of a module (what export writes; rebuilt and
  strictly loaded before anything is written, so a folder always loads);
- ``protocols``: the methods the loaded model offers (``features``, ``encode_image``,
  ``encode_text``, ``logits``, ``class_weights``); ``uses_text``: whether a tokenizer is stored;
- ``check(entry)``: refusals beyond the schema (e.g. a spec that would read another file).

Built in: ``dual_encoder`` (CLIP / SLIP: format version 1, exactly as before), ``vision_encoder``
(a timm ViT: MAE, DINO), ``clip_head`` (a frozen dual encoder + a :mod:`zoo.backbones.clip_head`
head: linear, adapter, and the types families register) and ``vlm`` (vision encoder + projector
+ Hugging Face causal LM) and ``lora_adapter`` (the LoRA matrices alone, merged into a base
``vision_encoder`` at load: :mod:`zoo.hub.adapter`). A module tells ``zoo export`` what it is with an optional
``export_model() -> (type_name, nn.Module)``; see :func:`module_architecture`.

Importing this module does not import torch (``zoo list --models`` validates configs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from zoo.hub.schema import ArchitectureBase, Entry, describe_errors
from zoo.hub.security import UnsafeConfigError, check_spec_is_inert

if TYPE_CHECKING:
    from torch import nn

#: Format version of folders written by this zoo: 1 for dual encoders (readable by every zoo
#: release), 2 for the other architectures (older zoos refuse them with "upgrade vl-zoo").
DUAL_ENCODER_FORMAT, FORMAT_VERSION = 1, 2


@dataclass(frozen=True)
class Architecture:
    name: str
    schema: type[ArchitectureBase]
    build: Callable[[Mapping[str, Any]], nn.Module]
    describe: Callable[[nn.Module], dict[str, Any]]
    protocols: tuple[str, ...]
    uses_text: bool = True
    format_version: int = FORMAT_VERSION
    check: Callable[[Mapping[str, Any]], None] | None = None
    #: Adapters only (``lora_adapter``): ``attach(entry, weights, base, trust_pickle, name)``
    #: gives the final module from the package's weights and a base model (``zoo.load(...,
    #: base=)``); an architecture that sets it cannot be loaded without a base.
    attach: Callable[..., nn.Module] | None = None


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, replace: bool = False) -> Architecture:
    """Add ``arch`` to the registry (``replace=True`` to redefine a name)."""
    if arch.name in ARCHITECTURES and not replace:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: Any) -> Architecture:
    if name not in ARCHITECTURES:
        raise UnsafeConfigError(
            f"config.json architecture.type {name!r} is not a known architecture "
            f"(known: {', '.join(sorted(ARCHITECTURES))}); upgrade vl-zoo or register it"
        )
    return ARCHITECTURES[name]


def validate_architecture(entry: Mapping[str, Any]) -> Architecture:
    """Check an ``architecture`` entry against its architecture's schema and checks."""
    if not isinstance(entry, Mapping):
        raise UnsafeConfigError("config.json architecture must be a JSON object")
    arch = get_architecture(entry.get("type"))
    try:
        arch.schema.model_validate(dict(entry))
    except ValidationError as err:
        raise UnsafeConfigError(
            "config.json " + describe_errors(err, prefix="architecture.")
        ) from None
    if arch.check is not None:
        arch.check(entry)
    return arch


def architecture_entry(arch: Architecture, module: nn.Module) -> dict[str, Any]:
    """``{"type", **describe(module)}``, verified: the entry rebuilds a module that loads
    ``module``'s state strictly."""
    entry = {"type": arch.name, **arch.describe(module)}
    arch.build(entry).load_state_dict(module.state_dict(), strict=True)
    return entry


def module_architecture(module: nn.Module) -> tuple[str, nn.Module] | None:
    """What a Lightning module exports: its ``export_model()`` when it has one, else its
    :class:`~zoo.backbones.DualEncoder` at ``.encoder`` (CLIP, SLIP), else ``None``."""
    export = getattr(module, "export_model", None)
    if callable(export):
        name, model = export()
        get_architecture(name)
        return name, model
    from zoo.backbones import DualEncoder

    encoder = getattr(module, "encoder", None)
    return ("dual_encoder", encoder) if isinstance(encoder, DualEncoder) else None


def _spec_dict(spec: Any) -> dict[str, Any]:
    """A spec dataclass as a dict, with ``vision.checkpoint`` cleared: the exported weights
    are the weights, no file is read when the folder is loaded."""
    data = dataclasses.asdict(spec)
    vision = data.get("vision", data)
    if "checkpoint" in vision:
        vision["checkpoint"] = None
    return data


def _spec_of(module: Any, what: str) -> Any:
    spec = getattr(module, "spec", None)
    if spec is None:
        raise ValueError(f"{type(module).__name__} has no .spec; build it with {what}")
    return spec


# --------------------------------------------------------------------------- dual_encoder


class DualEncoderEntry(ArchitectureBase):
    type: Literal["dual_encoder"]
    spec: dict[str, Any]


def _build_dual_encoder(entry: Mapping[str, Any]) -> nn.Module:
    from zoo.backbones import DualEncoderSpec, build_dual_encoder
    from zoo.specs import to_spec

    return build_dual_encoder(to_spec(DualEncoderSpec, entry["spec"]))


def _describe_dual_encoder(module: nn.Module) -> dict[str, Any]:
    return {"spec": _spec_dict(_spec_of(module, "zoo.backbones.build_dual_encoder"))}


def _check_spec(entry: Mapping[str, Any]) -> None:
    check_spec_is_inert(entry.get("spec") or {})


register_architecture(
    Architecture(
        "dual_encoder",
        DualEncoderEntry,
        _build_dual_encoder,
        _describe_dual_encoder,
        protocols=("features", "encode_image", "encode_text", "class_weights"),
        format_version=DUAL_ENCODER_FORMAT,
        check=_check_spec,
    )
)

# --------------------------------------------------------------------------- vision_encoder


class VisionEncoderEntry(ArchitectureBase):
    type: Literal["vision_encoder"]
    spec: dict[str, Any]


def _build_vision_encoder(entry: Mapping[str, Any]) -> nn.Module:
    from zoo.backbones.vision import VisionEncoder, VisionSpec
    from zoo.specs import to_spec

    return VisionEncoder(to_spec(VisionSpec, entry["spec"]))


def _describe_vision_encoder(module: nn.Module) -> dict[str, Any]:
    return {"spec": _spec_dict(_spec_of(module, "zoo.backbones.vision.VisionEncoder"))}


register_architecture(
    Architecture(
        "vision_encoder",
        VisionEncoderEntry,
        _build_vision_encoder,
        _describe_vision_encoder,
        protocols=("features",),
        uses_text=False,
        check=lambda entry: check_spec_is_inert({"vision": entry.get("spec") or {}}),
    )
)

# --------------------------------------------------------------------------- clip_head


class ClipHeadSpec(Entry):
    type: str
    config: dict[str, Any]


class ClipHeadEntry(ArchitectureBase):
    type: Literal["clip_head"]
    spec: dict[str, Any]
    head: ClipHeadSpec


def _build_clip_head(entry: Mapping[str, Any]) -> nn.Module:
    from zoo.backbones.clip_head import CLIPWithHead, clip_head_class

    head = clip_head_class(entry["head"]["type"]).from_config(dict(entry["head"]["config"]))
    return CLIPWithHead(_build_dual_encoder(entry), head)


def _describe_clip_head(module: nn.Module) -> dict[str, Any]:
    head = module.head
    return {
        **_describe_dual_encoder(module.encoder),
        "head": {"type": head.type_name, "config": head.to_config()},
    }


register_architecture(
    Architecture(
        "clip_head",
        ClipHeadEntry,
        _build_clip_head,
        _describe_clip_head,
        protocols=("features", "encode_image", "encode_text", "logits", "class_weights"),
        check=_check_spec,
    )
)

# --------------------------------------------------------------------------- vlm


class VlmEntry(ArchitectureBase):
    type: Literal["vlm"]
    vision: dict[str, Any]
    projector: Literal["linear", "mlp2x_gelu"]
    language_model: dict[str, Any] = Field(min_length=1)


def _build_vlm(entry: Mapping[str, Any]) -> nn.Module:
    from zoo.backbones.vision import VisionSpec
    from zoo.backbones.vlm import VisionLanguageModel
    from zoo.specs import to_spec

    vision = to_spec(VisionSpec, entry["vision"])
    return VisionLanguageModel(vision, dict(entry["language_model"]), entry["projector"])


def _describe_vlm(module: nn.Module) -> dict[str, Any]:
    data = module.to_config()
    data["vision"]["checkpoint"] = None
    return data


def _check_vlm(entry: Mapping[str, Any]) -> None:
    check_spec_is_inert({"vision": entry.get("vision") or {}})
    remote = sorted(k for k in ("auto_map", "trust_remote_code") if k in entry["language_model"])
    if remote:
        raise UnsafeConfigError(f"config.json architecture.language_model may not set {remote}")


register_architecture(
    Architecture(
        "vlm",
        VlmEntry,
        _build_vlm,
        _describe_vlm,
        protocols=("features", "logits"),
        check=_check_vlm,
    )
)

# --------------------------------------------------------------------------- lora_adapter


class LoraEntry(Entry):
    """:class:`zoo.lora.LoraSpec` as stored in an adapter's entry."""

    r: int = Field(ge=1)
    alpha: float
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str] = Field(min_length=1)
    qv_only: bool
    modules_to_save: list[str] | None = None


class LoraAdapterEntry(ArchitectureBase):
    type: Literal["lora_adapter"]
    base: dict[str, Any]
    base_module: str = Field(pattern=r"^([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*)?$")
    lora: LoraEntry
    base_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


#: Base architectures an adapter package may name: their loaded model answers ``features``
#: and reads no text, which is what ``lora_adapter`` advertises.
ADAPTER_BASES = ("vision_encoder",)


def _check_lora_adapter(entry: Mapping[str, Any]) -> None:
    base = entry["base"]
    kind = base.get("type") if isinstance(base, Mapping) else None
    if kind not in ADAPTER_BASES:
        raise UnsafeConfigError(
            f"config.json architecture.base.type {kind!r}: an adapter's base must be one of "
            f"{list(ADAPTER_BASES)}"
        )
    validate_architecture(base)  # the base's own schema and checks (inert spec, ...)


def _build_lora_adapter(entry: Mapping[str, Any]) -> nn.Module:
    from zoo.hub.adapter import build_adapter

    return build_adapter(entry)


def _describe_lora_adapter(module: nn.Module) -> dict[str, Any]:
    from zoo.hub.adapter import describe_adapter

    return describe_adapter(module)


def _attach_lora_adapter(*args: Any, **kwargs: Any) -> nn.Module:
    from zoo.hub.adapter import attach_adapter

    return attach_adapter(*args, **kwargs)


register_architecture(
    Architecture(
        "lora_adapter",
        LoraAdapterEntry,
        _build_lora_adapter,
        _describe_lora_adapter,
        protocols=("features",),
        uses_text=False,
        check=_check_lora_adapter,
        attach=_attach_lora_adapter,
    )
)
