"""A frozen dual encoder plus a classifier head (few-shot adaptation: adapters, prompt
learners), and the registry of head types that ``zoo export`` / ``zoo.load`` understand.

A head type is a module class with ``type_name``, ``to_config() -> dict`` (its
``config.json`` entry, without ``type``), ``from_config(entry)`` (a fresh head, random or
zero weights: the stored weights load afterwards), ``class_weights(encoder)`` (the (C, D)
classifier in the joint space) and ``logits(encoder, image_features)``. Register new types
with :func:`register_clip_head`; the few-shot family registers its prompt learners (CoOp,
CoCoOp) this way, answering ``class_weights`` with the text encoder run on learned prompts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.dual_encoder import DualEncoder

CLIP_HEADS: dict[str, type[ClipHead]] = {}


class ClipHead(nn.Module):
    """Base class of the heads a :class:`CLIPWithHead` carries (see the module docstring)."""

    type_name: ClassVar[str] = ""

    def __init__(self, classnames: list[str]):
        super().__init__()
        self.classnames = list(classnames)

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> ClipHead:
        return cls(**entry)

    def class_weights(self, encoder: DualEncoder) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, encoder: DualEncoder, image_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def register_clip_head(cls: type[ClipHead]) -> type[ClipHead]:
    """Register a head class under ``cls.type_name`` (usable as a class decorator)."""
    if not cls.type_name:
        raise ValueError(f"{cls.__name__} needs a type_name")
    if CLIP_HEADS.get(cls.type_name, cls) is not cls:
        raise ValueError(f"clip head type {cls.type_name!r} is already registered")
    CLIP_HEADS[cls.type_name] = cls
    return cls


#: Modules whose import registers more head types (the few-shot family's heads live with
#: their methods); imported on the first lookup of a type not registered yet.
HEAD_MODULES: tuple[str, ...] = ("zoo.fewshot.heads",)


def clip_head_class(type_name: str) -> type[ClipHead]:
    if type_name not in CLIP_HEADS:
        import importlib

        for name in HEAD_MODULES:
            importlib.import_module(name)
    if type_name not in CLIP_HEADS:
        raise ValueError(f"unknown clip head type {type_name!r}; known: {sorted(CLIP_HEADS)}")
    return CLIP_HEADS[type_name]


@register_clip_head
class LinearHead(ClipHead):
    """A linear classifier on the (unnormalised) image embedding: ``f @ Wᵀ + b``
    (a linear probe; CLIP §3.2 / Tip-Adapter's "linear-probe CLIP" baseline)."""

    type_name = "linear"

    def __init__(self, embed_dim: int, classnames: list[str]):
        super().__init__(classnames)
        self.embed_dim = int(embed_dim)
        self.linear = nn.Linear(self.embed_dim, len(self.classnames))

    def to_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "classnames": list(self.classnames)}

    def class_weights(self, encoder: DualEncoder) -> torch.Tensor:
        return self.linear.weight

    def logits(self, encoder: DualEncoder, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


@register_clip_head
class AdapterHead(ClipHead):
    """CLIP-Adapter (Gao et al., 2021; github.com/gaopengcuhk/CLIP-Adapter ``clip_adapter.py``):
    a bottleneck MLP ``Linear(D, D/r, bias=False) → ReLU → Linear(D/r, D, bias=False) → ReLU``
    mixed with the frozen feature, ``x = α·A(f) + (1 − α)·f`` (:meth:`adapt`: on the raw,
    unnormalised feature, as the code), then cosine logits against the zero-shot text
    classifier (stored as buffer ``text_weights``, (C, D), unit rows) at CLIP's scale exp(t).

    The residual ratio α is the fixed ``ratio`` (the code's ``ratio = 0.2``); with
    ``learnable_ratio`` it is a parameter ``learned_ratio`` initialised to ``ratio`` (the
    variant SgVA-CLIP's adapter uses), and ``ratio`` in the config is its initial value.
    """

    type_name = "adapter"

    def __init__(
        self,
        embed_dim: int,
        classnames: list[str],
        reduction: int = 4,
        ratio: float = 0.2,
        learnable_ratio: bool = False,
    ):
        super().__init__(classnames)
        self.embed_dim, self.reduction, self.ratio = int(embed_dim), int(reduction), float(ratio)
        self.learnable_ratio = bool(learnable_ratio)
        hidden = self.embed_dim // self.reduction
        self.adapter = nn.Sequential(
            nn.Linear(self.embed_dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.embed_dim, bias=False),
            nn.ReLU(inplace=True),
        )
        if self.learnable_ratio:
            self.learned_ratio = nn.Parameter(torch.tensor(self.ratio))
        self.register_buffer("text_weights", torch.zeros(len(self.classnames), self.embed_dim))

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "classnames": list(self.classnames),
            "reduction": self.reduction,
            "ratio": self.ratio,
        }
        if self.learnable_ratio:  # older packages have no such key: it defaults to False
            config["learnable_ratio"] = True
        return config

    def class_weights(self, encoder: DualEncoder) -> torch.Tensor:
        return self.text_weights

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """``x = α·A(f) + (1 − α)·f`` (unnormalised)."""
        ratio = self.learned_ratio if self.learnable_ratio else self.ratio
        return ratio * self.adapter(image_features) + (1 - ratio) * image_features

    def scaled_logits(
        self, encoder: DualEncoder, adapted: torch.Tensor, text_weights: torch.Tensor
    ) -> torch.Tensor:
        """``exp(t) · x̂ Wᵀ`` of an adapted feature x (the code's
        ``logit_scale * image_features @ text_features.t()``)."""
        return encoder.logit_scale.exp() * F.normalize(adapted, dim=-1) @ text_weights.t()

    def logits(self, encoder: DualEncoder, image_features: torch.Tensor) -> torch.Tensor:
        return self.scaled_logits(encoder, self.adapt(image_features), self.text_weights)


class CLIPWithHead(nn.Module):
    """A frozen :class:`DualEncoder` (``encoder``: eval mode, no gradients) and a trainable
    :class:`ClipHead` (``head``). ``logits(images)`` classify into ``head.classnames``."""

    def __init__(self, encoder: DualEncoder, head: ClipHead):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.head = head

    def train(self, mode: bool = True) -> CLIPWithHead:
        super().train(mode)
        self.encoder.eval()  # frozen: dropout / drop path stay off while the head trains
        return self

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.encoder.logit_scale

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.encoder.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.encoder.encode_text(tokens, normalize=normalize)

    def class_weights(self) -> torch.Tensor:
        return self.head.class_weights(self.encoder)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.encoder, self.encoder.encode_image(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)
