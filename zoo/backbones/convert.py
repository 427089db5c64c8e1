"""Weight converters: Hugging Face CLIP, OpenAI / open_clip CLIP ViTs and ResNets → DualEncoder.

Every converter infers a :class:`DualEncoderSpec` (timm ViT vision tower with CLIP's
``pre_norm``, Hugging Face CLIP text tower), builds the zoo model, maps every weight and
loads it with ``strict=True``, so a weight that is not mapped is an error, never dropped.
Each returns ``(model, preprocess)``; ``preprocess`` holds what the inputs need:
``image_size``, ``resize`` (shortest edge), ``crop``, ``mean``, ``std``, ``interpolation``
and ``context_length``.

Key layouts (zoo ← source):

============================  ====================================  =======================================
zoo (timm ViT / HF text)      OpenAI / open_clip                    Hugging Face ``CLIPModel``
============================  ====================================  =======================================
visual.patch_embed.proj       visual.conv1                          vision_model.embeddings.patch_embedding
visual.cls_token (1, 1, D)    visual.class_embedding (D,)           vision_model.embeddings.class_embedding
visual.pos_embed (1, N, D)    visual.positional_embedding (N, D)    ...embeddings.position_embedding (N, D)
visual.norm_pre               visual.ln_pre                         vision_model.pre_layrnorm
visual.blocks.i.attn.qkv      ...resblocks.i.attn.in_proj_*         ...layers.i.self_attn.{q,k,v}_proj (fused)
visual.blocks.i.attn.proj     ...resblocks.i.attn.out_proj          ...layers.i.self_attn.out_proj
visual.blocks.i.norm1/norm2   ...resblocks.i.ln_1/ln_2              ...layers.i.layer_norm1/layer_norm2
visual.blocks.i.mlp.fc1/fc2   ...resblocks.i.mlp.c_fc/c_proj        ...layers.i.mlp.fc1/fc2
visual.norm                   visual.ln_post                        vision_model.post_layernorm
image_projection (in, out)    visual.proj (in, out)                 visual_projection.weight.T
text.model.*                  token_embedding, positional_embed…,   text_model.* (same module)
                              transformer.resblocks.*, ln_final
text_projection (in, out)     text_projection (in, out)             text_projection.weight.T
logit_scale                   logit_scale                           logit_scale
============================  ====================================  =======================================

**ResNets** (OpenAI's ModifiedResNet: RN50, RN101, RN50x4/x16/x64, the backbone of CoOp's
and Tip-Adapter's headline tables). The vision tower is timm's byobnet CLIP ResNet
(``resnet50_clip`` …, chosen by stage depths; another width is a ``width_factor``), built
from its config, and the OpenAI keys are renamed by timm's own OpenAI-CLIP checkpoint filter
(``timm.models.byobnet.checkpoint_filter_fn``: ``conv1``/``bn1`` → ``stem.conv1.conv``/``.bn``,
``layer{i}.{j}.conv{n}`` → ``stages.{i-1}.{j}.conv{n}_1x1|kxk``, ``downsample.{0,1}`` →
``shortcut.conv.{conv,bn}``, ``attnpool.{q,k,v,c}_proj`` → ``head.{q,k,v,proj}``). The
attention pool's output projection ``c_proj`` (2048 → 1024 for RN50, *with* a bias) already
maps into the joint space, so it stays in the tower (the spec keeps timm's head:
``kwargs: {num_classes: 1024}``) and the DualEncoder's bias-free ``image_projection`` is the
identity (``image_trunk`` = ``encode_image`` for these models). The pre-projection feature
x (the attention output before ``c_proj``) and the affine map ``f = x Wᵀ + b`` are
``zoo.fewshot.clip_source.pre_projection_features`` / ``projection_affine``. Export to the
OpenAI layout inverts the renaming (checked against timm's filter) and folds a non-identity
``image_projection`` P into ``c_proj`` (W ← Pᵀ W, b ← b P).

Pickle is never unpickled unless the caller passes ``trust_pickle=True``: safetensors and
tensor-only torch files load with ``weights_only=True``; OpenAI's TorchScript ``.pt``
archives and pickles holding arbitrary objects are refused with :class:`UntrustedCheckpointError`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from zoo.backbones.dual_encoder import LOG_100, DualEncoder, DualEncoderSpec, build_dual_encoder
from zoo.backbones.text import CLIPTextTower, TextSpec
from zoo.backbones.vision import VisionSpec
from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # the one definition
from zoo.hub.security import UntrustedCheckpointError

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "UntrustedCheckpointError",
    "clip_resnet_attention_pool",
    "dual_encoder_from_hf_clip",
    "dual_encoder_from_openai_state_dict",
    "export_openai_state_dict",
    "hf_clip_spec",
    "is_openai_resnet_state",
    "load_state_file",
    "openai_clip_spec",
    "tiny_openai_state_dict",
]

#: timm architecture used for every converted CLIP vision tower: a ViT with ``pre_norm=True``
#: (OpenAI's ln_pre; timm then drops the patch-embedding bias, as CLIP's conv1 has none),
#: LayerNorm eps 1e-5, class-token pooling after the final norm. Sizes come from overrides.
CLIP_VIT_MODEL_NAME = "vit_base_patch16_clip_224"
_TIMM_CLIP_LN_EPS = 1e-5

# PIL resampling codes as stored in Hugging Face ``preprocessor_config.json`` (``resample``).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# Keys of OpenAI's TorchScript state dict that are metadata, not weights (dropped by OpenAI's
# own ``build_model`` as well).
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

# Per-block renames: OpenAI residual block → timm ViT block / Hugging Face CLIP encoder layer.
_OPENAI_TO_TIMM_BLOCK = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPENAI_TO_HF_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_HF_TO_TIMM_BLOCK = {
    "layer_norm1.weight": "norm1.weight",
    "layer_norm1.bias": "norm1.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "layer_norm2.weight": "norm2.weight",
    "layer_norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")

# Non-block (vision) renames: OpenAI → zoo. cls/pos embeddings also change shape.
_OPENAI_TO_ZOO_VISION = {
    "visual.conv1.weight": "visual.patch_embed.proj.weight",
    "visual.class_embedding": "visual.cls_token",
    "visual.positional_embedding": "visual.pos_embed",
    "visual.ln_pre.weight": "visual.norm_pre.weight",
    "visual.ln_pre.bias": "visual.norm_pre.bias",
    "visual.ln_post.weight": "visual.norm.weight",
    "visual.ln_post.bias": "visual.norm.bias",
    "visual.proj": "image_projection",
}
_OPENAI_TO_ZOO_TEXT = {
    "token_embedding.weight": "text.model.embeddings.token_embedding.weight",
    "positional_embedding": "text.model.embeddings.position_embedding.weight",
    "ln_final.weight": "text.model.final_layer_norm.weight",
    "ln_final.bias": "text.model.final_layer_norm.bias",
    "text_projection": "text_projection",
    "logit_scale": "logit_scale",
}
_HF_TO_ZOO_VISION = {
    "vision_model.embeddings.patch_embedding.weight": "visual.patch_embed.proj.weight",
    "vision_model.embeddings.class_embedding": "visual.cls_token",
    "vision_model.embeddings.position_embedding.weight": "visual.pos_embed",
    "vision_model.pre_layrnorm.weight": "visual.norm_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.norm_pre.bias",
    "vision_model.post_layernorm.weight": "visual.norm.weight",
    "vision_model.post_layernorm.bias": "visual.norm.bias",
}
# Zoo keys whose tensor gains leading singleton dims in timm: (D,) → (1, 1, D), (N, D) → (1, N, D).
_TIMM_TOKEN_PARAMS = ("visual.cls_token", "visual.pos_embed")


# --------------------------------------------------------------------------- helpers


def _mlp_ratio(width: int, hidden: int) -> float:
    """The ratio r with ``int(width * r) == hidden`` (what timm and the text tower compute)."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # float round-off, e.g. 1408 * (6144 / 1408)
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _vision_spec(
    *,
    image_size: int,
    patch_size: int,
    width: int,
    layers: int,
    heads: int,
    mlp_hidden: int,
    act: str,
    eps: float,
) -> VisionSpec:
    """A CLIP ViT as a timm ``VisionSpec`` (pre-norm, token pooling, final norm)."""
    kwargs: dict[str, Any] = {
        "pre_norm": True,
        "global_pool": "token",
        "final_norm": True,
        "act_layer": act,
    }
    return VisionSpec(
        model_name=CLIP_VIT_MODEL_NAME,
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=width,
        depth=layers,
        num_heads=heads,
        mlp_ratio=_mlp_ratio(width, mlp_hidden),
        norm_eps=None if eps == _TIMM_CLIP_LN_EPS else eps,
        kwargs=kwargs,
    )


