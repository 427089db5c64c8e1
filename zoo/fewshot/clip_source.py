"""Where the frozen CLIP of a few-shot method comes from.

:class:`CLIPSource` names the weights: ``path`` plus ``format``, or ``encoder`` alone (a
:class:`~zoo.backbones.DualEncoderSpec` built with random weights from ``seed``: tests and
benchmarks). :func:`load_clip` returns the encoder, the preprocessing it expects (``None``
when the source does not say) and the sha256 that identifies its weights: the feature cache
keys on it and an exported adapted model records it, so a changed backbone is never mixed
up with the one a result came from. ``sha256`` in the source, when set, must match; for a
weights file it is checked before the file is parsed.

Formats (:data:`LOADERS`), and what ``format: auto`` (:func:`detect_source_format`) picks:

- ``zoo``: a model package of ``zoo export`` (installed name, ``local-dir:PATH`` or
  folder). Auto: ``local-dir:`` / ``hf-hub:`` paths, a folder with the zoo's
  ``config.json`` (it records an ``architecture``), any path that does not exist (a name);
- ``hf-clip``: a Hugging Face ``CLIPModel`` folder (``config.json`` + ``model.safetensors``
  …). Auto: any other folder;
- ``open_clip``: an open_clip state dict (``.safetensors``, ``.pt``, ``.bin``; OpenAI's key
  layout). Auto: a file whose name contains ``open_clip`` (open_clip's hub files,
  ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``);
- ``openai``: an OpenAI CLIP state dict or TorchScript archive (``RN50.pt``,
  ``ViT-B-16.pt``). Auto: any other file;
- ``lightning``: a ``zoo fit`` checkpoint of a CLIP-family module (``last.ckpt``), read as
  ``zoo export`` reads it (:func:`zoo.hub.sources.from_lightning`: the module rebuilt from
  its hyper-parameters, its dual encoder and the preprocessing its datamodule recorded).
  It is a pickle: only with ``trust_pickle`` (a checkpoint you made; a two-stage protocol
  passes its own earlier stage's). Auto: a file ending in ``.ckpt``.

ViTs and ResNets (RN50 …) both convert (:mod:`zoo.backbones.convert`). The two state-dict
formats differ only in what the file cannot say, the text activation: ``openai`` means
QuickGELU (every OpenAI model); ``open_clip`` reads ``quick_gelu`` (and head widths,
mean / std) from the ``open_clip_config.json`` open_clip writes next to its hub weights,
else ``quick_gelu`` must be given (open_clip's own models mostly use GELU, its
``-quickgelu`` models and OpenAI-trained weights QuickGELU; a wrong guess gives silently
wrong features, so there is no default). The sha256 is the weights file's
(:func:`zoo.hub.security.sha256_file`; a sharded Hugging Face checkpoint: the sha256 of its
shards' ``name sha256`` lines). Pickles are refused unless ``trust_pickle``: a TorchScript
archive or a torch file holding objects besides tensors raises
:class:`~zoo.hub.security.UntrustedCheckpointError`; tensor-only torch files load with
``weights_only=True`` and need no trust (:func:`zoo.backbones.convert.load_state_file`).

:func:`projection_affine` and :func:`pre_projection_features` expose the image projection as
an affine map ``f = x Wᵀ + b`` from the pre-projection feature x, for ViTs (``W = Pᵀ``,
``b = None``) and for the CLIP ResNets (the attention pool's ``c_proj``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.backbones import DualEncoder, DualEncoderSpec, build_dual_encoder
from zoo.preprocess import PreprocessSpec


@dataclass
class CLIPSource:
    """The frozen CLIP a few-shot method adapts.

    - ``path``: the weights (see ``format``); ``None`` builds ``encoder`` with random weights;
    - ``format``: ``auto`` (from the path: :func:`detect_source_format`), ``zoo`` (model
      package: installed name, ``local-dir:PATH`` or folder), ``hf-clip``, ``openai``,
      ``open_clip``, ``lightning`` (a ``zoo fit`` checkpoint) (see the module docstring; all
      registered in :data:`LOADERS`);
    - ``encoder``: the architecture when ``path`` is unset (random init from ``seed``);
    - ``sha256``: expected weights digest; a mismatch is refused;
    - ``trust_pickle``: allow pickled state dicts (never for files you did not make);
    - ``quick_gelu``: the text (and ViT) activation of a state dict: ``None`` takes the
      format's answer (``openai``: QuickGELU; ``open_clip``: its ``open_clip_config.json``);
    - ``vision_heads`` / ``text_heads``: attention heads of a state dict's towers when they
      are not ``width // 64`` (e.g. open_clip's ViT-H/g/bigG vision towers: 16).
    """

    path: str | None = None
    format: str = "auto"
    encoder: DualEncoderSpec | None = None
    seed: int = 0
    sha256: str | None = None
    trust_pickle: bool = False
    quick_gelu: bool | None = None
    vision_heads: int | None = None
    text_heads: int | None = None


@dataclass
class LoadedCLIP:
    encoder: DualEncoder
    preprocess: PreprocessSpec | None
    sha256: str


class WeightsMismatchError(RuntimeError):
    """The weights found differ from the ``sha256`` the recipe pinned."""


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, sorted by name):
    the identity of weights that do not come from a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_random(source: CLIPSource) -> LoadedCLIP:
    from zoo.specs import to_spec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        encoder = build_dual_encoder(to_spec(DualEncoderSpec, source.encoder))
    return LoadedCLIP(encoder, None, state_sha256(encoder))


def _load_zoo(source: CLIPSource) -> LoadedCLIP:
    from zoo.hub.loader import load
    from zoo.hub.registry import find_model_folder

    assert source.path is not None
    path = source.path
    if ":" not in path and Path(path).expanduser().exists():
        path = f"local-dir:{find_model_folder(path)}"
    model = load(path, trust_pickle=source.trust_pickle)
    encoder = model.encoder
    if not isinstance(encoder, DualEncoder):
        raise TypeError(
            f"{source.path} holds a {model.config['architecture']['type']!r} model; a few-shot "
            "method needs a dual encoder (CLIP-like image and text towers)"
        )
    return LoadedCLIP(encoder, model.preprocess, str(model.config["weights"]["sha256"]))


def _check_pin(source: CLIPSource, sha256: str) -> None:
    if source.sha256 and source.sha256 != sha256:
        raise WeightsMismatchError(
            f"model.clip weights ({source.path or 'random init'}) have sha256 {sha256}, but "
            f"the recipe pins {source.sha256}: a different backbone than the one the recipe "
            "was written for"
        )


def _preprocess_spec(pre: dict[str, Any], tokenizer: str | None = None) -> PreprocessSpec:
    """The converters' preprocessing dict as a :class:`PreprocessSpec`."""
    from zoo.hub.config import CLIP_BPE
    from zoo.hub.sources import _converter_preprocess

    return _converter_preprocess(pre, tokenizer or CLIP_BPE)


