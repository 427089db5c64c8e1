"""Optimiser recipe: SLIP's no-decay rule and its per-step warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from zoo.heads import MLPSpec, ProjectionMLP
from zoo.optim import OptimSpec, build_adamw, build_schedule, param_groups, warmup_cosine_lr


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(4, 3))  # 2-D, decayed
        self.scale = nn.Parameter(torch.tensor(1.0))  # 0-D, not decayed
        self.ln_final = nn.LayerNorm(3)  # 1-D
        self.linear = nn.Linear(3, 3)  # weight decayed, bias not
        self.head = ProjectionMLP(3, MLPSpec(hidden_dims=[8], out_dim=2))  # bn1 1-D
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.pos = nn.Parameter(torch.randn(1, 5, 3))  # 3-D: decayed under SLIP's rule


def test_weight_decay_groups_follow_slip_rule():
    model = _Toy()
    spec = OptimSpec(weight_decay=0.1)
    decay, no_decay = param_groups(model, spec)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = sorted(names[id(p)] for p in decay["params"])
    no_decay_names = sorted(names[id(p)] for p in no_decay["params"])
    assert decay_names == [
        "head.layer1.weight",
        "head.layer2.weight",
        "linear.weight",
        "pos",
        "proj",
    ]
    assert no_decay_names == sorted(
        [
            "scale",
            "ln_final.weight",
            "ln_final.bias",
            "linear.bias",
            "head.layer1.bias",
            "head.bn1.weight",
            "head.bn1.bias",
            "head.layer2.bias",
        ]
    )
    rule = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.ndim < 2 or any(k in n for k in ("bias", "ln", "bn")))
    ]
    assert len(rule) == len(no_decay_names)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_true_shapes_keep_the_rule_when_parameters_are_flattened():
    """FSDP (use_orig_params) turns every parameter into a flat 1-D shard before the
    optimiser is built; the shapes recorded beforehand keep weight matrices decayed."""
    model = _Toy()
    spec = OptimSpec(weight_decay=0.1)
    expected = [len(g["params"]) for g in param_groups(model, spec)]
    true_ndims = {p: p.ndim for p in model.parameters()}
    for p in model.parameters():
        p.data = p.data.reshape(-1)  # what FSDP does to the original parameters
    flattened = [len(g["params"]) for g in param_groups(model, spec)]
    assert flattened[0] == 0  # without the true shapes nothing would be decayed
    assert [len(g["params"]) for g in param_groups(model, spec, true_ndims)] == expected


def test_module_records_shapes_before_the_strategy_wraps_it():
    from lightning_modules.clip import CLIP
    from tests.papers._tiny import tiny_encoder_spec

    module = CLIP(encoder=tiny_encoder_spec())
    module.setup("fit")  # Lightning calls it before the strategy's setup (wrapping)
    assert module._param_ndims[module.encoder.image_projection] == 2
    assert module._param_ndims[module.encoder.logit_scale] == 1


def test_keyword_rule_catches_2d_params_named_ln():
    model = nn.Module()
    model.ln_proj = nn.Parameter(torch.randn(3, 3))
    _, no_decay = param_groups(model, OptimSpec())
    assert len(no_decay["params"]) == 1


def test_adamw_settings_and_fused():
    opt = build_adamw(_Toy(), OptimSpec(lr=3e-3, betas=(0.9, 0.98), eps=1e-8))
    group = opt.param_groups[0]
    assert group["lr"] == 3e-3 and group["betas"] == (0.9, 0.98) and group["eps"] == 1e-8
    assert group["fused"] is True


def test_schedule_matches_slip_cosine_scheduler():
    base, final, start, epochs, per_epoch, warm_epochs = 3e-3, 1e-5, 1e-6, 5, 10, 1
    # SLIP utils.cosine_scheduler, written out
    warm = [
        start + (base - start) * i / (warm_epochs * per_epoch - 1)
        for i in range(warm_epochs * per_epoch)
    ]
    n = epochs * per_epoch - len(warm)
    cos = [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    expected = warm + cos

    param = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([param], lr=base)
    sched = build_schedule(
        opt,
        OptimSpec(lr=base, min_lr=final, warmup_start_lr=start, warmup_epochs=1),
        epochs * per_epoch,
        per_epoch,
    )
    got = []
    for _ in range(epochs * per_epoch):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got[0] == pytest.approx(start) and got[per_epoch - 1] == pytest.approx(base)
    assert warmup_cosine_lr(10**6, 50, 10, base, final, start) == pytest.approx(final)