def _check_act(act: str, where: str) -> str:
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"{where}: unsupported activation {act!r} (expected quick_gelu or gelu)")
    return act


def _new_model(spec: DualEncoderSpec, logit_scale: float) -> DualEncoder:
    """The zoo model for ``spec`` (random weights), its logit-scale init / clamp set from the
    converted weights."""
    spec.logit_scale_init = logit_scale
    spec.logit_scale_max = max(LOG_100, logit_scale)
    return build_dual_encoder(spec)


def _load(model: DualEncoder, state: dict[str, Tensor]) -> DualEncoder:
    """Load ``state`` (zoo keys) into ``model`` strictly."""
    target = model.state_dict()
    for key in _TIMM_TOKEN_PARAMS:
        if key in state and key in target:
            state[key] = state[key].reshape(target[key].shape)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _build(spec: DualEncoderSpec, state: dict[str, Tensor], logit_scale: float) -> DualEncoder:
    """Build the zoo model for ``spec`` and load ``state`` (zoo keys) strictly."""
    return _load(_new_model(spec, logit_scale), state)


def _preprocess(
    image_size: int,
    context_length: int,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str = "bicubic",
) -> dict[str, Any]:
    return {
        "image_size": image_size,
        "resize": resize or image_size,
        "crop": crop or image_size,
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "interpolation": interpolation,
        "context_length": context_length,
    }


