"""TiMix's saliency-guided window mixing (Jiang et al., AAAI 2024), on device, batched.

Official code: ``TPMix.py`` (``TPMix.tpmix`` / ``__call__``) of github.com/chaoyajiang/TiMiX.
For a batch of B square images of S×S patches (patch size p) and a per-patch saliency
s ∈ R^{B×S×S} (the z-scored text-aware patch scores, :func:`zoo.losses.timix.patch_saliency`):

1. one window side r per batch, uniform on {⌊0.35·S⌋, …, ⌊0.75·S⌋} (the config's
   ``min_side_ratio`` / ``max_side_ratio``; drawn from a ``torch.Generator``, the official
   code uses Python's ``random.choice`` over the same list);
2. Σ s over every r×r window of patches (stride 1): ``avg_pool2d`` with divisor 1 on the
   (B, 1, S, S) map, (S−r+1)² windows per image;
3. target i keeps its image except its least salient window R_i^min = argmin; its source is
   j = B−1−i (the batch flipped) and the pasted content is the source's most salient
   window R_j^max = argmax (first index on ties, as ``torch.argmin`` / ``argmax``);
4. patch k of R_j^max (row-major in the window) lands on patch k of R_i^min, i.e. a pixel
   shift by (R_j^max − R_i^min)·p. The official code unfolds the images into patches,
   index-assigns and folds back; here one pixel mask and one gather by index arithmetic
   build every image at once, then ``torch.where`` (no loop over the batch, no ``.cuda()``:
   the official ``index_translate`` hard-codes the device);
5. λ = (S² − r²)/S², the fraction of the target image kept. This is the code's convention
   (timm's Mixup ``lam``); the official comment notes it equals 1 − λ of the paper's text.

``placement="random"`` draws both windows uniformly instead (a CutMix-style ablation with
the same side distribution and the same soft labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Placement = Literal["saliency", "random"]
PLACEMENTS = ("saliency", "random")


@dataclass
class WindowMix:
    """The mixed batch and what was done to it.

    ``images`` (B, C, H, W); ``lam`` the fraction of each target kept, (S² − r²)/S²;
    ``side`` r in patches; ``target_pos`` / ``source_pos`` (B, 2) the (row, col) of the
    top-left patch of target i's replaced window and of the pasted window in source
    B−1−i; ``pasted`` (B, S, S) bool, True on the patches that come from the source.
    """

    images: Tensor
    lam: float
    side: int
    target_pos: Tensor
    source_pos: Tensor
    pasted: Tensor


def side_range(grid: int, min_side_ratio: float = 0.35, max_side_ratio: float = 0.75) -> range:
    """The window sides r the official ``TPMix`` draws from: ⌊min·S⌋ … ⌊max·S⌋ inclusive."""
    low, high = int(grid * min_side_ratio), int(grid * max_side_ratio)
    if not 1 <= low <= high <= grid:
        raise ValueError(
            f"window sides {low}..{high} (side ratios {min_side_ratio}..{max_side_ratio} of "
            f"{grid} patches) must satisfy 1 <= min <= max <= {grid}"
        )
    return range(low, high + 1)


def draw_side(
    grid: int,
    min_side_ratio: float = 0.35,
    max_side_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> int:
    """One window side for the batch, uniform over :func:`side_range`."""
    sides = side_range(grid, min_side_ratio, max_side_ratio)
    return sides[int(torch.randint(len(sides), (1,), generator=generator))]


def window_sums(saliency: Tensor, side: int) -> Tensor:
    """Σ s over every ``side``×``side`` window (stride 1): (B, S, S) → (B, S−r+1, S−r+1)."""
    return F.avg_pool2d(saliency.unsqueeze(1), side, stride=1, divisor_override=1).squeeze(1)


def _grid(images: Tensor, patch_size: int) -> int:
    _, _, height, width = images.shape
    if height != width or height % patch_size:
        raise ValueError(
            f"window mixing needs square images whose side is a multiple of the patch size "
            f"{patch_size}, got {height}x{width}"
        )
    return height // patch_size


def mix_windows(
    images: Tensor,
    saliency: Tensor | None,
    patch_size: int,
    side: int,
    placement: Placement = "saliency",
    generator: torch.Generator | None = None,
) -> WindowMix:
    """Paste source B−1−i's window into target i (see the module docstring).

    ``saliency`` (B, S, S) or (B, S·S) per-patch scores (unused with ``placement="random"``,
    whose window corners are drawn from ``generator``). Nothing here tracks gradients.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    batch = images.shape[0]
    grid = _grid(images, patch_size)
    if not 1 <= side <= grid:
        raise ValueError(f"window side {side} must be in 1..{grid} patches")
    positions = grid - side + 1
    device = images.device
    with torch.no_grad():
        if placement == "saliency":
            if saliency is None:
                raise ValueError("placement 'saliency' needs the patch saliency")
            sums = window_sums(saliency.reshape(batch, grid, grid).float(), side).flatten(1)
            target = sums.argmin(dim=1)
            source = sums.argmax(dim=1).flip(0)  # row i: the window of image B−1−i
        else:
            corners = torch.randint(positions**2, (2, batch), generator=generator)
            target, source = corners.to(device).unbind(0)
        target_pos = torch.stack((target // positions, target % positions), dim=1)
        source_pos = torch.stack((source // positions, source % positions), dim=1)
        mixed, pasted = _paste(images, target_pos, source_pos, side, patch_size)
    lam = (grid * grid - side * side) / (grid * grid)
    return WindowMix(mixed, lam, side, target_pos, source_pos, pasted)


def _paste(
    images: Tensor, target_pos: Tensor, source_pos: Tensor, side: int, patch_size: int
) -> tuple[Tensor, Tensor]:
    """Every target at once: pixel (y, x) inside target i's window reads source B−1−i at
    (y, x) + (source_pos − target_pos)·p; outside it keeps its own pixel."""
    batch, _, height, width = images.shape
    device = images.device
    grid = height // patch_size
    shift = (source_pos - target_pos) * patch_size  # (B, 2) pixels
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    top, left = (target_pos * patch_size).unbind(1)
    extent = side * patch_size
    in_rows = (rows >= top[:, None]) & (rows < (top + extent)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + extent)[:, None])  # (B, W)
    src_rows = (rows + shift[:, :1]).clamp(0, height - 1)  # (B, H), exact inside the window
    src_cols = (cols + shift[:, 1:]).clamp(0, width - 1)
    source = images.flip(0)
    channels = images.shape[1]
    shape = (batch, channels, height, width)
    # two gathers (rows, then columns): the source shifted by (dy, dx) per sample
    gathered = torch.gather(source, 2, src_rows[:, None, :, None].expand(shape))
    gathered = torch.gather(gathered, 3, src_cols[:, None, None, :].expand(shape))
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    mixed = torch.where(mask, gathered, images)
    patch = torch.arange(grid, device=device)
    p_rows = (patch >= target_pos[:, :1]) & (patch < target_pos[:, :1] + side)
    p_cols = (patch >= target_pos[:, 1:]) & (patch < target_pos[:, 1:] + side)
    return mixed, p_rows[:, :, None] & p_cols[:, None, :]
