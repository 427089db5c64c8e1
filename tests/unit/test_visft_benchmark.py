"""The ViSFT stage-2 step benchmark compares like with like: the loralib-style reference
layer computes the zoo's q/v LoRA exactly (hand-built ΔW, float64 outputs and gradients),
a whole stage-2 step gives the same loss and LoRA gradients in both, the reference
optimiser follows its update rule, and both contenders make the same first update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.visft_step import (
    CLIP_NORM,
    HFAdamW,
    LoralibQVMergedLinear,
    Shape,
    build_contenders,
    check_parity,
    make_step,
    scene_batches,
    swap_in_reference,
)
from zoo.lora import FusedQVLoraLinear, apply_lora

D, R, ALPHA = 6, 2, 3.0
FORMS = ("merged_weight", "input_conv1d")
SMALL = Shape(
    model="vit_tiny_patch16_224",
    image_size=32,
    patch=8,
    width=32,
    depth=2,
    heads=2,
    batch=2,
    rank=2,
    alpha=1.0,
    head_preset="tiny",
    mask_points=64,
    lr=1e-3,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids waiting on a shared machine's busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)


def zoo_layer() -> FusedQVLoraLinear:
    """A peft q/v LoRA on a fused qkv Linear, float64, with a random (non-zero) B."""
    torch.manual_seed(0)
    model = apply_lora(Attention(), r=R, alpha=ALPHA, qv_only=True).double()
    layer = model.base_model.model.qkv
    assert layer.lora_A["default"].weight.dtype == torch.float64
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    return layer


@pytest.mark.parametrize("form", FORMS)
def test_reference_layer_equals_the_zoo_layer_in_float64(form):
    zoo = zoo_layer()
    ref = LoralibQVMergedLinear.from_zoo(zoo, form).double()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    x_zoo, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_zoo, y_ref = zoo(x_zoo), ref(x_ref)
    torch.testing.assert_close(y_ref, y_zoo, rtol=0, atol=1e-12)
    # k is not adapted: the middle third is the frozen Linear's exactly
    base = zoo.get_base_layer()(x)
    assert torch.equal(y_ref[..., D : 2 * D], base[..., D : 2 * D])
    w = torch.randn_like(y_zoo)
    (y_zoo * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x_ref.grad, x_zoo.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        ref.lora_A.grad, zoo.lora_A["default"].weight.grad, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        ref.lora_B.grad, zoo.lora_B["default"].weight.grad, rtol=0, atol=1e-12
    )


def test_merged_delta_is_the_block_product_with_a_zero_k_third():
    ref = LoralibQVMergedLinear(4, 12, r=2, lora_alpha=1.0).double()
    with torch.no_grad():
        ref.lora_A.copy_(torch.arange(16.0).view(4, 4))
        ref.lora_B.copy_(torch.arange(16.0).view(8, 2) - 5)
    a, b = ref.lora_A.detach(), ref.lora_B.detach()
    # by hand: rows 0-3 = B[:4] @ A[:2] (q), rows 4-7 = 0 (k), rows 8-11 = B[4:] @ A[2:] (v)
    expected = torch.zeros(12, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            expected[i, j] = sum(b[i, t] * a[t, j] for t in range(2))
            expected[8 + i, j] = sum(b[4 + i, t] * a[2 + t, j] for t in range(2))
    assert torch.equal(ref.merged_delta().detach(), expected)


def test_hf_adamw_follows_its_update_rule():
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = HFAdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    grads = [0.5, -0.25]
    m = v = 0.0
    value = 1.0
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step_size = 0.1 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        value -= step_size * m / (math.sqrt(v) + 1e-8)
        value -= 0.1 * 0.1 * value  # decoupled decay, after the update
        assert p.item() == pytest.approx(value, rel=1e-12)
    assert opt.state[p]["step"] == 2


@pytest.fixture(scope="module")
def small_run():
    batches, vocab = scene_batches(SMALL, seed=0)
    return batches, build_contenders(SMALL, vocab)


def test_a_stage2_step_has_the_same_loss_and_lora_gradients(small_run):
    batches, contenders = small_run
    report = check_parity(contenders, batches, rtol=1e-5, atol_scale=1e-5)
    assert set(report) == {"official", "loralib_011"}
    for per_task in report.values():
        assert set(per_task) == {"detection", "segmentation", "caption"}
        for task, r in per_task.items():
            assert r["ok"], (task, r)
            assert r["loss_diff"] <= 1e-5 * abs(r["loss_zoo"])


def test_every_lora_matrix_is_replaced_and_optimised(small_run):
    _, contenders = small_run
    zoo = contenders["zoo"]
    for name in ("official", "loralib_011"):
        c = contenders[name]
        assert not any(isinstance(m, FusedQVLoraLinear) for m in c.module.modules())
        layers = [m for m in c.module.modules() if isinstance(m, LoralibQVMergedLinear)]
        assert len(layers) == SMALL.depth
        assert [tuple(p.shape) for p in c.params] == [tuple(p.shape) for p in zoo.params]
        optimised = {id(p) for g in c.optimizer.param_groups for p in g["params"]}
        assert optimised == {id(p) for p in c.params}
        frozen = [n for n, p in c.module.named_parameters() if p.requires_grad]
        assert all("lora_" in n or "patch_embed" in n for n in frozen)


def test_both_contenders_make_the_same_first_update():
    """Adam's first step is lr·g/|g| whatever the implementation (the two place eps
    differently, so eps is made negligible here), weight decay moves p by lr·wd·p in both,
    and the gradients agree: one clipped step from the same weights lands on the same LoRA
    matrices, every entry with a gradient moved by about lr."""
    batches, vocab = scene_batches(SMALL, seed=1)
    contenders = build_contenders(SMALL, vocab, ("caption",), ("official",))
    before = [p.detach().clone() for p in contenders["zoo"].params]
    for c in contenders.values():
        for group in c.optimizer.param_groups:
            group["eps"] = 1e-15
        torch.manual_seed(0)
        make_step(c, batches["caption"])()
        assert len(c.phases["caption"]["wall"]["step"]) == 1
    zoo, ref = contenders["zoo"].params, contenders["official"].params
    lr, moved = SMALL.lr, 0
    for p0, pz, pr in zip(before, zoo, ref):
        dz, dr = pz.detach() - p0, pr.detach() - p0
        # float32 parameters near 1 round to 1.2e-7 (= 1.2e-4 lr)
        torch.testing.assert_close(dr, dz, rtol=0, atol=5e-4 * lr)
        moved += int(((dz.abs() - lr).abs() < 0.01 * lr).sum())
    assert moved > 0.9 * sum(p.numel() for p in zoo)
    assert CLIP_NORM == 0.1  # ViSFT's max_grad_l2_norm


def test_swapping_needs_a_lora_model():
    with pytest.raises(ValueError, match="no FusedQVLoraLinear"):
        swap_in_reference(nn.Sequential(nn.Linear(3, 9)), "merged_weight")
