"""One dual-encoder interface for CLIP-style models.

Every image–text model in the zoo (trained here, or converted from Hugging Face / OpenAI /
open_clip weights) is a :class:`DualEncoder`:

- ``image_trunk(x)``: pooled vision features before projection (width ``vision_width``;
  for the CLIP ResNets the attention pool's own output projection is part of the tower
  and ``image_projection`` is the identity: see :mod:`zoo.backbones.convert`);
- ``encode_image(x)`` = ``image_trunk(x) @ image_projection`` (width ``embed_dim``);
- ``encode_text(tokens)`` = ``text(tokens) @ text_projection``;
- ``encode_text_embeddings(embeds, eot_index)`` for prompt learners;
- ``logit_scale``: the learnable log-temperature t (shape (1,)), s = exp(t), clamped to
  t ≤ ``logit_scale_max``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.pooled import timm_vit_pooled_forward, timm_vit_prunable
from zoo.backbones.presets import resolve_preset
from zoo.backbones.text import CLIPTextTower, TextSpec
from zoo.backbones.vision import VisionSpec, build_vision_tower, tower_output_width

LOG_INV_007 = math.log(1 / 0.07)  # CLIP's initial logit scale, 2.6593
LOG_100 = 4.6052  # SLIP clamps t to [0, 4.6052], i.e. s ≤ 100


@functools.cache
def _cpu_has_amx() -> bool:
    return bool(torch.cpu._is_amx_tile_supported())


def attention_kernels(x: torch.Tensor) -> AbstractContextManager:
    """The SDPA kernels for a forward pass on ``x``.

    Under CPU bf16 autocast on processors without AMX, PyTorch's fused (flash) attention
    kernel is several times slower in bf16 than in fp32 (measured 4.7× on AVX-512 without
    AMX, 37% of the step), while the plain "math" kernel vectorises well: the bf16 training
    step gets about 1.5× faster (benchmarks/README.md). Everywhere else the default choice
    stands.
    """
    if torch.compiler.is_compiling():
        # Compiled graphs lower attention themselves; and a context manager here is re-traced
        # on every call (Dynamo guards on the generator object: a recompile per step).
        return nullcontext()
    if (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not _cpu_has_amx()
    ):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


_COMPILABLE = ("image_trunk", "encode_text", "encode_text_embeddings")


def _compilable(method: Callable) -> Callable:
    """Route a :class:`DualEncoder` method to its compiled version after ``compile()``."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        compiled = getattr(self, "_compiled_methods", {}).get(method.__name__)
        if compiled is None or torch.compiler.is_compiling():
            return method(self, *args, **kwargs)
        return compiled(self, *args, **kwargs)

    return call


@dataclass
class DualEncoderSpec:
    """Vision tower, text tower, joint embedding width and logit-scale init / clamp.

    As a mapping it may name a preset (:mod:`zoo.backbones.presets`):
    ``{preset: vit-b16-clip, vision: {drop_path_rate: 0.1}}``.
    """

    vision: VisionSpec = field(default_factory=VisionSpec)
    text: TextSpec = field(default_factory=TextSpec)
    embed_dim: int = 512
    logit_scale_init: float = LOG_INV_007
    logit_scale_max: float = LOG_100

    @staticmethod
    def resolve_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
        """``{preset: NAME, **overrides}`` → the full mapping (used by ``zoo.specs.to_spec``)."""
        return resolve_preset(value)


