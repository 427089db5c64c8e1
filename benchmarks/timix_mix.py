"""TiMix's saliency-guided window mixing and one TiMix training iteration: the zoo's mask +
gather (:func:`zoo.data.window_mix.mix_windows`) against the official ``TPMix.tpmix``
(issue 13, "Speed").

``official`` follows github.com/chaoyajiang/TiMiX @ 3363466 ``TPMix.py``: unfold the images
into patches, unfold the saliency map into every r×r window and sum it, translate the argmin /
argmax window indices into patch indices with ``index_translate`` (an unfold of an index
map; the official one calls ``.cuda()``, here it takes the images' device), add batch
offsets, index-assign the source patches into the flattened targets, fold back. The zoo
computes the window sums with one ``avg_pool2d`` (divisor 1), builds one pixel mask and one
gather by index arithmetic, and ``torch.where``s them: no (B, N, C·p²) patch tensor, no
(B, r², L) window tensor, no fold.

Before timing, both mixes are compared (``torch.equal``) on the same images, saliency and
side. Timing interleaves the contenders (``benchmarks.common.interleave``); the ratio is the
median of per-round ratios (``official / zoo``: above 1 means the zoo is faster).

Two measurements per shape: the mixing alone (every side r of the official range in turn),
and one TiMix iteration (PTA, ITC and mixed-ITC steps of :class:`lightning_modules.timix.TiMix`
with its optimiser, forward + backward + AdamW step) with the mixing function swapped.

Shapes (``--shape``): ``tiny`` = recipes/timix/tiny.yaml (ViT patch 8, width 64, depth 2 on
32 px, S = 4; text width 64 × 2 layers, context 16; batch 256); ``base`` = ViT-B/16 at 256 px
(S = 16) with the CLIP text transformer, batch 128 for the mixing and ``--batch`` (default 4
on CPU) for the iteration. Run from the repository root::

    python -m benchmarks.timix_mix --shape tiny --repeats 10
    python -m benchmarks.timix_mix --shape base --repeats 3
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import interleave, paired_ratio
from zoo.data.window_mix import WindowMix, mix_windows, side_range

SHAPES = {
    "tiny": dict(
        encoder={
            "vision": {
                "model_name": "vit_tiny_patch16_224",
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 4,
            },
            "text": {
                "vocab_size": 49408,
                "width": 64,
                "layers": 2,
                "heads": 4,
                "context_length": 16,
            },
            "embed_dim": 64,
        },
        pruning_loc=1,
        image=32,
        patch=8,
        context=16,
        mix_batch=256,
        step_batch=256,
    ),
    "base": dict(
        encoder={"preset": "vit-b16-clip", "vision": {"img_size": 256}, "embed_dim": 256},
        pruning_loc=5,
        image=256,
        patch=16,
        context=77,
        mix_batch=128,
        step_batch=4,
    ),
}


def _index_translate(window: torch.Tensor, side: int, grid: int, device) -> torch.Tensor:
    """Official ``TPMix.index_translate``: window index → the (row-major) patch indices."""
    total = torch.arange(grid * grid, device=device).reshape(1, 1, grid, grid)
    windows = F.unfold(total.float(), side, stride=1).transpose(1, 2).long()
    return windows.index_select(dim=1, index=window).squeeze(0)


def _batch_index(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Official ``batch_index_generate`` (3-D input): flat indices into (B·N)."""
    batch, count, _ = x.shape
    offset = torch.arange(batch, dtype=torch.long, device=x.device).view(batch, 1) * count
    return (idx + offset).reshape(-1)


def official_tpmix(images: torch.Tensor, saliency: torch.Tensor, patch: int, side: int):
    """``TPMix.tpmix`` (the official code, device-agnostic): mixed images and λ."""
    size = images.shape[2]
    grid = size // patch
    inputs = F.unfold(images, patch, stride=patch).transpose(1, 2)
    source = inputs.flip(0)
    attn = saliency.reshape(-1, grid, grid).unsqueeze(1)
    window_sums = F.unfold(attn, side, stride=1).sum(dim=1)
    low = _index_translate(window_sums.argmin(dim=1), side, grid, images.device)
    high = _index_translate(window_sums.argmax(dim=1), side, grid, images.device)
    low = _batch_index(inputs, low)
    high = _batch_index(inputs, high.flip(0))
    batch, count, channels = inputs.shape
    inputs = inputs.reshape(batch * count, channels).clone()
    inputs[low] = source.reshape(batch * count, channels)[high]
    mixed = F.fold(
        inputs.reshape(batch, count, channels).transpose(1, 2), size, patch, stride=patch
    )
    return mixed, (grid * grid - side * side) / (grid * grid)


def zoo_tpmix(images: torch.Tensor, saliency: torch.Tensor, patch: int, side: int):
    out = mix_windows(images, saliency, patch, side)
    return out.images, out.lam


