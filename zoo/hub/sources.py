"""What ``zoo export`` reads: Lightning checkpoints of ``zoo fit``, Hugging Face CLIP folders
and OpenAI / open_clip state dicts, each turned into an :class:`ExportSource`."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from zoo.backbones import DualEncoder, DualEncoderSpec
from zoo.backbones.convert import (
    UntrustedCheckpointError,
    dual_encoder_from_hf_clip,
    dual_encoder_from_openai_state_dict,
    hf_clip_spec,
    load_state_file,
    openai_clip_spec,
)
from zoo.backbones.dual_encoder import LOG_100
from zoo.hub.architectures import get_architecture, module_architecture
from zoo.hub.config import CLIP_BPE
from zoo.preprocess import PreprocessSpec
from zoo.specs import to_spec

SourceFormat = Literal["auto", "lightning", "hf-clip", "openai"]
# Files of a Hugging Face tokenizer folder (copied into the model folder's tokenizer/).
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


@dataclass
class ExportSource:
    """A model to export: the module its architecture describes (stored under ``backbone.``),
    extra heads (``head.<name>.``), preprocessing, tokenizer files and provenance.

    ``preprocess.tokenizer`` is ``"clip-bpe"``, ``None`` (image-only) or a local folder whose
    files get copied (``tokenizer_files`` limits which; empty = the whole folder).
    """

    model: nn.Module
    architecture: str
    preprocess: PreprocessSpec
    tokenizer_files: tuple[str, ...] = ()
    heads: dict[str, nn.Module] = field(default_factory=dict)
    paper: str = "clip"
    recipe: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def detect_format(path: Path) -> str:
    """``hf-clip`` for folders, ``lightning`` for ``.ckpt`` files, else ``openai``."""
    if path.is_dir():
        return "hf-clip"
    return "lightning" if path.suffix == ".ckpt" else "openai"


def _inert_spec(value: Any) -> DualEncoderSpec:
    """The encoder spec with ``vision.checkpoint`` cleared (weights come from the export)."""
    spec = copy.deepcopy(to_spec(DualEncoderSpec, value))
    spec.vision = dataclasses.replace(spec.vision, checkpoint=None)
    return spec


def _complete_converter_spec(spec: DualEncoderSpec, encoder: DualEncoder) -> DualEncoderSpec:
    """The converters' spec completion (``_build``): logit scale init and max from the weights."""
    scale = float(encoder.logit_scale.detach())
    spec.logit_scale_init = scale
    spec.logit_scale_max = max(LOG_100, scale)
    return spec


def _converter_preprocess(pre: dict[str, Any], tokenizer: str = CLIP_BPE) -> PreprocessSpec:
    """The converters' preprocessing dict (``zoo.backbones.convert``) as a spec."""
    crop = int(pre.get("crop") or pre["image_size"])
    resize = int(pre.get("resize") or crop)
    return PreprocessSpec(
        image_size=crop,
        resize=None if resize == crop else resize,
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        interpolation=str(pre["interpolation"]),
        tokenizer=tokenizer,
        context_length=int(pre["context_length"]),
    )


# --------------------------------------------------------------------------- Lightning


def _refuse_ckpt(path: Path) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{path} is a Lightning checkpoint, i.e. a pickle: unpickling can run arbitrary code, "
        "so it is refused by default. Checkpoints written by your own `zoo fit` runs are safe: "
        "opt in with --trust-pickle (trust_pickle=True). Never do so for a file from a source "
        "you do not trust."
    )


def _read_ckpt(path: Path) -> dict[str, Any]:
    try:  # zoo fit checkpoints hold only plain types: no code runs
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # e.g. dataclass hyper-parameters: a pickle the caller trusts
        return torch.load(path, map_location="cpu", weights_only=False)


def _import_class(class_path: str) -> type:
    from zoo.module import ZooModule

    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ZooModule)):
        raise ValueError(f"{class_path} is not a ZooModule subclass")
    return cls


def _find_recipe(path: Path) -> Path | None:
    """The ``config.yaml`` LightningCLI saved in the checkpoint's version dir."""
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _size_defaults(model: nn.Module) -> dict[str, int]:
    """Image size and context length of the model's spec: the preprocessing defaults when
    the datamodule hyper-parameters leave them unset."""
    spec = getattr(model, "spec", None)
    if spec is None and isinstance(getattr(model, "encoder", None), DualEncoder):
        spec = getattr(model.encoder, "spec", None)
    vision = getattr(spec, "vision", spec)
    text = getattr(spec, "text", None)
    out = {}
    if getattr(vision, "img_size", None):
        out["image_size"] = int(vision.img_size)
    if getattr(text, "context_length", None):
        out["context_length"] = int(text.context_length)
    return out