# --------------------------------------------------------------------------- Hugging Face


def hf_clip_spec(config: CLIPConfig) -> DualEncoderSpec:
    """The zoo architecture of a Hugging Face ``CLIPConfig`` (ViT vision tower only).

    Text pooling is ``"argmax"`` when ``eos_token_id`` is 2 (legacy configs, where Hugging Face
    itself pools at the argmax) or the largest id (argmax and first-EOS agree), else ``"eos"``.
    """
    vc, tc = config.vision_config, config.text_config
    vision = _vision_spec(
        image_size=int(vc.image_size),
        patch_size=int(vc.patch_size),
        width=vc.hidden_size,
        layers=vc.num_hidden_layers,
        heads=vc.num_attention_heads,
        mlp_hidden=vc.intermediate_size,
        act=_check_act(vc.hidden_act, "vision_config.hidden_act"),
        eps=float(vc.layer_norm_eps),
    )
    eos = int(tc.eos_token_id)
    text = TextSpec(
        vocab_size=tc.vocab_size,
        width=tc.hidden_size,
        layers=tc.num_hidden_layers,
        heads=tc.num_attention_heads,
        context_length=tc.max_position_embeddings,
        mlp_ratio=_mlp_ratio(tc.hidden_size, tc.intermediate_size),
        act=_check_act(tc.hidden_act, "text_config.hidden_act"),
        layer_norm_eps=float(tc.layer_norm_eps),
        eos_token_id=eos,
        pooling="argmax" if eos in (2, tc.vocab_size - 1) else "eos",
    )
    return DualEncoderSpec(vision=vision, text=text, embed_dim=config.projection_dim)