# Hugging Face weight files, in the order transformers prefers them.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_SHARDS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def hf_weights_sha256(folder: Path) -> str:
    """The sha256 of a Hugging Face model folder's weights: the file's, or for a sharded
    checkpoint the sha256 of its shards' ``"name sha256"`` lines (sorted by name)."""
    from zoo.hub.security import sha256_file

    for name in _HF_WEIGHTS:
        if (folder / name).is_file():
            return sha256_file(folder / name)
    for pattern in _HF_SHARDS:
        shards = sorted(folder.glob(pattern))
        if shards:
            lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in shards)
            return hashlib.sha256(lines.encode()).hexdigest()
    raise FileNotFoundError(
        f"no Hugging Face weights in {folder} (expected one of {', '.join(_HF_WEIGHTS)} or "
        "shards model-00001-of-0000N.safetensors)"
    )


def _load_hf_clip(source: CLIPSource) -> LoadedCLIP:
    """A Hugging Face ``CLIPModel`` folder (ViT towers), read offline; its tokenizer files,
    when present, are the preprocessing's tokenizer."""
    from zoo.backbones.convert import dual_encoder_from_hf_clip

    assert source.path is not None
    folder = Path(source.path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.clip.path: no Hugging Face CLIP folder (config.json) at {folder}"
        )
    sha256 = hf_weights_sha256(folder)
    _check_pin(source, sha256)
    encoder, pre = dual_encoder_from_hf_clip(folder)
    has_tokenizer = any((folder / f).is_file() for f in _HF_TOKENIZER_FILES)
    return LoadedCLIP(
        encoder, _preprocess_spec(pre, str(folder) if has_tokenizer else None), sha256
    )


