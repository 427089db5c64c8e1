"""Named transform stacks: SLIP's CLIP view never crops below half the image; the SSL view
does; solarisation only when asked for."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from zoo.data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    TRANSFORMS,
    GaussianBlur,
    build_transform,
)

SIDE = 256  # large source so crop rounding moves the area fraction by < 0.003


def _half_black_half_white() -> Image.Image:
    arr = np.zeros((SIDE, SIDE), np.uint8)
    arr[:, SIDE // 2 :] = 255
    return Image.fromarray(arr, "L")


def _find(tf: T.Compose, kind: type) -> list:
    return [t for t in tf.transforms if isinstance(t, kind)]


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    return x * std + mean


def _crop_fractions(tf: T.Compose, img: Image.Image, n: int = 500) -> np.ndarray:
    """Area fractions of ``n`` seeded draws of the stack's own RandomResizedCrop."""
    (rrc,) = _find(tf, T.RandomResizedCrop)
    torch.manual_seed(0)
    draws = [rrc.get_params(img, rrc.scale, rrc.ratio) for _ in range(n)]
    return np.array([h * w for _, _, h, w in draws]) / (SIDE * SIDE)


def _white_fractions(tf: T.Compose, img: Image.Image, n: int = 500) -> np.ndarray:
    torch.manual_seed(0)
    return np.array([(_unnormalize(tf(img))[0] > 0.5).float().mean().item() for _ in range(n)])


def test_clip_view_crop_scale_never_below_half() -> None:
    img = _half_black_half_white()
    clip = build_transform("clip", 64)
    assert _find(clip, T.RandomResizedCrop)[0].scale == (0.5, 1.0)
    fractions = _crop_fractions(clip, img)
    assert fractions.min() >= 0.5 - 0.005 and fractions.max() <= 1.0
    # A crop of area >= 1/2 with aspect <= 4/3 is >= sqrt(0.5 * 3/4) * 256 = 157 px wide, so
    # it always straddles the black/white edge at x = 128 with >= (157 - 128) / 157 = 18 % of
    # its columns on each side: no CLIP view may be (almost) all black or all white.
    white = _white_fractions(clip, img)
    assert white.min() > 0.1 and white.max() < 0.9, (white.min(), white.max())


def test_small_crops_would_fail_the_check() -> None:
    """The same checks catch the SSL scale (0.08, 1): the tests above can fail."""
    img = _half_black_half_white()
    assert _crop_fractions(build_transform("ssl", 64), img).min() < 0.2
    white = _white_fractions(build_transform("clip", 64, crop_scale=(0.08, 1.0)), img)
    assert white.min() < 0.1 or white.max() > 0.9
    assert ((white == 0) | (white == 1)).mean() >= 0.02  # some views lie in one half


def test_ssl_stack_is_slips() -> None:
    ssl = build_transform("ssl", 32)
    names = [type(t).__name__ for t in ssl.transforms]
    assert names == [
        "ToRGB", "RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply",
        "RandomHorizontalFlip", "ToTensor", "Normalize",
    ]  # fmt: skip
    _, rrc, jitter, gray, blur, flip, _, norm = ssl.transforms
    assert rrc.scale == (0.08, 1.0) and rrc.size == (32, 32)
    assert rrc.interpolation == T.InterpolationMode.BICUBIC
    cj = jitter.transforms[0]
    assert jitter.p == 0.8 and isinstance(cj, T.ColorJitter)
    assert (cj.brightness, cj.contrast, cj.saturation) == ((0.6, 1.4),) * 3
    assert cj.hue == (-0.1, 0.1)
    assert gray.p == 0.2 and flip.p == 0.5
    assert blur.p == 0.5 and isinstance(blur.transforms[0], GaussianBlur)
    assert blur.transforms[0].sigma == (0.1, 2.0)
    assert tuple(norm.mean) == OPENAI_CLIP_MEAN and tuple(norm.std) == OPENAI_CLIP_STD
    assert not _find(ssl, T.RandomSolarize)  # SLIP's code has no solarisation
    assert not _find(build_transform("ssl", 32, solarize_p=0.0), T.RandomSolarize)


def test_solarize_flag_inverts_bright_pixels() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "RGB")
    plain = build_transform("ssl", 32)
    solar = build_transform("ssl", 32, solarize_p=1.0)
    assert _find(solar, T.RandomSolarize)[0].threshold == 128
    for seed in range(5):
        # Solarize draws last, so equal seeds give equal views up to it.
        torch.manual_seed(seed), random.seed(seed)
        a = (_unnormalize(plain(img)) * 255).round()
        torch.manual_seed(seed), random.seed(seed)
        b = (_unnormalize(solar(img)) * 255).round()
        assert torch.equal(b, torch.where(a >= 128, 255 - a, a))
        assert (a >= 128).any() and not torch.equal(a, b)


def test_eval_is_deterministic_resize_center_crop() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), "L")
    ev = build_transform("eval", 16, mean=(0, 0, 0), std=(1, 1, 1))
    out = ev(img)
    rgb = img.convert("RGB")
    expected = TF.to_tensor(
        TF.center_crop(TF.resize(rgb, 16, interpolation=T.InterpolationMode.BICUBIC), 16)
    )
    assert torch.equal(out, expected) and torch.equal(ev(img), out)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # gray → RGB


def test_registry_overrides_and_pickling() -> None:
    assert set(TRANSFORMS) == {"clip", "ssl", "eval", "coop", "tip", "sgva", "deit"}
    assert _find(build_transform("clip", 8, crop_scale=(0.2, 0.3)), T.RandomResizedCrop)[
        0
    ].scale == (0.2, 0.3)
    with pytest.raises(KeyError, match="clip"):
        build_transform("simclr", 8)
    ssl = pickle.loads(pickle.dumps(build_transform("ssl", 8, solarize_p=0.5)))
    torch.manual_seed(0)
    out = ssl(_half_black_half_white())
    assert out.shape == (3, 8, 8) and torch.isfinite(out).all()