class DualEncoder(nn.Module):
    def __init__(
        self,
        visual: nn.Module,
        text: CLIPTextTower,
        embed_dim: int,
        logit_scale_init: float = LOG_INV_007,
        logit_scale_max: float = LOG_100,
        pooled_last_block: bool = True,
    ):
        super().__init__()
        self.visual = visual
        self.pooled_last_block = pooled_last_block
        self._compiled_methods: dict[str, Callable] = {}
        # inputs follow the tower's weights into NHWC (build_vision_tower: channels_last)
        self.channels_last = any(
            p.dim() == 4
            and p.is_contiguous(memory_format=torch.channels_last)
            and not p.is_contiguous()
            for p in visual.parameters()
        )
        self.text = text
        self.vision_width = tower_output_width(visual)  # num_features, or a kept head's width
        self.text_width = int(text.width)
        self.embed_dim = embed_dim
        self.logit_scale_max = logit_scale_max
        # Bias-free projections stored as (in, out) matrices, as in OpenAI CLIP and SLIP.
        self.image_projection = nn.Parameter(torch.empty(self.vision_width, embed_dim))
        self.text_projection = nn.Parameter(torch.empty(self.text_width, embed_dim))
        nn.init.normal_(self.image_projection, std=self.vision_width**-0.5)
        nn.init.normal_(self.text_projection, std=self.text_width**-0.5)
        # Shape (1,), not a 0-d scalar: FSDP (1 and 2) cannot shard 0-d parameters. Scalar
        # logit scales in older checkpoints and other layouts load through the hook below.
        self.logit_scale = nn.Parameter(torch.full((1,), float(logit_scale_init)))
        self.register_load_state_dict_pre_hook(_logit_scale_as_vector)

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def prune_visual(self) -> bool:
        """Whether the last vision block runs on the class token only (zoo.backbones.pooled).
        Checked at call time: a sharding wrapper around the last block (FSDP auto-wrap)
        owns its weights, so the tower then runs its unmodified forward."""
        return self.pooled_last_block and timm_vit_prunable(self.visual)

    @_compilable
    def image_trunk(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with attention_kernels(images):
            if self.prune_visual:
                return timm_vit_pooled_forward(self.visual, images)
            return self.visual(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features for linear probes, kNN and retrieval: the joint-space embedding
        (``encode_image``, not normalised)."""
        return self.encode_image(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        z = self.image_trunk(images) @ self.image_projection
        return F.normalize(z, dim=-1) if normalize else z

    @_compilable
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        with attention_kernels(self.text_projection):
            z = self.text(tokens) @ self.text_projection
        return F.normalize(z, dim=-1) if normalize else z

    @_compilable
    def encode_text_embeddings(
        self, token_embeds: torch.Tensor, eot_index: torch.Tensor, normalize: bool = False
    ) -> torch.Tensor:
        with attention_kernels(token_embeds):
            z = self.text.forward_embeddings(token_embeds, eot_index) @ self.text_projection
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Normalised image and text embeddings and the scale s = exp(t)."""
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale.exp(),
        )

    def compile(self, *args, **kwargs) -> None:
        """``nn.Module.compile`` plus the entry points papers call directly (SLIP calls
        ``image_trunk`` / ``encode_text``, never ``forward``), which compiling ``forward``
        alone would leave in eager mode. The compiled functions take ``self`` explicitly, so
        a deep copy of the module calls them on itself; state dicts are unchanged."""
        super().compile(*args, **kwargs)
        self._compiled_methods = {
            name: torch.compile(getattr(type(self), name).__wrapped__, *args, **kwargs)
            for name in _COMPILABLE
        }

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """SLIP (main.py): after each optimiser step, t ← clamp(t, 0, 4.6052)."""
        self.logit_scale.clamp_(0, self.logit_scale_max)


def _logit_scale_as_vector(module, state_dict, prefix, *args) -> None:
    key = prefix + "logit_scale"
    if key in state_dict and state_dict[key].dim() == 0:
        state_dict[key] = state_dict[key].reshape(1)


def build_dual_encoder(spec: DualEncoderSpec) -> DualEncoder:
    """The encoder ``spec`` describes; it keeps ``spec`` (``encoder.spec``) so ``zoo export``
    can describe it in ``config.json``."""
    encoder = DualEncoder(
        build_vision_tower(spec.vision),
        CLIPTextTower(spec.text),
        spec.embed_dim,
        spec.logit_scale_init,
        spec.logit_scale_max,
        spec.vision.pooled_last_block,
    )
    encoder.spec = spec
    return encoder