def _hf_state_to_zoo(state: Mapping[str, Tensor], vision_layers: int) -> dict[str, Tensor]:
    """Map a Hugging Face ``CLIPModel`` state dict to zoo keys; unmapped keys are an error."""
    src = dict(state)
    out: dict[str, Tensor] = {}
    for hf_key, zoo_key in _HF_TO_ZOO_VISION.items():
        out[zoo_key] = src.pop(hf_key)
    for i in range(vision_layers):
        hf, zoo = f"vision_model.encoder.layers.{i}.", f"visual.blocks.{i}."
        for hf_name, zoo_name in _HF_TO_TIMM_BLOCK.items():
            out[zoo + zoo_name] = src.pop(hf + hf_name)
        for kind in ("weight", "bias"):
            qkv = [src.pop(f"{hf}self_attn.{p}.{kind}") for p in _QKV]
            out[f"{zoo}attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
    out["image_projection"] = src.pop("visual_projection.weight").T
    out["text_projection"] = src.pop("text_projection.weight").T
    out["logit_scale"] = src.pop("logit_scale").reshape(1)
    for key in [k for k in src if k.startswith("text_model.")]:
        out["text.model." + key.removeprefix("text_model.")] = src.pop(key)
    if src:
        raise ValueError(f"Hugging Face CLIP weights with no zoo counterpart: {sorted(src)}")
    return out


def _hf_preprocess(folder: Path | None, image_size: int, context_length: int) -> dict[str, Any]:
    """Preprocessing from ``preprocessor_config.json`` if the folder has one, else OpenAI's."""
    file = folder / "preprocessor_config.json" if folder is not None else None
    if file is None or not file.is_file():
        return _preprocess(image_size, context_length)
    cfg = json.loads(file.read_text())
    size, crop = cfg.get("size"), cfg.get("crop_size")
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width"))
    resample = cfg.get("resample", 3)
    return _preprocess(
        image_size,
        context_length,
        mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
        std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        resize=int(size) if size else None,
        crop=int(crop) if crop and cfg.get("do_center_crop", True) else None,
        interpolation=_PIL_RESAMPLE.get(resample, str(resample)),
    )


def dual_encoder_from_hf_clip(source: str | Path | CLIPModel) -> tuple[DualEncoder, dict[str, Any]]:
    """Convert a Hugging Face ``CLIPModel`` (ViT) into a :class:`DualEncoder`.

    Args:
        source: a local folder written by ``save_pretrained`` (``config.json`` and
            ``model.safetensors`` or ``pytorch_model.bin``; never downloaded) or an in-memory
            ``transformers.CLIPModel``.

    Returns:
        The model (eval mode, float32) whose ``encode_image`` / ``encode_text`` equal
        ``get_image_features`` / ``get_text_features``, and the preprocessing dict (from the
        folder's ``preprocessor_config.json`` when present, else OpenAI CLIP's).
    """
    from transformers import CLIPModel

    folder: Path | None = None
    if isinstance(source, CLIPModel):
        hf_model = source
    elif isinstance(source, str | Path):
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face CLIP model folder (config.json) at {folder}")
        hf_model = CLIPModel.from_pretrained(folder, local_files_only=True)
    else:
        raise TypeError(f"expected a folder or a transformers.CLIPModel, got {type(source)}")
    config = hf_model.config
    spec = hf_clip_spec(config)
    state = _hf_state_to_zoo(hf_model.state_dict(), config.vision_config.num_hidden_layers)
    model = _build(spec, state, float(hf_model.logit_scale.detach()))
    return model, _hf_preprocess(folder, spec.vision.img_size, spec.text.context_length)


# --------------------------------------------------------------------------- OpenAI / open_clip


def load_state_file(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a state dict from a local ``.safetensors`` or torch file without unpickling code.

    A TorchScript archive (OpenAI's released ``.pt``) is read with ``torch.jit.load`` and a
    pickle holding non-tensor objects with ``weights_only=False``, both only when
    ``trust_pickle=True`` (unpickling can execute arbitrary code). Training checkpoints with a
    ``"state_dict"`` entry and a DDP ``module.`` prefix are unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"{path} is a TorchScript archive (e.g. OpenAI's CLIP .pt): reading it runs "
                "pickled code, so it is refused. Pass trust_pickle=True if you trust its source, "
                "or convert it once to .safetensors."
            )
        state: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not trust_pickle:
                raise UntrustedCheckpointError(
                    f"{path} holds pickled objects besides tensors, and unpickling them can run "
                    "arbitrary code, so it is refused. Pass trust_pickle=True if you trust its "
                    "source, or save the state dict as .safetensors."
                ) from err
            state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``constants.pkl`` record (as torch checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


def _count_blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    """Number of residual blocks ``{prefix}{i}.`` in ``state``."""
    return len({k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)})


def openai_clip_spec(
    state: Mapping[str, Tensor],
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> DualEncoderSpec:
    """Infer the architecture of an OpenAI-layout CLIP (ViT or ResNet) from tensor shapes.

    As OpenAI's ``build_model``: widths, depths, patch size, grid → image size, embed dim,
    context length and vocabulary come from shapes; head counts cannot, and default to
    ``width // 64`` (right for OpenAI's models and open_clip's text towers, but open_clip's
    ViT-H/g/bigG vision towers have 16 heads: pass ``vision_heads``). A ResNet's attention
    pool always has 64-wide heads in timm (OpenAI's ``width * 32 // 64`` heads).
    ``quick_gelu`` is the text (and ViT) activation; ResNets use ReLU in the vision tower.
    """
    act = "quick_gelu" if quick_gelu else "gelu"
    if is_openai_resnet_state(state):
        vision = _resnet_vision_spec(state, vision_heads)
    elif "visual.proj" in state:
        vision = _vit_vision_spec(state, act, vision_heads)
    else:
        raise ValueError(
            "not an OpenAI-layout CLIP state dict: neither a ViT ('visual.proj') nor a "
            "ResNet ('visual.attnpool.*', 'visual.layer1.*')"
        )
    text = _openai_text_spec(state, act, text_heads)
    return DualEncoderSpec(vision=vision, text=text, embed_dim=state["text_projection"].shape[1])


def _vit_vision_spec(state: Mapping[str, Tensor], act: str, heads: int | None) -> VisionSpec:
    conv = state["visual.conv1.weight"]
    vision_width, patch_size = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return _vision_spec(
        image_size=patch_size * grid,
        patch_size=patch_size,
        width=vision_width,
        layers=_count_blocks(state, "visual.transformer.resblocks."),
        heads=heads or vision_width // 64,
        mlp_hidden=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        act=act,
        eps=1e-5,
    )


def _openai_text_spec(state: Mapping[str, Tensor], act: str, heads: int | None) -> TextSpec:
    text_width = state["ln_final.weight"].shape[0]
    vocab_size = state["token_embedding.weight"].shape[0]
    return TextSpec(
        vocab_size=vocab_size,
        width=text_width,
        layers=_count_blocks(state, "transformer.resblocks."),
        heads=heads or text_width // 64,
        context_length=state["positional_embedding"].shape[0],
        mlp_ratio=_mlp_ratio(text_width, state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        act=act,
        layer_norm_eps=1e-5,
        eos_token_id=vocab_size - 1,
        pooling="argmax",
    )


# --------------------------------------------------------------------------- OpenAI ResNets

#: Keys every OpenAI-layout CLIP ResNet has (stem, attention pool).
_RESNET_REQUIRED = (
    "visual.conv1.weight",
    "visual.conv3.weight",
    "visual.attnpool.positional_embedding",
    "visual.attnpool.c_proj.weight",
)
#: The width of one attention head of timm's CLIP ResNet pool (``AttentionPool2d`` head_dim).
_RESNET_POOL_HEAD_DIM = 64


def is_openai_resnet_state(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` is an OpenAI-layout CLIP ResNet (ModifiedResNet) state dict."""
    return any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state)


def _timm_clip_resnets() -> dict[tuple[int, ...], tuple[str, float]]:
    """Stage depths → (timm model name, width factor) of timm's CLIP ResNets with attention
    pooling (byobnet ``resnet50_clip``, ``resnet101_clip``, ``resnet50x4_clip`` …)."""
    from timm.models import byobnet

    return {
        tuple(int(block.d) for block in cfg.blocks): (name, float(cfg.width_factor))
        for name, cfg in byobnet.model_cfgs.items()
        if name.endswith("_clip") and cfg.head_type == "attn_abs"
    }


def _resnet_vision_spec(state: Mapping[str, Tensor], heads: int | None) -> VisionSpec:
    """The timm CLIP ResNet of an OpenAI ModifiedResNet state dict, from tensor shapes."""
    missing = [k for k in _RESNET_REQUIRED if k not in state]
    if missing:
        raise ValueError(f"incomplete OpenAI-layout CLIP ResNet state dict: missing {missing}")
    width = int(state["visual.conv3.weight"].shape[0])  # the stem's output = ModifiedResNet width
    depths = tuple(_count_blocks(state, f"visual.layer{i}.") for i in range(1, 5))
    known = _timm_clip_resnets()
    if depths not in known:
        raise NotImplementedError(
            f"a CLIP ResNet with stage depths {depths}: timm builds CLIP ResNets with depths "
            f"{sorted(known)} ({', '.join(name for name, _ in known.values())})"
        )
    name, width_factor = known[depths]
    output_dim, pool_width = state["visual.attnpool.c_proj.weight"].shape
    if heads is not None and heads * _RESNET_POOL_HEAD_DIM != pool_width:
        raise NotImplementedError(
            f"vision_heads={heads}: timm's CLIP ResNet attention pool has "
            f"{_RESNET_POOL_HEAD_DIM}-wide heads, i.e. {pool_width // _RESNET_POOL_HEAD_DIM} "
            f"heads for width {pool_width} (as OpenAI's ModifiedResNet)"
        )
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    kwargs: dict[str, Any] = {"num_classes": int(output_dim)}  # keep the pool's c_proj
    if width / 64 != width_factor:  # timm's configs are 64 channels wide at width factor 1
        kwargs["width_factor"] = width / 64
    return VisionSpec(model_name=name, img_size=32 * grid, kwargs=kwargs)


def clip_resnet_attention_pool(visual: nn.Module) -> nn.Module | None:
    """The attention-pool head (timm ``AttentionPool2d``, its ``proj`` = OpenAI's
    ``c_proj``) of a CLIP ResNet vision tower, or ``None`` for any other tower."""
    from timm.layers import AttentionPool2d
    from timm.models.byobnet import ByobNet

    head = getattr(visual, "head", None)
    if (
        isinstance(visual, ByobNet)
        and isinstance(head, AttentionPool2d)
        and isinstance(head.proj, nn.Linear)
    ):
        return head
    return None


def _openai_resnet_state_to_zoo(
    state: Mapping[str, Tensor], model: DualEncoder, text_layers: int
) -> dict[str, Tensor]:
    """Map an OpenAI-layout CLIP ResNet state dict to the keys of ``model`` (built from its
    spec): vision through timm's OpenAI-CLIP filter, text as for the ViTs."""
    from timm.models.byobnet import checkpoint_filter_fn

    src = {k: v for k, v in state.items() if k not in _OPENAI_METADATA_KEYS}
    visual = {k: src.pop(k) for k in [k for k in src if k.startswith("visual.")]}
    # timm's filter renames keys (values pass through): run it on the names themselves
    names = checkpoint_filter_fn({k: k for k in visual}, model.visual)  # timm key -> OpenAI
    target = model.visual.state_dict()
    unmapped = sorted(
        {k for k in visual if k not in names.values()}  # dropped by the filter
        | {openai for timm_key, openai in names.items() if timm_key not in target}
    )
    if unmapped:
        raise ValueError(f"CLIP ResNet weights with no timm counterpart: {unmapped}")
    mapped = {timm_key: visual[openai] for timm_key, openai in names.items()}
    for key, value in target.items():  # BatchNorm step counters: unused in eval, often absent
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(value)
    out = {f"visual.{k}": v for k, v in mapped.items()}
    out.update(_openai_text_state_to_zoo(src, text_layers))
    out["image_projection"] = torch.eye(model.vision_width, model.embed_dim)
    if src:
        raise ValueError(f"weights with no zoo counterpart: {sorted(src)}")
    return out


def _timm_resnet_key_to_openai(key: str) -> str:
    """A timm CLIP ResNet weight name → OpenAI's (the inverse of timm's filter)."""
    if m := re.fullmatch(r"stem\.conv(\d)\.(conv|bn)\.(.+)", key):
        return f"{m[2]}{m[1]}.{m[3]}"
    if m := re.fullmatch(r"stages\.(\d+)\.(\d+)\.conv(\d)_(?:1x1|kxk)\.(conv|bn)\.(.+)", key):
        return f"layer{int(m[1]) + 1}.{m[2]}.{m[4]}{m[3]}.{m[5]}"
    if m := re.fullmatch(r"stages\.(\d+)\.(\d+)\.shortcut\.conv\.(conv|bn)\.(.+)", key):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{int(m[3] == 'bn')}.{m[4]}"
    if m := re.fullmatch(r"head\.(q|k|v|proj)\.(weight|bias)", key):
        return f"attnpool.{'c' if m[1] == 'proj' else m[1]}_proj.{m[2]}"
    if key == "head.pos_embed":
        return "attnpool.positional_embedding"
    raise ValueError(f"timm CLIP ResNet weight {key!r} has no OpenAI counterpart")


def _export_resnet_visual(model: DualEncoder) -> dict[str, Tensor]:
    """The vision tower of a CLIP ResNet DualEncoder in OpenAI's layout, with a non-identity
    ``image_projection`` P folded into ``c_proj`` (``(x Wᵀ + b) P = x (Pᵀ W)ᵀ + b P``)."""
    from timm.models.byobnet import checkpoint_filter_fn

    zoo = {k: v.detach().clone() for k, v in model.visual.state_dict().items()}
    names = {_timm_resnet_key_to_openai(k): k for k in zoo}
    # timm's own filter must map every name back (guards against a changed timm layout)
    back = checkpoint_filter_fn({f"visual.{k}": z for k, z in names.items()}, model.visual)
    if any(back.get(z) != z for z in zoo):
        raise ValueError("timm's CLIP ResNet layout no longer matches OpenAI's; cannot export")
    out = {f"visual.{k}": zoo[z] for k, z in names.items()}
    proj = model.image_projection.detach()
    if not torch.equal(proj, torch.eye(*proj.shape, dtype=proj.dtype, device=proj.device)):
        weight, bias = out["visual.attnpool.c_proj.weight"], out["visual.attnpool.c_proj.bias"]
        out["visual.attnpool.c_proj.weight"] = (proj.t() @ weight).contiguous()
        out["visual.attnpool.c_proj.bias"] = bias @ proj
    return out


def _openai_text_pairs(text_layers: int) -> list[tuple[str, str]]:
    """(OpenAI key, zoo key) of the text tower, projections and logit scale (q/k/v apart)."""
    pairs = list(_OPENAI_TO_ZOO_TEXT.items())
    for i in range(text_layers):
        src, dst = f"transformer.resblocks.{i}.", f"text.model.encoder.layers.{i}."
        pairs += [(src + a, dst + b) for a, b in _OPENAI_TO_HF_BLOCK.items()]
    return pairs


def _openai_vit_pairs(vision_layers: int) -> list[tuple[str, str]]:
    """(OpenAI key, zoo key) of a CLIP ViT vision tower and its projection."""
    pairs = list(_OPENAI_TO_ZOO_VISION.items())
    for i in range(vision_layers):
        src, dst = f"visual.transformer.resblocks.{i}.", f"visual.blocks.{i}."
        pairs += [(src + a, dst + b) for a, b in _OPENAI_TO_TIMM_BLOCK.items()]
    return pairs


def _openai_key_pairs(vision_layers: int, text_layers: int) -> list[tuple[str, str]]:
    """(OpenAI key, zoo key) for every one-to-one weight of a CLIP ViT (text q/k/v handled
    separately)."""
    return _openai_vit_pairs(vision_layers) + _openai_text_pairs(text_layers)


def _openai_text_state_to_zoo(src: dict[str, Tensor], text_layers: int) -> dict[str, Tensor]:
    """Pop the text tower, projections and logit scale out of ``src`` (OpenAI keys)."""
    out = {zoo: src.pop(openai) for openai, zoo in _openai_text_pairs(text_layers)}
    out["logit_scale"] = out["logit_scale"].reshape(1)
    for i in range(text_layers):
        src_block, dst = (
            f"transformer.resblocks.{i}.attn.",
            f"text.model.encoder.layers.{i}.self_attn.",
        )
        for kind in ("weight", "bias"):
            for name, part in zip(_QKV, src.pop(f"{src_block}in_proj_{kind}").chunk(3, dim=0)):
                out[f"{dst}{name}.{kind}"] = part
    return out


def _openai_state_to_zoo(
    state: Mapping[str, Tensor], vision_layers: int, text_layers: int
) -> dict[str, Tensor]:
    """Map an OpenAI-layout CLIP ViT state dict to zoo keys; unmapped keys are an error."""
    src = {k: v for k, v in state.items() if k not in _OPENAI_METADATA_KEYS}
    out = {zoo: src.pop(openai) for openai, zoo in _openai_vit_pairs(vision_layers)}
    out.update(_openai_text_state_to_zoo(src, text_layers))
    if src:
        raise ValueError(
            f"weights with no zoo counterpart (an open_clip variant the zoo's towers do not "
            f"build, e.g. layer scale, attention pooling or a logit bias?): {sorted(src)}"
        )
    return out


def dual_encoder_from_openai_state_dict(
    state: Mapping[str, Tensor] | str | Path,
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    trust_pickle: bool = False,
) -> tuple[DualEncoder, dict[str, Any]]:
    """Convert an OpenAI / open_clip CLIP state dict (ViT or ResNet) into a DualEncoder.

    Args:
        state: the state dict, or a path to a ``.safetensors`` / torch file (see
            :func:`load_state_file`; TorchScript and arbitrary pickles need ``trust_pickle``).
        quick_gelu: OpenAI's models use QuickGELU; open_clip's own models mostly ``nn.GELU``
            (open_clip model names ending in ``-quickgelu`` use QuickGELU). For ResNets it
            is the text tower's activation (the vision tower uses ReLU).
        vision_heads, text_heads: attention heads, ``width // 64`` by default (OpenAI).
        trust_pickle: allow unpickling (TorchScript archives, pickled training checkpoints).

    Returns:
        The model (eval mode, float32) whose ``encode_image`` / ``encode_text`` equal the
        source model's, and the preprocessing dict (OpenAI CLIP mean/std, bicubic).
    """
    if isinstance(state, str | Path):
        state = load_state_file(state, trust_pickle=trust_pickle)
    spec = openai_clip_spec(state, quick_gelu, vision_heads, text_heads)
    if is_openai_resnet_state(state):
        model = _new_model(spec, float(state["logit_scale"]))
        model = _load(model, _openai_resnet_state_to_zoo(state, model, spec.text.layers))
    else:
        zoo_state = _openai_state_to_zoo(state, spec.vision.depth or 0, spec.text.layers)
        model = _build(spec, zoo_state, float(state["logit_scale"]))
    return model, _preprocess(spec.vision.img_size, spec.text.context_length)


def export_openai_state_dict(model: DualEncoder) -> dict[str, Tensor]:
    """The inverse of :func:`dual_encoder_from_openai_state_dict`: OpenAI / open_clip keys.

    Only models with CLIP's architecture have an OpenAI layout: a timm ViT with ``pre_norm``,
    class-token pooling and a final norm, or a timm CLIP ResNet with its attention pool
    (``resnet50_clip`` …; a non-identity ``image_projection`` is folded into ``c_proj``),
    and a :class:`CLIPTextTower`; others raise ``ValueError``. Tensors are detached copies
    on the model's device and dtype.
    """
    from timm.models.vision_transformer import VisionTransformer

    visual = model.visual
    resnet = clip_resnet_attention_pool(visual) is not None
    vit = (
        isinstance(visual, VisionTransformer)
        and isinstance(visual.norm_pre, nn.LayerNorm)
        and isinstance(visual.norm, nn.LayerNorm)
        and visual.global_pool == "token"
        and visual.num_prefix_tokens == 1
    )
    if not ((vit or resnet) and isinstance(model.text, CLIPTextTower)):
        raise ValueError(
            "only CLIP-architecture models (timm ViT with pre_norm, token pooling and final "
            "norm, or timm CLIP ResNet with attention pooling; CLIPTextTower) can be "
            "exported to the OpenAI layout"
        )
    zoo = {k: v.detach().clone() for k, v in model.state_dict().items()}
    text_layers = model.text.model.config.num_hidden_layers
    if resnet:
        out = _export_resnet_visual(model)
        for key in [k for k in zoo if k.startswith("visual.") or k == "image_projection"]:
            del zoo[key]
        out.update({openai: zoo.pop(key) for openai, key in _openai_text_pairs(text_layers)})
    else:
        vision_layers = len(visual.blocks)
        pairs = _openai_key_pairs(vision_layers, text_layers)
        out = {openai: zoo.pop(key) for openai, key in pairs}
        out["visual.class_embedding"] = out["visual.class_embedding"].reshape(-1)
        out["visual.positional_embedding"] = out["visual.positional_embedding"].reshape(
            -1, model.vision_width
        )
    out["logit_scale"] = out["logit_scale"].reshape(())  # a 0-d scalar in OpenAI's layout
    for i in range(text_layers):
        src, dst = f"text.model.encoder.layers.{i}.self_attn.", f"transformer.resblocks.{i}.attn."
        for kind in ("weight", "bias"):
            out[f"{dst}in_proj_{kind}"] = torch.cat([zoo.pop(f"{src}{p}.{kind}") for p in _QKV])
    if zoo:
        raise ValueError(f"zoo weights with no OpenAI counterpart: {sorted(zoo)}")
    return out


# --------------------------------------------------------------------------- tiny stand-ins

#: The CLIP families :func:`tiny_openai_state_dict` writes a tiny stand-in of: OpenAI's
#: ModifiedResNets by stage depths (the timm CLIP ResNet of those depths), OpenAI's ViTs by
#: patch size; and the default input size of the stand-in, small enough for a CPU smoke test
#: (a ResNet at 32 px: a 1 × 1 attention-pool grid plus the mean token, since its cost on a
#: CPU is the per-layer overhead of 50 layers; a ViT at a 2 × 2 to 4 × 4 patch grid).
TINY_CLIP_ARCHS: dict[str, dict[str, Any]] = {
    "rn50": {"depths": (3, 4, 6, 3), "image_size": 32},
    "rn101": {"depths": (3, 4, 23, 3), "image_size": 32},
    "vit-b32": {"patch_size": 32, "image_size": 64},
    "vit-b16": {"patch_size": 16, "image_size": 64},
    "vit-l14": {"patch_size": 14, "image_size": 56},
}
#: The text side of every stand-in: OpenAI's BPE vocabulary and 77-token context (so the
#: recipes' ``clip-bpe`` tokenizer and prompts run unchanged), one 64-wide layer, one head.
_TINY_TEXT = TextSpec(vocab_size=49408, width=64, layers=1, heads=1, context_length=77)
_TINY_RESNET_WIDTH = 8  # ModifiedResNet width (RN50: 64): attention pool 256 wide, 4 heads
_TINY_VIT_WIDTH = 64  # one 64-wide head: OpenAI's head count is width // 64
_TINY_EMBED_DIM = 32


def tiny_openai_state_dict(
    arch: str, image_size: int | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """A randomly initialised *tiny* CLIP of the ``arch`` family (:data:`TINY_CLIP_ARCHS`) in
    OpenAI's state-dict layout, as in OpenAI's released files: same keys (including the
    ``input_resolution`` / ``context_length`` / ``vocab_size`` metadata), QuickGELU, logit
    scale ln 100. A ResNet keeps its family's stage depths at width 8 (attention pool with
    64-wide heads); a ViT is one 64-wide block at the family's patch size. The text tower has
    CLIP's vocabulary and context. For smoke tests of recipes whose frozen CLIP is a weights
    file (``zoo.data.layouts``'s ``clip-weights`` entries): the file goes through the same
    loader as the real one (:func:`dual_encoder_from_openai_state_dict`).

    ``image_size``: the input side (default: the arch's tiny size); a multiple of 32 for a
    ResNet, of the patch size for a ViT.
    """
    if arch not in TINY_CLIP_ARCHS:
        raise ValueError(f"no tiny CLIP for arch {arch!r}; known: {sorted(TINY_CLIP_ARCHS)}")
    family = TINY_CLIP_ARCHS[arch]
    size = int(image_size or family["image_size"])
    stride = 32 if "depths" in family else family["patch_size"]
    if size % stride:
        raise ValueError(f"tiny {arch}: image_size {size} is not a multiple of {stride}")
    if "depths" in family:
        by_depths = _timm_clip_resnets()
        if family["depths"] not in by_depths:
            raise NotImplementedError(f"timm has no CLIP ResNet with depths {family['depths']}")
        name, _ = by_depths[family["depths"]]
        kwargs = {"num_classes": _TINY_EMBED_DIM, "width_factor": _TINY_RESNET_WIDTH / 64}
        vision = VisionSpec(model_name=name, img_size=size, kwargs=kwargs)
    else:
        width = _TINY_VIT_WIDTH
        vision = _vision_spec(
            image_size=size,
            patch_size=family["patch_size"],
            width=width,
            layers=1,
            heads=width // 64,
            mlp_hidden=4 * width,
            act="quick_gelu",
            eps=_TIMM_CLIP_LN_EPS,
        )
    spec = DualEncoderSpec(vision=vision, text=_TINY_TEXT, embed_dim=_TINY_EMBED_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_model(spec, LOG_100)
    state = export_openai_state_dict(model)
    state["input_resolution"] = torch.tensor(size)
    state["context_length"] = torch.tensor(_TINY_TEXT.context_length)
    state["vocab_size"] = torch.tensor(_TINY_TEXT.vocab_size)
    return state