#: The file open_clip writes next to its hub weights (``model_cfg``, ``preprocess_cfg``).
OPEN_CLIP_CONFIG = "open_clip_config.json"


def _open_clip_settings(path: Path) -> dict[str, Any]:
    """What ``open_clip_config.json`` next to ``path`` says about what a state dict cannot:
    ``quick_gelu``, ``vision_heads`` / ``text_heads``, ``mean`` / ``std`` /
    ``interpolation``; empty when there is no such file."""
    file = path.parent / OPEN_CLIP_CONFIG
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text())
        model = config.get("model_cfg", config)
        vision, text = model.get("vision_cfg", {}), model.get("text_cfg", {})
        pre = config.get("preprocess_cfg", {})
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{file} is not an open_clip config: {err}") from err
    out: dict[str, Any] = {"quick_gelu": bool(model.get("quick_gelu", False))}
    if (
        vision.get("width")
        and vision.get("head_width")
        and not isinstance(vision.get("layers"), list)
    ):
        out["vision_heads"] = int(vision["width"]) // int(vision["head_width"])
    if text.get("heads"):
        out["text_heads"] = int(text["heads"])
    for key in ("mean", "std", "interpolation"):
        if pre.get(key) is not None:
            out[key] = tuple(pre[key]) if key != "interpolation" else str(pre[key])
    return out


def _load_state_dict(source: CLIPSource, fmt: str) -> LoadedCLIP:
    """An OpenAI-layout CLIP state dict (ViT or ResNet) in a file (``openai`` / ``open_clip``)."""
    from zoo.backbones.convert import dual_encoder_from_openai_state_dict, load_state_file
    from zoo.hub.security import sha256_file

    assert source.path is not None
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.clip.path: no weights file at {path}")
    settings = _open_clip_settings(path) if fmt == "open_clip" else {}
    quick_gelu = source.quick_gelu
    if quick_gelu is None:
        quick_gelu = settings.get("quick_gelu", True if fmt == "openai" else None)
    if quick_gelu is None:
        raise ValueError(
            f"model.clip: the open_clip state dict {path} does not record its text activation "
            f"and there is no {OPEN_CLIP_CONFIG} next to it; set model.clip.quick_gelu (true "
            "for OpenAI-trained weights and open_clip `-quickgelu` models, false for open_clip's "
            "other models)"
        )
    sha256 = sha256_file(path)
    _check_pin(source, sha256)
    state = load_state_file(path, trust_pickle=source.trust_pickle)
    encoder, pre = dual_encoder_from_openai_state_dict(
        state,
        quick_gelu=quick_gelu,
        vision_heads=source.vision_heads or settings.get("vision_heads"),
        text_heads=source.text_heads or settings.get("text_heads"),
    )
    pre.update({k: settings[k] for k in ("mean", "std", "interpolation") if k in settings})
    return LoadedCLIP(encoder, _preprocess_spec(pre), sha256)


def _load_lightning(source: CLIPSource) -> LoadedCLIP:
    """A ``zoo fit`` checkpoint whose module exports a dual encoder."""
    from zoo.hub.security import sha256_file
    from zoo.hub.sources import from_lightning

    assert source.path is not None
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.clip.path: no checkpoint file at {path}")
    sha256 = sha256_file(path)
    _check_pin(source, sha256)
    exported = from_lightning(path, trust_pickle=source.trust_pickle)
    if not isinstance(exported.model, DualEncoder):
        raise TypeError(
            f"{path} holds a {exported.architecture!r} model; a dual encoder (CLIP-like image "
            "and text towers) is needed here"
        )
    return LoadedCLIP(exported.model, exported.preprocess, sha256)


#: format name -> loader.
LOADERS: dict[str, Callable[[CLIPSource], LoadedCLIP]] = {
    "zoo": _load_zoo,
    "hf-clip": _load_hf_clip,
    "openai": lambda source: _load_state_dict(source, "openai"),
    "open_clip": lambda source: _load_state_dict(source, "open_clip"),
    "lightning": _load_lightning,
}


