"""Vision towers from timm, of any size (paper-scale ViTs down to 16-pixel test models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class VisionSpec:
    """A timm model plus overrides.

    ``model_name`` is any timm architecture name; the optional fields override its defaults,
    so ``vit_small_patch16_224`` with ``num_heads=12`` is the MoCo-v3 ViT-S/16 that SLIP uses,
    and ``patch_size=4, embed_dim=32, depth=1, img_size=16`` is a test-sized ViT.
    ``checkpoint`` is a local file (safetensors or a torch state dict) loaded into the tower;
    nothing is ever downloaded. ``pooled_last_block`` lets :class:`DualEncoder` run the last
    block on the class token only (``zoo.backbones.pooled``; same features, less compute).
    ``channels_last`` stores conv weights and inputs NHWC (faster convolutions with
    cuDNN / oneDNN); ``None`` turns it on for convolutional towers (more than one Conv2d, so
    not for a ViT, whose only conv is the patch embedding).
    """

    model_name: str = "vit_small_patch16_224"
    img_size: int = 224
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_path_rate: float = 0.0
    norm_eps: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pooled_last_block: bool = True
    channels_last: bool | None = None


def build_vision_tower(spec: VisionSpec) -> nn.Module:
    """Build a timm model without classifier head; ``model(x)`` returns pooled features.

    The returned module has ``num_features`` (the pooled width). A spec may keep the head
    with ``kwargs: {num_classes: N}``: the CLIP ResNets (``resnet50_clip`` …) do, because
    their attention pool's output projection (with bias) is what maps into CLIP's joint
    space; ``model(x)`` then has :func:`tower_output_width` = N features.
    """
    import timm

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "patch_size": spec.patch_size,
            "embed_dim": spec.embed_dim,
            "depth": spec.depth,
            "num_heads": spec.num_heads,
            "mlp_ratio": spec.mlp_ratio,
        }.items()
        if v is not None
    }
    if spec.norm_eps is not None:  # e.g. CLIP towers use LayerNorm eps 1e-5, timm ViTs 1e-6
        overrides["norm_layer"] = partial(nn.LayerNorm, eps=spec.norm_eps)
    overrides.update(spec.kwargs)
    kwargs: dict[str, Any] = {"num_classes": 0, "drop_path_rate": spec.drop_path_rate, **overrides}
    if _takes_img_size(spec.model_name):
        kwargs["img_size"] = spec.img_size
    model = timm.create_model(spec.model_name, pretrained=False, **kwargs)
    if spec.checkpoint:
        load_local_state_dict(model, spec.checkpoint)
    if uses_channels_last(model, spec.channels_last):
        model = model.to(memory_format=torch.channels_last)
    return model


def _takes_img_size(model_name: str) -> bool:
    """ViTs (EVA and EVA-02 included) size their position embedding from ``img_size``; so do
    the CLIP ResNets (timm byobnet ``resnet*_clip``: the attention pool's position embedding)."""
    return any(k in model_name for k in ("vit", "deit", "_clip", "eva"))


def tower_output_width(tower: nn.Module) -> int:
    """The width of ``tower(x)``: ``num_features``, or ``num_classes`` for a timm tower built
    with its head kept (``num_classes > 0``, e.g. the CLIP ResNets' attention pool)."""
    kept_head = int(getattr(tower, "num_classes", 0) or 0)
    return kept_head if kept_head > 0 else int(tower.num_features)


def uses_channels_last(model: nn.Module, setting: bool | None) -> bool:
    """``setting``, or for ``None``: whether ``model`` is convolutional (> 1 ``Conv2d``)."""
    if setting is not None:
        return setting
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def load_local_state_dict(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load weights from a local safetensors file, or a torch file holding tensors only.

    A file in timm's own key layout loads as it is. Any other layout goes through the
    ``checkpoint_filter_fn`` of the model's timm module, timm's converter for the official
    releases. For EVA and EVA-02 that covers BAAI's EVA / EVA-CLIP files (``visual.``
    prefix, ``model`` / ``module`` wrappers, rotary buffers dropped) and resamples the
    position embedding and patch embedding to the model's grid. So a ViSFT recipe can point
    ``checkpoint`` at an official EVA-ViT-G file. Keys that still do not fit are an error
    naming them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"vision checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not _fits(model, state):
            state = state.get("state_dict", state.get("model", state))
    if not _fits(model, state):
        state = _timm_converted(model, state, path)
    model.load_state_dict(state, strict=strict)


def _fits(model: nn.Module, state: dict[str, Any]) -> bool:
    """Whether ``state`` has exactly the model's keys with the model's shapes."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(
        isinstance(state[k], torch.Tensor) and state[k].shape == v.shape for k, v in own.items()
    )


def _timm_converted(model: nn.Module, state: dict[str, Any], path: Path) -> dict[str, Any]:
    import sys

    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is None:
        return state  # load_state_dict names what does not fit
    try:
        converted = convert(state, model)
    except Exception as err:  # a layout timm's converter does not know either
        raise ValueError(
            f"{path}: its keys are not {type(model).__name__}'s and timm's "
            f"{type(model).__module__}.checkpoint_filter_fn could not convert them ({err})"
        ) from err
    return converted


class VisionEncoder(nn.Module):
    """An image-only encoder: a timm tower (``visual``, e.g. an MAE or DINO ViT) and the
    :class:`VisionSpec` it was built from (``spec``, what ``zoo export`` writes).

    ``features(images)`` are the tower's pooled features (class token or average, as the timm
    model pools); ``tokens(images)`` the final normalised token sequence (``forward_features``).
    """

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.spec = spec
        self.visual = build_vision_tower(spec)
        self.num_features = int(self.visual.num_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)
