"""Image transform stacks by name (torchvision), as the papers' code builds them.

- ``"clip"``: SLIP's CLIP view, ``RandomResizedCrop(scale=(0.5, 1))`` only.
- ``"ssl"``: SLIP's SimCLR / MoCo-v3 view (crop 0.08-1, colour jitter, grayscale, PIL
  Gaussian blur, flip; optional solarisation, off by default as in SLIP's code).
- ``"eval"``: resize + centre crop.
- ``"coop"``: CoOp / CoCoOp / CLIP-Adapter training view (Dassl's ``random_resized_crop``,
  ``random_flip``, ``normalize``: ``RandomResizedCrop`` scale 0.08-1, horizontal flip).
- ``"tip"``: Tip-Adapter's training view (``RandomResizedCrop`` scale 0.5-1, flip p=0.5;
  Tip-Adapter official code, ``main.py``).
- ``"sgva"``: SgVA-CLIP's training view (resize, ``RandomCrop``, ``ColorJitter(0.4, 0.4,
  0.4)``, flip; SgVA-CLIP official code, ``data/*.py``).

Every stack starts with an RGB conversion (the embedded digits are grayscale) and ends with
``ToTensor`` + ``Normalize``. All pieces are picklable classes (DataLoader workers, spawn).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageTransform = Callable[[Image.Image], torch.Tensor]

_INTERPOLATION = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
}


class ToRGB:
    """PIL image → RGB PIL image (grayscale / palette / RGBA inputs)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class GaussianBlur:
    """PIL Gaussian blur with σ ~ U(sigma), as in SimCLR / MoCo-v3 / SLIP's code."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = tuple(sigma)

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def to_rgb_tensor() -> ImageTransform:
    """RGB + ``ToTensor`` only: [0, 1] floats, no resize or normalisation (the loaders' default)."""
    return T.Compose([ToRGB(), T.ToTensor()])


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))]


def _clip(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
    scale = crop_scale or (0.5, 1.0)
    return [
        T.RandomResizedCrop(size, scale=scale, interpolation=interpolation),
        *_finish(mean, std),
    ]


def _ssl(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
    scale = crop_scale or (0.08, 1.0)
    stack: list[Callable] = [
        T.RandomResizedCrop(size, scale=scale, interpolation=interpolation),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
    ]
    if solarize_p > 0:  # not in SLIP's code; a secondary summary lists it (card, open question 1)
        stack.append(T.RandomSolarize(threshold=128, p=solarize_p))
    return stack + _finish(mean, std)


def _eval(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
    return [T.Resize(size, interpolation=interpolation), T.CenterCrop(size), *_finish(mean, std)]


def _crop_flip(default_scale: tuple[float, float]) -> Callable[..., list[Callable]]:
    """``RandomResizedCrop`` (``crop_scale`` or ``default_scale``) + horizontal flip: the
    few-shot training views (CoOp: Dassl's ``INPUT.RRCROP_SCALE`` (0.08, 1), bicubic in
    CoOp's configs; Tip-Adapter ``main.py``: (0.5, 1))."""

    def stack(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
        return [
            T.RandomResizedCrop(
                size, scale=crop_scale or default_scale, interpolation=interpolation
            ),
            T.RandomHorizontalFlip(p=0.5),
            *_finish(mean, std),
        ]

    return stack


def _sgva(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
    return [
        T.Resize(size, interpolation=interpolation),
        T.RandomCrop(size),
        T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        T.RandomHorizontalFlip(),
        *_finish(mean, std),
    ]


def _deit(size, mean, std, crop_scale, solarize_p, interpolation) -> list[Callable]:
    """GroupViT / CoCu's DeiT-style training view (``img_aug`` of the official configs):
    timm ``create_transform``: RandomResizedCrop scale 0.08-1 (``crop_scale``), bilinear,
    flip, colour jitter 0.4, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25
    (pixel mode, 1 erase)."""
    from timm.data import create_transform

    return [
        create_transform(
            size,
            is_training=True,
            scale=crop_scale or (0.08, 1.0),
            color_jitter=0.4,
            auto_augment="rand-m9-mstd0.5-inc1",
            interpolation="bilinear",
            re_prob=0.25,
            re_mode="pixel",
            re_count=1,
            mean=tuple(mean),
            std=tuple(std),
        )
    ]


TRANSFORMS: dict[str, Callable[..., list[Callable]]] = {
    "clip": _clip,
    "ssl": _ssl,
    "eval": _eval,
    "coop": _crop_flip((0.08, 1.0)),
    "tip": _crop_flip((0.5, 1.0)),
    "sgva": _sgva,
    "deit": _deit,
}


def build_transform(
    name: str,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    crop_scale: tuple[float, float] | None = None,
    solarize_p: float = 0.0,
    interpolation: str = "bicubic",
) -> ImageTransform:
    """The named stack (see :data:`TRANSFORMS`) as a ``torchvision.transforms.Compose``.

    ``crop_scale`` overrides the stack's ``RandomResizedCrop`` scale; ``solarize_p`` adds
    ``RandomSolarize(128, p)`` to ``"ssl"`` only.
    """
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r}; known: {sorted(TRANSFORMS)}")
    if interpolation not in _INTERPOLATION:
        raise KeyError(f"unknown interpolation {interpolation!r}; known: {sorted(_INTERPOLATION)}")
    if crop_scale is not None:
        crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
    stack = TRANSFORMS[name](size, mean, std, crop_scale, solarize_p, _INTERPOLATION[interpolation])
    return T.Compose([ToRGB(), *stack])