def _inert_hparams(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A dual-encoder ``encoder`` hyper-parameter with ``vision.checkpoint`` cleared, so the
    rebuild reads no file (the checkpoint's state dict holds the weights)."""
    if "encoder" not in kwargs:
        return kwargs
    encoder = kwargs["encoder"]
    if encoder is None or isinstance(encoder, DualEncoderSpec | dict):
        kwargs["encoder"] = _inert_spec(encoder)
    return kwargs


def from_lightning(
    path: Path,
    trust_pickle: bool = False,
    class_path: str | None = None,
    adapter_only: bool = False,
) -> ExportSource:
    """A ``zoo fit`` checkpoint: the module is rebuilt from ``hyper_parameters``
    (``_class_path`` + init args), its state loaded strictly. What is exported comes from the
    module (:func:`zoo.hub.architectures.module_architecture`: ``export_model()``, else the
    dual encoder at ``.encoder`` plus every other child with weights as a head);
    preprocessing and tokenizer from the spec the datamodule recorded in the checkpoint
    (``checkpoint["preprocess"]``; older checkpoints: rebuilt from
    ``datamodule_hyper_parameters`` by :meth:`PreprocessSpec.from_hparams`).

    ``adapter_only``: export the LoRA adapter of the module's peft-wrapped backbone alone
    (a ``lora_adapter``, :mod:`zoo.hub.adapter`), described against what ``export_model()``
    gives; ``provenance.base_sha256`` is then the digest of the base weights the adapter
    was trained on, computed from the checkpoint's weights."""
    if not trust_pickle:
        raise _refuse_ckpt(path)
    ckpt = _read_ckpt(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    class_path = class_path or hparams.get("_class_path")
    if not class_path:
        raise ValueError(
            f"{path} has no hyper_parameters._class_path (not written by `zoo fit`); pass the "
            "module class, e.g. --class-path lightning_modules.slip.SLIP"
        )
    kwargs = _inert_hparams({k: v for k, v in hparams.items() if not k.startswith("_")})
    module = _import_class(class_path)(**kwargs)
    # Modules whose structure depends on the data (a few-shot head built for the class
    # names) rebuild it from the checkpoint here, as Lightning's load_from_checkpoint does.
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    found = module_architecture(module)
    if found is None:
        raise ValueError(
            f"{class_path} has no export_model() and no DualEncoder at .encoder: nothing to "
            "export (see zoo.hub.architectures)"
        )
    arch_name, model = found
    size_model = model
    if adapter_only:
        from zoo.hub.adapter import ADAPTER, module_adapter

        if not callable(getattr(module, "export_model", None)):
            raise ValueError(f"{class_path} has no export_model(): no base for an adapter")
        arch_name, model = ADAPTER, module_adapter(module, found)
    heads: dict[str, nn.Module] = {}
    if not callable(getattr(module, "export_model", None)):  # CLIP / SLIP: extra heads
        heads = {
            name: child.eval()
            for name, child in module.named_children()
            if name != "encoder" and len(child.state_dict()) > 0
        }
    if isinstance(ckpt.get("preprocess"), dict):  # recorded by ZooModule.on_save_checkpoint
        preprocess = PreprocessSpec.from_config(ckpt["preprocess"])
    else:  # checkpoints written before the record existed
        preprocess = PreprocessSpec.from_hparams(
            dict(ckpt.get("datamodule_hyper_parameters") or {}), **_size_defaults(size_model)
        )
    if not get_architecture(arch_name).uses_text:
        preprocess = dataclasses.replace(preprocess, tokenizer=None)
    return ExportSource(
        model=model.eval(),
        architecture=arch_name,
        preprocess=preprocess,
        heads=heads,
        paper=class_path.split(".")[-2] if class_path.count(".") >= 1 else class_path,
        recipe=_find_recipe(path),
        provenance={
            "source_format": "lightning",
            "class_path": class_path,
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            # an adapted model (few-shot head on a frozen CLIP): the base weights' identity
            **({"base_sha256": module.base_sha256} if hasattr(module, "base_sha256") else {}),
            # an adapter: the digest its package checks the base against at load
            **({"base_sha256": model.fields["base_sha256"]} if adapter_only else {}),
        },
    )


# --------------------------------------------------------------------------- converters


def from_hf_clip(path: Path) -> ExportSource:
    """A Hugging Face CLIP folder; its tokenizer files, when present, are carried along."""
    from transformers import CLIPConfig

    encoder, pre = dual_encoder_from_hf_clip(path)
    spec = hf_clip_spec(CLIPConfig.from_pretrained(path, local_files_only=True))
    encoder.spec = _complete_converter_spec(spec, encoder)
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    files = tuple(f for f in HF_TOKENIZER_FILES if (path / f).is_file())
    return ExportSource(
        model=encoder,
        architecture="dual_encoder",
        preprocess=_converter_preprocess(pre, str(path) if has_tokenizer else CLIP_BPE),
        tokenizer_files=files if has_tokenizer else (),
        provenance={"source_format": "hf-clip"},
    )


def from_openai(
    path: Path,
    trust_pickle: bool = False,
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> ExportSource:
    """An OpenAI / open_clip CLIP ViT state dict (safetensors or torch file)."""
    state = load_state_file(path, trust_pickle=trust_pickle)
    spec = openai_clip_spec(state, quick_gelu, vision_heads, text_heads)
    encoder, pre = dual_encoder_from_openai_state_dict(state, quick_gelu, vision_heads, text_heads)
    encoder.spec = _complete_converter_spec(spec, encoder)
    return ExportSource(
        model=encoder,
        architecture="dual_encoder",
        preprocess=_converter_preprocess(pre),
        provenance={"source_format": "openai", "quick_gelu": quick_gelu},
    )


def read_source(
    path: str | Path,
    fmt: SourceFormat = "auto",
    trust_pickle: bool = False,
    class_path: str | None = None,
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    adapter_only: bool = False,
) -> ExportSource:
    """Read any supported source (``fmt="auto"``: see :func:`detect_format`);
    ``adapter_only``: a Lightning checkpoint's LoRA adapter alone (:func:`from_lightning`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"export source not found: {path}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if adapter_only and fmt != "lightning":
        raise ValueError(
            f"--adapter-only exports the LoRA adapter of a zoo fit checkpoint; {path} is "
            f"read as {fmt!r}, which has none"
        )
    if fmt == "lightning":
        return from_lightning(path, trust_pickle, class_path, adapter_only)
    if fmt == "hf-clip":
        return from_hf_clip(path)
    if fmt == "openai":
        return from_openai(path, trust_pickle, quick_gelu, vision_heads, text_heads)
    raise ValueError(f"unknown source format {fmt!r} (auto, lightning, hf-clip, openai)")