def detect_source_format(path: str) -> str:
    """The format ``format: auto`` picks for ``path`` (see the module docstring): ``zoo``
    for model packages and names, ``hf-clip`` for other folders, ``open_clip`` for files
    named like open_clip's hub weights, ``openai`` for other files."""
    if path.startswith(("local-dir:", "hf-hub:")):
        return "zoo"
    p = Path(path).expanduser()
    if p.is_dir():
        from zoo.hub.config import CONFIG_FILE

        if _is_zoo_config(p / CONFIG_FILE) or any(p.glob(f"zoo_model_*/{CONFIG_FILE}")):
            return "zoo"
        return "hf-clip"
    if p.is_file():
        if p.suffix == ".ckpt":
            return "lightning"
        return "open_clip" if "open_clip" in p.name else "openai"
    return "zoo"  # an installed package name


def _is_zoo_config(file: Path) -> bool:
    """Whether ``file`` is a ``config.json`` of ``zoo export`` (a Hugging Face folder has a
    ``config.json`` too: the zoo's records an ``architecture``)."""
    if not file.is_file():
        return False
    try:
        config = json.loads(file.read_text())
    except ValueError:
        return False
    return isinstance(config, dict) and "architecture" in config


def load_clip(source: CLIPSource | dict[str, Any] | None) -> LoadedCLIP:
    """The frozen CLIP ``source`` names (see :class:`CLIPSource`), in eval mode."""
    from zoo.specs import to_spec

    source = to_spec(CLIPSource, source)
    if source.path is None:
        if source.encoder is None:
            raise ValueError(
                "model.clip needs a `path` to pretrained weights (or, for tests, an `encoder` "
                "spec to build with random weights)"
            )
        loaded = _load_random(source)
    else:
        fmt = detect_source_format(source.path) if source.format == "auto" else source.format
        if fmt not in LOADERS:
            raise ValueError(f"model.clip.format {fmt!r} is unknown; known: {sorted(LOADERS)}")
        loaded = LOADERS[fmt](source)
    _check_pin(source, loaded.sha256)
    loaded.encoder.eval()
    return loaded


def projection_affine(encoder: DualEncoder) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of the image projection, ``f = x Wᵀ + b`` with x the pre-projection
    feature (:func:`pre_projection_features`) and f ``encode_image``: ``W`` is
    ``(D_embed, D_trunk)``, ``b`` ``None`` for a bias-free projection.

    - ViT CLIP: ``f = x @ P`` (``image_projection``), so ``W = Pᵀ``, ``b = None``;
    - CLIP ResNets (RN50 …): x is the attention pool's output before ``c_proj``, so
      ``W`` / ``b`` are ``c_proj``'s weight (1024 × 2048 for RN50) and bias, composed with
      ``image_projection`` when that is not the identity it is after conversion.

    SgVA-CLIP recovers x from f through ``pinv(Wᵀ)``: ``x = (f − b) pinv(Wᵀ)``.
    """
    from zoo.backbones.convert import clip_resnet_attention_pool

    proj = encoder.image_projection.detach()
    pool = clip_resnet_attention_pool(encoder.visual)
    if pool is None:
        return proj.t(), None
    weight = pool.proj.weight.detach()
    bias = None if pool.proj.bias is None else pool.proj.bias.detach()
    if torch.equal(proj, torch.eye(*proj.shape, dtype=proj.dtype, device=proj.device)):
        return weight, bias
    return proj.t() @ weight, None if bias is None else bias @ proj


def pre_projection_features(encoder: DualEncoder, images: torch.Tensor) -> torch.Tensor:
    """The pre-projection image feature x (:func:`projection_affine`: ``x Wᵀ + b`` is
    ``encode_image``): ``image_trunk`` for a ViT; for a CLIP ResNet the attention pool's
    output before ``c_proj`` (2048-d for RN50)."""
    from zoo.backbones.convert import clip_resnet_attention_pool

    pool = clip_resnet_attention_pool(encoder.visual)
    if pool is None:
        return encoder.image_trunk(images)
    if encoder.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return pool(encoder.visual.forward_features(images), pre_logits=True)
