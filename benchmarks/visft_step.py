"""One ViSFT stage-2 training step: the zoo's ``lightning_modules.visft.ViSFT`` against a
reference whose q/v LoRA is computed the way the official code computes it.

A stage-2 step (issue 12) is: the backbone forward (a timm ViT whose every fused ``qkv``
carries LoRA on its q and v thirds), ONE task's frozen head and loss (detection: DETR,
segmentation: Mask2Former-lite, caption: Show-Attend-Tell), the backward into the LoRA
matrices, gradient clipping at 0.1 and an AdamW step on the LoRA matrices only.

Contenders, all holding the *same weights* (the reference is a deep copy of the zoo module
with its LoRA layers swapped) and stepping on the *same batch*:

- ``zoo``: ``ViSFT.task_loss`` + backward; the q/v LoRA is :class:`zoo.lora.FusedQVLoraLinear`
  (peft): ``A x`` once (2r features), two rank-r products with the halves of ``B``, the
  k third zero; clipping over the optimiser's parameters (Lightning's
  ``gradient_clip_val``); the zoo's optimiser (``zoo.optim.build_optimizer``: fused AdamW).
- ``official``: the same module with each qkv replaced by :class:`LoralibQVMergedLinear` in
  its ``merged_weight`` form, which follows what ViSFT runs (github.com/TencentARC/ViSFT @
  f7448a74, ``mmf/models/visft/eva_vit_g.py`` and ``eva_vit_model.py``, ``Attention.forward``
  and ``merge_AB``, on loralib's ``MergedLinear(enable_lora=[True, False, True])``): the
  weight delta ``ΔW`` is rebuilt every forward as a grouped ``F.conv1d`` of ``lora_A`` with
  ``lora_B`` (groups = 2), scattered into a zero (3d × d) matrix (loralib's ``zero_pad``, k
  rows zero), and applied as a dense ``dropout(x) @ ΔWᵀ · scaling`` added in place to
  ``F.linear(x, W, b)``; loralib 0.1.2's own ``MergedLinear.forward`` (microsoft/LoRA
  ``loralib/layers.py``, since commit 7036ee0) is the same computation. The optimiser is
  mmf's ``adam_w``, i.e. Hugging Face ``transformers.optimization.AdamW`` (a Python loop
  over parameters with bias correction folded into the step size and decoupled weight
  decay after the update; :class:`HFAdamW`, written from its description since current
  transformers no longer ships it); clipping through fairscale OSS's ``clip_grad_norm``
  over the optimiser's parameters (``enable_state_sharding: true``, max norm 0.1).
- ``loralib_011``: the same as ``official`` but with loralib 0.1.1's ``MergedLinear.forward``
  (before commit 7036ee0): ``after_A = F.linear(dropout(x), A)``, then a grouped
  ``F.conv1d`` of ``after_A`` (channels = 2r, length = tokens) with ``B``, scattered into a
  zero (…, 3d) output (the old ``zero_pad``), scaled and added in place. This is the
  input-side form; ViSFT does not run it, it is here because it is the other loralib form.

Only the qkv LoRA layer, the optimiser and the clipping differ; the rest of the step (timm
attention with SDPA, the heads, the losses, the Hungarian matching) is the zoo's code in all
three, so the ratio measures the LoRA formulation and the optimiser, not the heads. The
official EVA attention (explicit ``softmax(q kᵀ)``) is not reproduced.

Before timing, :func:`check_parity` runs one forward + backward of each contender on each
task with the same seed (the frozen heads stay in train mode, so their dropout and
Mask2Former's point sampling draw the same numbers) and compares the losses and the
gradients of every LoRA matrix (``torch.allclose``).

Timing: the contenders are interleaved step by step (``benchmarks.common.interleave``); the
ratio is the median of per-round ratios. Each step records where its time goes: backbone
forward (``feature_map``), head + loss, backward, clip + optimiser (+ ``zero_grad``); the
phases are separated with a device synchronisation on CUDA. ``--layer`` also times one qkv
layer alone (forward + backward on the step's token shape) and ``--profile`` prints the top
ops of one step of ``zoo`` and ``official`` per task (``torch.profiler``).

Shapes (``--shape``): ``tiny`` = recipes/visft/tiny.yaml (ViT width 128, depth 4, 4 heads,
patch 8, 64 px, batch 16, r 4, alpha 1, tiny heads, 1,024 mask points); ``base`` = ViT-B/16
at 224 px, batch 2, r 64, alpha 1 (ViSFT's LoRA), the paper-scale heads. Every size can be
overridden. Batches are generated CLEVR-like scenes (``zoo.data.clevr_scenes``), built in
memory, so nothing is written or downloaded. Run from the repository root::

    python -m benchmarks.visft_step --shape tiny --repeats 15 --profile
    python -m benchmarks.visft_step --shape base --repeats 5
    python -m benchmarks.visft_step --shape base --device cuda --amp bf16   # benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import fmt_ratio, interleave, median, paired_ratio, synchronize

TASK_NAMES = ("detection", "segmentation", "caption")
PHASES = ("backbone_fwd", "head_loss", "backward", "clip_optim")
ReferenceForm = Literal["merged_weight", "input_conv1d"]
#: contender name → the reference form it uses (``zoo`` uses none).
REFERENCE_FORMS: dict[str, ReferenceForm] = {
    "official": "merged_weight",
    "loralib_011": "input_conv1d",
}
#: ViSFT's stage-2 clipping (``max_grad_l2_norm: 0.1``; the tiny recipe's gradient_clip_val).
CLIP_NORM = 0.1

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model="vit_tiny_patch16_224",
        image_size=64,
        patch=8,
        width=128,
        depth=4,
        heads=4,
        batch=16,
        rank=4,
        alpha=1.0,
        head_preset="tiny",
        mask_points=1024,
        lr=5e-4,
    ),
    "base": dict(
        model="vit_base_patch16_224",
        image_size=224,
        patch=16,
        width=768,
        depth=12,
        heads=12,
        batch=2,
        rank=64,
        alpha=1.0,
        head_preset="paper",
        mask_points=12544,
        lr=1e-5,
    ),
}


# --------------------------------------------------------------------------- the reference
class LoralibQVMergedLinear(nn.Linear):
    """A fused qkv Linear with loralib-style LoRA on its q and v thirds, as ViSFT runs it.

    loralib's ``MergedLinear(in, 3d, r, enable_lora=[True, False, True])`` keeps one
    ``lora_A`` of ``2r`` rows (r for q, r for v) and one ``lora_B`` of ``2d`` rows (d for q,
    d for v) read as the weight of a 1×1 convolution with 2 groups, and a boolean
    ``lora_ind`` over the 3d outputs marking the adapted rows (``zero_pad`` writes the 2d
    adapted values there and leaves the k third zero). The scaling is ``alpha / r``.

    ``form`` picks how the forward applies it (module docstring): ``merged_weight`` rebuilds
    ``ΔW`` (3d × in) from A and B and multiplies the input by it (ViSFT's
    ``Attention.forward`` / loralib ≥ 0.1.2); ``input_conv1d`` runs A on the input and the
    grouped convolution on the result (loralib 0.1.1). Written from those descriptions, not
    copied; ``fan_in_fan_out`` (GPT-2's Conv1D layout) is not needed for a timm Linear.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        lora_alpha: float,
        bias: bool = True,
        form: ReferenceForm = "merged_weight",
        enable_lora: tuple[bool, ...] = (True, False, True),
        lora_dropout: float = 0.0,
    ):
        super().__init__(in_features, out_features, bias=bias)
        if out_features % len(enable_lora):
            raise ValueError(f"out_features {out_features} is not divisible by {enable_lora}")
        if form not in ("merged_weight", "input_conv1d"):
            raise ValueError(f"form must be merged_weight or input_conv1d, got {form!r}")
        self.form = form
        self.groups = sum(enable_lora)
        self.r = r
        self.scaling = lora_alpha / r
        slice_rows = out_features // len(enable_lora)
        self.lora_A = nn.Parameter(self.weight.new_zeros(r * self.groups, in_features))
        self.lora_B = nn.Parameter(self.weight.new_zeros(slice_rows * self.groups, r))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        marks = torch.zeros(len(enable_lora), slice_rows, dtype=torch.bool)
        marks[list(enable_lora)] = True
        self.register_buffer("lora_ind", marks.view(-1), persistent=False)
        # loralib keeps a plain lambda when the dropout is 0 (no module, no RNG draw)
        self.lora_dropout: Callable[[torch.Tensor], torch.Tensor] = (
            nn.Dropout(lora_dropout) if lora_dropout > 0 else (lambda x: x)
        )

    @classmethod
    def from_zoo(cls, layer: nn.Module, form: ReferenceForm) -> LoralibQVMergedLinear:
        """The same weights as a zoo :class:`~zoo.lora.FusedQVLoraLinear` (one adapter);
        its ``lora_A`` (2r × in) and ``lora_B`` (2d × r) already have loralib's layout."""
        base = layer.get_base_layer()
        (adapter,) = layer.active_adapters
        dropout = layer.lora_dropout[adapter]
        out = cls(
            base.in_features,
            base.out_features,
            r=layer.r[adapter],
            lora_alpha=layer.lora_alpha[adapter],
            bias=base.bias is not None,
            form=form,
            lora_dropout=float(getattr(dropout, "p", 0.0)),
        ).to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight)
            if base.bias is not None:
                out.bias.copy_(base.bias)
            out.lora_A.copy_(layer.lora_A[adapter].weight)
            out.lora_B.copy_(layer.lora_B[adapter].weight)
        return out

    def zero_pad_rows(self, delta: torch.Tensor) -> torch.Tensor:
        """(2d, …) → (3d, …): the adapted rows in place, the k rows zero."""
        padded = delta.new_zeros((self.lora_ind.numel(), *delta.shape[1:]))
        padded[self.lora_ind] = delta
        return padded

    def zero_pad_features(self, delta: torch.Tensor) -> torch.Tensor:
        """(…, 2d) → (…, 3d) along the last axis (loralib 0.1.1's ``zero_pad``)."""
        padded = delta.new_zeros((*delta.shape[:-1], self.out_features))
        flat = padded.view(-1, self.out_features)
        flat[:, self.lora_ind] = delta.reshape(-1, delta.shape[-1])
        return padded

    def merged_delta(self) -> torch.Tensor:
        """ΔW (3d × in) without the scaling: grouped 1×1 convolution of A by B, zero-padded."""
        delta = F.conv1d(self.lora_A.unsqueeze(0), self.lora_B.unsqueeze(-1), groups=self.groups)
        return self.zero_pad_rows(delta.squeeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        if self.form == "merged_weight":
            result += self.lora_dropout(x) @ self.merged_delta().T * self.scaling
            return result
        after_a = F.linear(self.lora_dropout(x), self.lora_A)
        after_b = F.conv1d(
            after_a.transpose(-2, -1), self.lora_B.unsqueeze(-1), groups=self.groups
        ).transpose(-2, -1)
        result += self.zero_pad_features(after_b) * self.scaling
        return result


class HFAdamW(torch.optim.Optimizer):
    """Hugging Face's former ``transformers.optimization.AdamW`` (mmf's ``adam_w``).

    Per parameter, in a Python loop: ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``p ← p − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)``, then the decoupled decay
    ``p ← p − lr·wd·p`` (applied after the update, as that class does).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = v.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    t = state["step"]
                    step_size *= math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                p.addcdiv_(m, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def swap_in_reference(module: nn.Module, form: ReferenceForm) -> list[nn.Parameter]:
    """Replace every :class:`~zoo.lora.FusedQVLoraLinear` inside ``module`` by a
    :class:`LoralibQVMergedLinear` with the same weights; returns the new LoRA matrices."""
    from zoo.lora import FusedQVLoraLinear

    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, FusedQVLoraLinear)]
    if not targets:
        raise ValueError("no FusedQVLoraLinear to replace (is this a stage-2 LoRA ViSFT?)")
    params: list[nn.Parameter] = []
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        reference = LoralibQVMergedLinear.from_zoo(layer, form)
        setattr(parent, child, reference)
        params += [reference.lora_A, reference.lora_B]
    return params


# --------------------------------------------------------------------------- data and models
@dataclass
class Shape:
    """Sizes of one benchmark setting (``SHAPES`` gives the two presets)."""

    model: str
    image_size: int
    patch: int
    width: int
    depth: int
    heads: int
    batch: int
    rank: int
    alpha: float
    head_preset: str
    mask_points: int
    lr: float

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1  # patches + class token


def scene_batches(shape: Shape, seed: int = 0, device: str = "cpu") -> tuple[dict, Any]:
    """One batch per task of ``shape.batch`` CLEVR-like scenes (in memory), in the
    datamodule's format: normalised images; boxes as normalised cx cy w h; masks (N, H, W)
    uint8; labels 0..2 (the shapes); caption tokens of one template caption per scene.
    Returns ``({task: batch}, vocab)``."""
    import numpy as np
    from torchvision.ops import box_convert

    from zoo.data.clevr_scenes import SHAPES as SCENE_SHAPES
    from zoo.data.clevr_scenes import ClevrScenes, scene_captions
    from zoo.heads.captioner import CaptionVocab

    size = shape.image_size
    generator = ClevrScenes(image_size=size, seed=seed)
    scenes = [generator.scene("train", i) for i in range(shape.batch)]
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1) for s in scenes]
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = ((pixels.float() / 255 - mean) / std).to(device)
    labels, boxes, masks = [], [], []
    for scene in scenes:
        labels.append(
            torch.tensor([SCENE_SHAPES.index(o.shape) for o in scene.objects], device=device)
        )
        xywh = torch.tensor([o.bbox for o in scene.objects], dtype=torch.float32)
        boxes.append((box_convert(xywh, "xywh", "cxcywh") / size).to(device))
        masks.append(torch.from_numpy(scene.masks.astype(np.uint8)).to(device))
    rng = np.random.default_rng(seed)
    captions = [scene_captions(s.objects, rng, count=1)[0] for s in scenes]
    vocab = CaptionVocab.from_captions(captions, min_word_freq=0)
    tokens, lengths = vocab.encode_batch(captions)
    batches = {
        "detection": {"task": "detection", "image": images, "labels": labels, "boxes": boxes},
        "segmentation": {
            "task": "segmentation",
            "image": images,
            "labels": labels,
            "masks": masks,
        },
        "caption": {
            "task": "caption",
            "image": images,
            "tokens": tokens.to(device),
            "lengths": lengths.to(device),
        },
    }
    return batches, vocab


def build_zoo_module(
    shape: Shape, vocab: Any, tasks: tuple[str, ...] = TASK_NAMES, seed: int = 0
) -> nn.Module:
    """A stage-2 ViSFT (frozen random heads, q/v LoRA) at ``shape``; ``lora_B`` is drawn at
    random (it starts at zero in training, which would make the gradients of ``lora_A``
    zero and the parity check empty)."""
    from lightning_modules.visft import ViSFT
    from zoo.visft.backbone import lora_parameters

    torch.manual_seed(seed)
    head = {"preset": shape.head_preset}
    module = ViSFT(
        backbone={
            "model_name": shape.model,
            "img_size": shape.image_size,
            "patch_size": shape.patch,
            "embed_dim": shape.width,
            "depth": shape.depth,
            "num_heads": shape.heads,
        },
        stage=2,
        tasks=list(tasks),
        detection=dict(head),
        segmentation={**head, "num_points": shape.mask_points},
        caption={**head, "dropout": 0.1} if shape.head_preset == "tiny" else dict(head),
        random_heads=True,
        lora={"r": shape.rank, "alpha": shape.alpha, "qv_only": True, "target_modules": ["qkv"]},
        optim={"lr": shape.lr},
    )
    module.configure_heads(list(tasks), {"detection": 3, "segmentation": 3}, vocab)
    with torch.no_grad():
        for name, p in lora_parameters(module.backbone):
            if "lora_B" in name:
                p.normal_(0.0, 1.0 / math.sqrt(shape.rank))
    return module.train()


@dataclass
class Contender:
    """A module, the parameters its optimiser updates, the optimiser and the clip set."""

    name: str
    module: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    phases: dict[str, list[float]] = field(default_factory=dict)

    def lora_grads(self) -> list[torch.Tensor]:
        return [p.grad.detach().clone() for p in self.params]


def build_contenders(
    shape: Shape,
    vocab: Any,
    tasks: tuple[str, ...] = TASK_NAMES,
    references: tuple[str, ...] = tuple(REFERENCE_FORMS),
    device: str = "cpu",
) -> dict[str, Contender]:
    """``zoo`` plus the named references, all with the zoo module's weights."""
    from zoo.optim import build_optimizer

    zoo = build_zoo_module(shape, vocab, tasks).to(device)
    named = zoo.trainable_parameters()
    out = {
        "zoo": Contender(
            "zoo", zoo, [p for _, p in named], build_optimizer(zoo.optimizer_target(), zoo.optim)
        )
    }
    for name in references:
        module = copy.deepcopy(zoo)
        params = swap_in_reference(module, REFERENCE_FORMS[name])
        spec = zoo.optim
        optimizer = HFAdamW(
            params,
            lr=spec.lr,
            betas=tuple(spec.betas),
            eps=spec.eps,
            weight_decay=spec.weight_decay,
        )
        out[name] = Contender(name, module, params, optimizer)
    return out


# --------------------------------------------------------------------------- the step
#: ``wall``: elapsed seconds; ``cpu``: CPU seconds of this process (``time.process_time``).
#: With one torch thread on a shared machine the CPU clock leaves out the time the step
#: waited for a core, so it is the steadier measure there; on a GPU only ``wall`` means much.
CLOCKS = ("wall", "cpu")


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@contextlib.contextmanager
def _timed_features(
    module: nn.Module, marks: list[tuple[float, float]], device: str
) -> Iterator[None]:
    """Record the moment ``module.feature_map`` returns (the backbone forward's end)."""
    original = module.feature_map

    def timed(images: torch.Tensor) -> torch.Tensor:
        out = original(images)
        synchronize(device)
        marks.append(_now())
        return out

    module.feature_map = timed
    try:
        yield
    finally:
        del module.feature_map  # back to the class's method


def _autocast(device: str, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, amp))


