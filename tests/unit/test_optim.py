"""Optimiser recipe: SLIP's no-decay rule and its per-step warm-up + cosine schedule."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from zoo.heads import MLPSpec, ProjectionMLP
from zoo.module import ZooModule
from zoo.optim import (
    OptimSpec,
    build_adamw,
    build_schedule,
    optimizer_steps_per_epoch,
    param_groups,
    warmup_cosine_lr,
)


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
    assert "frozen.weight" not in decay_names + no_decay_names  # frozen: in no group
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_true_shapes_keep_the_rule_when_parameters_are_flattened():
    """FSDP (use_orig_params) turns every parameter into a flat 1-D shard before the
    optimiser is built; the shapes recorded beforehand keep weight matrices decayed."""
    model = _Toy()
    spec = OptimSpec(weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    true_ndims = {p: p.ndim for p in model.parameters()}
    for p in model.parameters():
        p.data = p.data.reshape(-1)  # what FSDP does to the original parameters
    flattened = [len(g["params"]) for g in param_groups(model, spec)]
    assert flattened == [0, 13]  # without the true shapes nothing would be decayed
    decay, no_decay = param_groups(model, spec, true_ndims)
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "head.layer1.weight",
        "head.layer2.weight",
        "linear.weight",
        "pos",
        "proj",
    ]
    assert len(no_decay["params"]) == 8


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


def test_weight_decay_groups_of_the_tiny_clip_model():
    """SLIP's rule on a real model, parameter by parameter (the literal lists in _tiny)."""
    from lightning_modules.clip import CLIP
    from tests.papers._tiny import TINY_ENCODER_DECAY, TINY_ENCODER_NO_DECAY, tiny_encoder_spec

    model = CLIP(encoder=tiny_encoder_spec())
    decay, no_decay = param_groups(model, model.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(TINY_ENCODER_DECAY)
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(TINY_ENCODER_NO_DECAY)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)


# --- the schedule in a real Lightning fit ------------------------------------------------
# Peak lr 1.0, warm-up from 0.1 over one epoch, cosine to 0.0: a warm-up of W steps is
# 0.1 + 0.9 k / (W - 1) for k = 0 … W - 1, then 0.5 (1 + cos(π i / (total - W))).


class _Recorder(L.Callback):
    """The lr each optimiser step uses, and the optimiser steps of each epoch."""

    def __init__(self):
        self.lrs: list[float] = []
        self.steps_at_epoch_end: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.steps_at_epoch_end.append(trainer.global_step)


class _Linear(ZooModule):
    def __init__(self):
        super().__init__(
            OptimSpec(lr=1.0, warmup_epochs=1, warmup_start_lr=0.1, min_lr=0.0, weight_decay=0.0)
        )
        self.weight = nn.Parameter(torch.zeros(2, 2))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch).sum()


def _fit(tmp_path, batches: int = 10, **trainer_kwargs) -> tuple[_Recorder, L.Trainer]:
    recorder = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    data = torch.utils.data.DataLoader(torch.ones(batches, 2, 2), batch_size=1)
    trainer.fit(_Linear(), train_dataloaders=data)
    return recorder, trainer


TEN_STEP_WARMUP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_schedule_with_max_epochs(tmp_path):
    rec, _ = _fit(tmp_path, max_epochs=3)  # 10 steps per epoch, 30 in all
    assert len(rec.lrs) == 30 and rec.steps_at_epoch_end == [10, 20, 30]
    assert rec.lrs[:10] == pytest.approx(TEN_STEP_WARMUP)
    assert rec.lrs[10] == pytest.approx(1.0)  # cosine i = 0 of 20
    assert rec.lrs[20] == pytest.approx(0.5)  # i = 10 of 20: half way
    assert rec.lrs[29] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))


def test_schedule_with_max_steps_only(tmp_path):
    """max_epochs unset (-1): one warm-up epoch is still 10 steps, not the whole run."""
    rec, trainer = _fit(tmp_path, max_steps=25)
    assert trainer.max_epochs == -1
    assert len(rec.lrs) == 25 and rec.steps_at_epoch_end == [10, 20, 25]
    assert rec.lrs[:10] == pytest.approx(TEN_STEP_WARMUP)
    assert rec.lrs[10] == pytest.approx(1.0)
    assert rec.lrs[24] == pytest.approx(0.5 * (1 + math.cos(math.pi * 14 / 15)))
    assert rec.lrs[24] < 0.03


def test_schedule_with_max_steps_before_max_epochs(tmp_path):
    """max_epochs 5 × 10 steps, max_steps 23: the cosine ends at step 23, the warm-up is
    still one epoch of 10 steps (not 23 / 5)."""
    rec, _ = _fit(tmp_path, max_epochs=5, max_steps=23)
    assert len(rec.lrs) == 23
    assert rec.lrs[:10] == pytest.approx(TEN_STEP_WARMUP)
    assert rec.lrs[22] == pytest.approx(0.5 * (1 + math.cos(math.pi * 12 / 13)))


def test_schedule_counts_optimizer_steps_under_accumulation(tmp_path):
    """10 batches, accumulate 2: an epoch is 5 optimiser steps, so is the warm-up."""
    rec, trainer = _fit(tmp_path, max_epochs=3, accumulate_grad_batches=2)
    assert optimizer_steps_per_epoch(trainer) == 5
    assert len(rec.lrs) == 15 and rec.steps_at_epoch_end == [5, 10, 15]
    assert rec.lrs[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    assert rec.lrs[5] == pytest.approx(1.0)
    assert rec.lrs[14] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_schedule_steps_on_a_partial_accumulation_window(tmp_path):
    """11 batches, accumulate 2, max_steps only: Lightning also steps after the epoch's
    11th batch (a window of one), so an epoch is 6 optimiser steps."""
    rec, trainer = _fit(tmp_path, batches=11, max_steps=14, accumulate_grad_batches=2)
    assert optimizer_steps_per_epoch(trainer) == 6
    assert rec.steps_at_epoch_end == [6, 12, 14]
    warmup = [0.1, 0.28, 0.46, 0.64, 0.82, 1.0]  # 0.1 + 0.9 k / 5
    assert rec.lrs[:6] == pytest.approx(warmup)
    assert rec.lrs[13] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_steps_per_epoch_respects_limit_train_batches(tmp_path):
    rec, trainer = _fit(tmp_path, max_steps=8, limit_train_batches=4)
    assert optimizer_steps_per_epoch(trainer) == 4
    assert rec.steps_at_epoch_end == [4, 8]
    assert rec.lrs[:4] == pytest.approx([0.1, 0.4, 0.7, 1.0])


def test_steps_per_epoch_when_the_strategy_accumulates():
    """A strategy that accumulates by itself (DeepSpeed) does not step on a partial window."""
    from types import SimpleNamespace

    def trainer(handles: bool):
        return SimpleNamespace(
            limit_train_batches=1.0,
            train_dataloader=object(),
            num_training_batches=11,
            accumulate_grad_batches=2,
            strategy=SimpleNamespace(handles_gradient_accumulation=handles),
        )

    assert optimizer_steps_per_epoch(trainer(False)) == 6
    assert optimizer_steps_per_epoch(trainer(True)) == 5
