"""Benchmark settings: the model shape, batch sizes and repeat counts of each preset."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Arch:
    """A CLIP shape built identically by the zoo (timm + transformers) and open_clip.

    The default is the issue's reference: a ViT-S/16-shaped tower (width 384, 12 layers,
    12 heads as in SLIP's ViT-S) at 112 px and a text transformer of width 256 × 6 layers.
    The context length of 32 reproduces the issue's 469 GFLOP per step at batch 64
    (matmuls only; attention adds about 4%).
    """

    img_size: int = 112
    patch_size: int = 16
    vision_width: int = 384
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 256
    text_layers: int = 6
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = 49408
    embed_dim: int = 512


VIT_B16 = Arch(
    img_size=224,
    vision_width=768,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
    context_length=77,
)


@dataclass(frozen=True)
class BenchConfig:
    """What every section runs; ``quick()`` and ``gpu()`` derive from the full preset."""

    arch: Arch = Arch()
    device: str = "cpu"
    batch: int = 64
    warmup: int = 2
    repeats: int = 7
    compile: bool = False
    matmul_size: int = 2048
    zs_batch: int = 64
    zs_classes: int = 1000
    loss_global_batch: int = 1024
    loss_dim: int = 512
    loss_worlds: tuple[int, ...] = (1, 2, 4)
    loss_repeats: int = 5
    data_images: int = 512
    table_rows: int = 1_000_000
    cnn_batch: int = 32
    cnn_repeats: int = 5
    data_batch: int = 64
    data_workers: tuple[int, ...] = (0, 1, 2)
    data_image_px: int = 256
    startup_repeats: int = 5
    parity_seeds: tuple[int, ...] = (0, 1, 2)
    parity_recipe: str = "recipes/slip/tiny.yaml"
    parity_epochs: int | None = None  # None: the recipe's 40
    quick: bool = False


def full() -> BenchConfig:
    return BenchConfig()


def quick() -> BenchConfig:
    """Under 6 minutes on 2 idle cores: half the batch, fewer repeats, and the parity run
    cut to 1 seed × 10 epochs per precision (a smoke test; the full run does 3 × 40)."""
    return replace(
        BenchConfig(),
        batch=32,
        warmup=1,
        repeats=5,
        zs_batch=32,
        loss_global_batch=512,
        loss_repeats=3,
        data_images=256,
        table_rows=200_000,
        cnn_batch=16,
        cnn_repeats=3,
        startup_repeats=3,
        parity_seeds=(0,),
        parity_epochs=10,
        data_batch=32,
        quick=True,
    )


def gpu() -> BenchConfig:
    """One GPU: ViT-B/16 CLIP at 224 px, batch 256 (issue item 3)."""
    return replace(
        BenchConfig(),
        arch=VIT_B16,
        device="cuda",
        batch=256,
        warmup=5,
        repeats=20,
        matmul_size=8192,
        compile=True,
        zs_batch=256,
        data_images=2048,
        data_workers=(0, 4, 8, 14),
        cnn_batch=128,
    )