def make_step(
    contender: Contender, batch: Mapping[str, Any], device: str = "cpu", amp: str | None = None
) -> Callable[[], None]:
    """One training step of ``contender`` on ``batch``; records each phase's wall and
    process-CPU seconds in ``contender.phases[task][clock][phase]``."""
    module, optimizer, params = contender.module, contender.optimizer, contender.params
    record = contender.phases.setdefault(
        batch["task"], {clock: {p: [] for p in (*PHASES, "step")} for clock in CLOCKS}
    )

    def step() -> None:
        marks = [_now()]
        with _timed_features(module, marks, device), _autocast(device, amp):
            loss = module.task_loss(batch)["loss"]
        synchronize(device)
        marks.append(_now())
        loss.backward()
        synchronize(device)
        marks.append(_now())
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        marks.append(_now())
        for k, clock in enumerate(CLOCKS):
            for name, a, b in zip(PHASES, marks, marks[1:]):
                record[clock][name].append(b[k] - a[k])
            record[clock]["step"].append(marks[-1][k] - marks[0][k])

    return step


def check_parity(
    contenders: Mapping[str, Contender],
    batches: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    rtol: float = 1e-3,
    atol_scale: float = 1e-3,
) -> dict[str, dict[str, Any]]:
    """Loss and LoRA gradients of every reference against ``zoo``, task by task, from one
    forward + backward with the same seed. Per (reference, task): the absolute loss
    difference, the largest gradient difference relative to the gradient's max-abs, and
    ``ok`` (``allclose`` of the loss and of every LoRA gradient, with an absolute tolerance
    of ``atol_scale`` times that matrix's largest gradient)."""

    def loss_and_grads(c: Contender, batch: Mapping[str, Any]) -> tuple[float, list]:
        c.module.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        loss = c.module.task_loss(batch)["loss"]
        loss.backward()
        grads = c.lora_grads()
        c.module.zero_grad(set_to_none=True)
        return loss.item(), grads

    report: dict[str, dict[str, Any]] = {}
    for task, batch in batches.items():
        base_loss, base_grads = loss_and_grads(contenders["zoo"], batch)
        for name, c in contenders.items():
            if name == "zoo":
                continue
            loss, grads = loss_and_grads(c, batch)
            if len(grads) != len(base_grads):
                raise ValueError(f"{name}: {len(grads)} LoRA matrices, zoo {len(base_grads)}")
            rel, ok = 0.0, math.isclose(loss, base_loss, rel_tol=rtol, abs_tol=1e-7)
            for g, g0 in zip(grads, base_grads):
                scale = g0.abs().max().item()
                rel = max(rel, (g - g0).abs().max().item() / max(scale, 1e-30))
                ok &= scale > 0 and torch.allclose(g, g0, rtol=rtol, atol=atol_scale * scale)
            report.setdefault(name, {})[task] = {
                "loss_zoo": base_loss,
                "loss_diff": abs(loss - base_loss),
                "grad_max_rel_diff": rel,
                "ok": bool(ok),
            }
    return report