def _inputs(shape: dict, batch: int, device):
    g = torch.Generator().manual_seed(0)
    size, patch = shape["image"], shape["patch"]
    grid = size // patch
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    saliency = torch.randn(batch, grid * grid, generator=g).to(device)
    return images, saliency, grid


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_mixing(shape_name: str, repeats: int, device) -> None:
    shape = SHAPES[shape_name]
    images, saliency, grid = _inputs(shape, shape["mix_batch"], device)
    sides = list(side_range(grid, 0.35, 0.75))
    for side in sides:
        ours, lam = zoo_tpmix(images, saliency, shape["patch"], side)
        ref, ref_lam = official_tpmix(images, saliency, shape["patch"], side)
        assert torch.equal(ours, ref) and lam == ref_lam, f"side {side}: the mixes differ"
    print(f"[{shape_name}] parity: identical mixed images and λ for sides {sides}")

    def mixing(fn):
        def call():
            with torch.no_grad():
                for side in sides:
                    fn(images, saliency, shape["patch"], side)
            _sync(device)

        return call

    contenders = {"zoo": zoo_tpmix, "official": official_tpmix}
    times = interleave({n: mixing(f) for n, f in contenders.items()}, warmup=1, repeats=repeats)
    ratio = paired_ratio(times["official"], times["zoo"])
    zoo_ms = 1e3 * sorted(times["zoo"])[len(times["zoo"]) // 2] / len(sides)
    off_ms = 1e3 * sorted(times["official"])[len(times["official"]) // 2] / len(sides)
    print(
        f"[{shape_name}] mixing alone (B={images.shape[0]}, {images.shape[-1]} px, S={grid}, "
        f"mean over {len(sides)} sides): zoo {zoo_ms:.2f} ms, official {off_ms:.2f} ms, "
        f"official / zoo = {ratio:.3f}"
    )


def _tokens(batch: int, context: int, g: torch.Generator) -> torch.Tensor:
    t = torch.randint(1, 49000, (batch, context), generator=g)
    t[:, 0], t[:, context // 2] = 49406, 49407  # BOS, EOT (largest id), then padding
    t[:, context // 2 + 1 :] = 0
    return t


def _iteration_batch(shape: dict, batch: int, device) -> dict:
    g = torch.Generator().manual_seed(1)
    size, patch, context = shape["image"], shape["patch"], shape["context"]
    grid = size // patch
    out = {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "text": _tokens(batch, context, g),
        "region_image": torch.randn(batch, 3, size, size, generator=g),
        "region_text": _tokens(batch, context, g),
        "region_labels": torch.randint(0, 2, (batch, grid * grid), generator=g),
    }
    return {k: v.to(device) for k, v in out.items()}


def run_iteration(shape_name: str, repeats: int, batch: int | None, device) -> None:
    """One official iteration: PTA step, ITC step, γ·L_mix step (γ = 1), with AdamW."""
    from lightning_modules.timix import TiMix

    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = TiMix(encoder=shape["encoder"], pruning_loc=shape["pruning_loc"]).to(device)
    data = _iteration_batch(shape, batch or shape["step_batch"], device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def iteration(mix_fn):
        import lightning_modules.timix as timix_module

        def fake_mix(images, saliency, patch, side, placement="saliency", generator=None):
            mixed, lam = mix_fn(images, saliency, patch, side)
            return WindowMix(mixed, lam, side, None, None, None)  # type: ignore[arg-type]

        def call():
            timix_module.mix_windows = fake_mix
            generator = torch.Generator().manual_seed(0)
            for loss in ("pta", "itc", "mix"):
                optimizer.zero_grad(set_to_none=True)
                if loss == "pta":
                    value = model.pta_terms(data)
                elif loss == "itc":
                    base = model.base_terms(data)
                    value = base["itc"]
                else:
                    value = model.mixed_terms(data, base["saliency"], base["probs"], generator)[
                        "mix"
                    ]
                value.backward()
                optimizer.step()
                model.clamp_temperature()
            _sync(device)
            timix_module.mix_windows = mix_windows
            return value.detach()

        return call

    contenders = {"zoo": zoo_tpmix, "official": official_tpmix}
    losses = {}
    for name, fn in contenders.items():
        model.load_state_dict(initial)
        optimizer.state.clear()
        losses[name] = iteration(fn)()
    assert torch.allclose(losses["zoo"], losses["official"], rtol=1e-5, atol=1e-6), losses
    print(f"[{shape_name}] parity: mixed-ITC loss {losses['zoo'].item():.6f} (both)")
    times = interleave({n: iteration(f) for n, f in contenders.items()}, warmup=1, repeats=repeats)
    ratio = paired_ratio(times["official"], times["zoo"])
    zoo_ms = 1e3 * sorted(times["zoo"])[len(times["zoo"]) // 2]
    print(
        f"[{shape_name}] one iteration (B={data['image'].shape[0]}, 3 optimiser steps): "
        f"zoo {zoo_ms:.1f} ms, official / zoo = {ratio:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="iteration batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-iteration", action="store_true")
    args = parser.parse_args(argv)
    run_mixing(args.shape, args.repeats, args.device)
    if not args.skip_iteration:
        run_iteration(args.shape, args.repeats, args.batch, args.device)


if __name__ == "__main__":
    main()