def layer_contenders(
    contenders: Mapping[str, Contender], shape: Shape, device: str, amp: str | None
) -> dict[str, Callable[[], None]]:
    """One qkv LoRA layer alone, forward + backward, on the step's (batch, tokens, width)
    input (which requires grad, as inside the ViT)."""
    from zoo.lora import FusedQVLoraLinear

    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape.batch, shape.tokens, shape.width, generator=g).to(device)
    x.requires_grad_(True)
    out: dict[str, Callable[[], None]] = {}
    for name, c in contenders.items():
        kind = FusedQVLoraLinear if name == "zoo" else LoralibQVMergedLinear
        layer = next(m for m in c.module.modules() if isinstance(m, kind))

        def run(layer: nn.Module = layer) -> None:
            with _autocast(device, amp):
                y = layer(x)
            y.float().square().mean().backward()

        out[name] = run
    return out


def top_ops(step: Callable[[], None], device: str, rows: int = 8) -> list[tuple[str, float]]:
    """The ``rows`` ops with the most self time in one ``step()`` (CUDA time on a GPU):
    (name, percent of the step's total self time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:rows]
    return [(e.key, 100.0 * getattr(e, key) / total) for e in ranked]


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--model", default=None, help="timm ViT name (sizes still apply)")
    for name in ("image_size", "patch", "width", "depth", "heads", "batch", "rank"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--head-preset", choices=["tiny", "paper"], default=None)
    parser.add_argument("--mask-points", type=int, default=None)
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated")
    parser.add_argument(
        "--references",
        default=",".join(REFERENCE_FORMS),
        help=f"comma-separated subset of {list(REFERENCE_FORMS)}",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp", choices=["bfloat16"], default=None, help="autocast dtype of forward + loss"
    )
    parser.add_argument("--tf32", action="store_true", help="CUDA fp32 timing with TF32")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default=None,
        help="clock of the ratios and phases (default: cpu with one CPU thread, else wall)",
    )
    parser.add_argument("--no-layer", action="store_true", help="skip the qkv-layer timing")
    parser.add_argument("--profile", action="store_true", help="top ops per task")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    return parser.parse_args(argv)


def resolve_shape(args: argparse.Namespace) -> Shape:
    values = dict(SHAPES[args.shape])
    for key in values:
        override = getattr(args, key, None)
        if override is not None:
            values[key] = override
    shape = Shape(**values)
    if shape.image_size % shape.patch or shape.width % shape.heads:
        raise ValueError(f"--image-size must divide by --patch and --width by --heads: {shape}")
    return shape


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shape = resolve_shape(args)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    references = tuple(r for r in args.references.split(",") if r)
    unknown = [t for t in tasks if t not in TASK_NAMES] + [
        r for r in references if r not in REFERENCE_FORMS
    ]
    if unknown:
        raise SystemExit(f"unknown --tasks / --references entries: {unknown}")

    started = time.perf_counter()
    load_start = os.getloadavg()
    batches, vocab = scene_batches(shape, device=args.device)
    batches = {t: batches[t] for t in tasks}
    contenders = build_contenders(shape, vocab, tasks, references, args.device)
    # parity in plain fp32 (no autocast, TF32 off), then timing as asked
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    parity = check_parity(contenders, batches)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32

    result: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks.visft_step", *(sys.argv[1:] if argv is None else argv)]
        ),
        "shape": vars(shape) | {"tokens": shape.tokens},
        "lora_params": sum(p.numel() for p in contenders["zoo"].params),
        "parity": parity,
        "references": list(references),
        "clock": args.clock or default_clock(args.device),
        "tasks": {},
    }
    for task in tasks:
        steps = {
            n: make_step(c, batches[task], args.device, args.amp) for n, c in contenders.items()
        }
        interleave(steps, args.warmup, args.repeats, args.device)
        entry: dict[str, Any] = {}
        for clock in CLOCKS:
            runs = {n: c.phases[task][clock] for n, c in contenders.items()}
            entry[clock] = {
                **summarise({n: r["step"][args.warmup :] for n, r in runs.items()}, references),
                "phases": {
                    n: {p: median(r[p][args.warmup :]) for p in PHASES} for n, r in runs.items()
                },
            }
        if args.profile:
            entry["top_ops"] = {n: top_ops(steps[n], args.device) for n in ("zoo", *references)}
        result["tasks"][task] = entry
    if not args.no_layer:
        layer = layer_contenders(contenders, shape, args.device, args.amp)
        samples: dict[str, dict[str, list[float]]] = {c: {n: [] for n in layer} for c in CLOCKS}
        clocked = {n: _clocked(fn, n, samples) for n, fn in layer.items()}
        interleave(clocked, args.warmup, max(args.repeats, 10), args.device)
        result["qkv_layer"] = {
            clock: summarise({n: v[args.warmup :] for n, v in samples[clock].items()}, references)
            for clock in CLOCKS
        }
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "amp": args.amp or ("fp32 (TF32)" if args.tf32 else "fp32"),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }
    result["total_seconds"] = time.perf_counter() - started
    print_report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def default_clock(device: str) -> str:
    """``cpu`` for a one-thread CPU run (process CPU time = the step's own work), else
    ``wall`` (several threads would add their spinning; a GPU works asynchronously)."""
    return "cpu" if torch.device(device).type == "cpu" and torch.get_num_threads() == 1 else "wall"


def summarise(samples: Mapping[str, list[float]], references: tuple[str, ...]) -> dict:
    """Median seconds per contender and the paired ratios reference / zoo."""
    return {
        "seconds": {n: median(v) for n, v in samples.items()},
        "ratio": {n: paired_ratio(samples[n], samples["zoo"]) for n in references},
    }


def _clocked(
    fn: Callable[[], None], name: str, samples: dict[str, dict[str, list[float]]]
) -> Callable[[], None]:
    def run() -> None:
        start = _now()
        fn()
        end = _now()
        for k, clock in enumerate(CLOCKS):
            samples[clock][name].append(end[k] - start[k])

    return run


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds == seconds else "n/a"


def print_report(result: dict[str, Any]) -> None:
    shape, machine = result["shape"], result["machine"]
    clock = result["clock"]
    other = next(c for c in CLOCKS if c != clock)
    print(
        f"ViSFT stage-2 step, {json.dumps(shape)}, {result['lora_params']:,} LoRA parameters, "
        f"{machine['amp']} on {machine['device']}, {machine['threads']} threads, "
        f"load {machine['load_start'][0]:.2f} → {machine['load_end'][0]:.2f}; "
        f"times: {clock} clock"
    )
    for name, per_task in result["parity"].items():
        cells = ", ".join(
            f"{t}: |Δloss| {v['loss_diff']:.1e}, grad rel {v['grad_max_rel_diff']:.1e}"
            f"{'' if v['ok'] else ' MISMATCH'}"
            for t, v in per_task.items()
        )
        print(f"parity {name} vs zoo: {cells}")
    names = ["zoo", *result["references"]]
    refs = result["references"]
    header = [f"{n} ms" for n in names] + [f"{n} / zoo" for n in refs]
    header += [f"{n} / zoo ({other})" for n in refs]
    print("\n| task | " + " | ".join(header) + " |")
    print("|---|" + "---|" * (len(names) + 2 * len(refs)))
    for task, t in result["tasks"].items():
        main, alt = t[clock], t[other]
        cells = [_ms(main["seconds"][n]) for n in names]
        cells += [fmt_ratio(main["ratio"][n]) for n in refs]
        cells += [fmt_ratio(alt["ratio"][n]) for n in refs]
        print(f"| {task} | " + " | ".join(cells) + " |")
    print(f"\nwhere the time goes (median {clock} ms per phase)")
    print("| task | contender | " + " | ".join(PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for task, t in result["tasks"].items():
        for name, phases in t[clock]["phases"].items():
            print(f"| {task} | {name} | " + " | ".join(_ms(phases[p]) for p in PHASES) + " |")
    if "qkv_layer" in result:
        q = result["qkv_layer"][clock]
        cells = ", ".join(f"{n} {_ms(s)} ms" for n, s in q["seconds"].items())
        rs = ", ".join(f"{n} / zoo {fmt_ratio(r)}" for n, r in q["ratio"].items())
        print(f"\none qkv layer alone, fwd + bwd ({clock}): {cells}; {rs}")
    for task, t in result["tasks"].items():
        for name, ops in t.get("top_ops", {}).items():
            listed = ", ".join(f"{op} {pct:.0f}%" for op, pct in ops)
            print(f"top ops, {task}, {name}: {listed}")
    summary = []
    for task, t in result["tasks"].items():
        summary.append(
            f"visft_step_ratio_{task}={t[clock]['ratio'].get('official', float('nan')):.3f}"
        )
        summary.append(f"visft_step_zoo_ms_{task}={_ms(t[clock]['seconds']['zoo'])}")
    ok = all(v["ok"] for per in result["parity"].values() for v in per.values())
    summary.append(f"parity_ok={ok if result['parity'] else 'n/a'}")
    summary.append(f"clock={clock} total_s={result['total_seconds']:.0f}")
    print("summary: " + " ".join(summary))


if __name__ == "__main__":
    main()
