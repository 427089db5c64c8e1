"""Optimiser recipe: SLIP's no-decay rule and its per-step warm-up + cosine schedule; the
optimisers and schedules chosen by name (CoOp's SGD and constant warm-up, step, constant,
LARS / LAMB from timm) at every step of real fits; paper defaults that a partial override
keeps (``SLIP(optim={"lr": 1e-3})``, a recipe's ``optim: {lr: 1e-3}``).

Parameter-group rules are tested in test_param_groups.py."""

import dataclasses
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from zoo.heads import MLPSpec, ProjectionMLP
from zoo.module import ZooModule
from zoo.optim import (
    OptimSpec,
    build_adamw,
    build_optimizer,
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
    def __init__(self, spec: OptimSpec | None = None):
        super().__init__(
            spec
            or OptimSpec(lr=1.0, warmup_epochs=1, warmup_start_lr=0.1, min_lr=0.0, weight_decay=0.0)
        )
        self.weight = nn.Parameter(torch.zeros(2, 2))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch).sum()


def _fit(
    tmp_path, batches: int = 10, spec: OptimSpec | None = None, **trainer_kwargs
) -> tuple[_Recorder, L.Trainer]:
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
    trainer.fit(_Linear(spec), train_dataloaders=data)
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


# --- schedules by name, at every step of a real fit ------------------------------------------


def _spec(**kwargs) -> OptimSpec:
    return OptimSpec(
        **{"lr": 1.0, "warmup_start_lr": 0.1, "min_lr": 0.0, "weight_decay": 0.0} | kwargs
    )


def test_constant_warmup_cosine_per_epoch_as_coop(tmp_path):
    """CoOp (Dassl ConstantWarmupScheduler + CosineAnnealingLR(T_max=max_epoch), stepped per
    epoch): warmup_lr for the 1 warm-up epoch, then ½(1 + cos(π t / 4)) for t = 0, 1, 2
    epochs after it; the lr holds for all 10 steps of an epoch."""
    spec = _spec(schedule="constant_warmup_cosine", warmup_lr=0.01, interval="epoch")
    rec, _ = _fit(tmp_path, spec=spec, max_epochs=4)
    per_epoch = [0.01, 1.0, (2 + math.sqrt(2)) / 4, 0.5]
    assert rec.lrs == pytest.approx([lr for lr in per_epoch for _ in range(10)], rel=1e-12)


def test_constant_warmup_cosine_per_step(tmp_path):
    spec = _spec(schedule="constant_warmup_cosine", warmup_lr=0.01)
    rec, _ = _fit(tmp_path, batches=5, spec=spec, max_epochs=2)  # 5 warm-up steps, T = 10
    cosine = [0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(5)]
    assert rec.lrs == pytest.approx([0.01] * 5 + cosine, rel=1e-12)


def test_warmup_cosine_per_epoch(tmp_path):
    """A 1-epoch warm-up of one unit is warmup_start_lr (SLIP's linspace of length 1)."""
    rec, _ = _fit(tmp_path, batches=3, spec=_spec(interval="epoch"), max_epochs=3)
    assert rec.lrs == pytest.approx([0.1] * 3 + [1.0] * 3 + [0.5] * 3, rel=1e-12)


def test_step_schedule_at_epoch_milestones(tmp_path):
    spec = _spec(schedule="step", warmup_epochs=0, milestones=[1, 3], gamma=0.1)
    rec, _ = _fit(tmp_path, batches=3, spec=spec, max_epochs=4)
    assert rec.lrs == pytest.approx([1.0] * 3 + [0.1] * 6 + [0.01] * 3, rel=1e-12)
    rec, _ = _fit(
        tmp_path,
        batches=3,
        spec=dataclasses.replace(spec, interval="epoch"),
        max_epochs=4,
    )
    assert rec.lrs == pytest.approx([1.0] * 3 + [0.1] * 6 + [0.01] * 3, rel=1e-12)


def test_step_schedule_at_step_milestones_after_warmup(tmp_path):
    spec = _spec(schedule="step", warmup_steps=3, milestone_steps=[5, 7], gamma=0.5)
    rec, _ = _fit(tmp_path, batches=4, spec=spec, max_epochs=2)
    assert rec.lrs == pytest.approx([0.1, 0.55, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25], rel=1e-12)


def test_constant_schedule_after_warmup(tmp_path):
    rec, _ = _fit(tmp_path, batches=4, spec=_spec(schedule="constant"), max_epochs=2)
    assert rec.lrs == pytest.approx([0.1, 0.4, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0], rel=1e-12)


def test_per_epoch_schedule_resumes_where_it_stopped(tmp_path):
    """A 4-epoch run checkpointed after every epoch; resumed from the end of epoch 2, the
    lrs of epochs 3 and 4 equal those of the uninterrupted run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    spec = _spec(schedule="constant_warmup_cosine", warmup_lr=0.01, interval="epoch")
    data = torch.utils.data.DataLoader(torch.ones(2, 2, 2), batch_size=1)

    def fit(root, ckpt_path=None):
        recorder = _Recorder()
        every_epoch = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}")
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=4,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder, every_epoch],
            default_root_dir=root,
        )
        trainer.fit(_Linear(spec), train_dataloaders=data, ckpt_path=ckpt_path)
        return recorder.lrs

    full = fit(tmp_path / "full")
    assert full == pytest.approx([0.01, 0.01, 1.0, 1.0] + [(2 + math.sqrt(2)) / 4] * 2 + [0.5] * 2)
    rest = fit(tmp_path / "resumed", ckpt_path=tmp_path / "full" / "epoch=1.ckpt")
    assert rest == full[4:]


def test_epoch_interval_refuses_step_counts():
    with pytest.raises(ValueError, match="interval 'epoch' counts epochs"):
        OptimSpec(interval="epoch", warmup_steps=10)
    with pytest.raises(ValueError, match="optim.schedule 'cosine' is not one of"):
        OptimSpec(schedule="cosine")


# --- optimisers by name ------------------------------------------------------------------------


def test_sgd_as_coop_and_its_first_step():
    """CoOp: SGD lr 0.002, momentum 0.9, weight decay 5e-4. The first step is
    p − lr (g + wd p) (the momentum buffer starts at the gradient)."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    spec = OptimSpec(optimizer="sgd", lr=0.002, momentum=0.9, weight_decay=5e-4, groups="all")
    opt = build_optimizer(model, spec)
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.002,
        0.9,
        False,
        5e-4,
    )
    assert group["dampening"] == 0
    model(torch.tensor([[3.0, 4.0]])).sum().backward()  # gradient [3, 4]
    opt.step()
    expected = [1.0 - 0.002 * (3.0 + 5e-4 * 1.0), -2.0 - 0.002 * (4.0 + 5e-4 * -2.0)]
    assert model.weight.detach().flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_lars_and_lamb_from_timm_with_the_spec_hyperparameters():
    from timm.optim import Lamb, Lars

    lars = build_optimizer(
        _Toy(),
        OptimSpec(
            optimizer="lars", lr=0.3, momentum=0.8, nesterov=True, trust_coeff=0.002, eps=1e-7
        ),
    )
    assert type(lars) is Lars
    group = lars.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.8, True)
    assert (group["trust_coeff"], group["eps"], group["weight_decay"]) == (0.002, 1e-7, 0.5)
    assert lars.param_groups[1]["weight_decay"] == 0.0  # no trust ratio there (timm: wd 0)

    lamb = build_optimizer(
        _Toy(), OptimSpec(optimizer="lamb", lr=2e-3, betas=(0.9, 0.999), eps=1e-6)
    )
    assert type(lamb) is Lamb
    group = lamb.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-3,
        (0.9, 0.999),
        1e-6,
        0.5,
    )


def test_unknown_optimizer_name_is_an_error():
    with pytest.raises(ValueError, match="optim.optimizer 'adam' is not one of adamw, sgd"):
        OptimSpec(optimizer="adam")


# --- paper defaults a partial override keeps ---------------------------------------------------


def test_partial_override_keeps_the_paper_defaults():
    from lightning_modules.clip import CLIP, CLIP_OPTIM
    from lightning_modules.slip import SLIP, SLIP_OPTIM
    from tests.papers._tiny import tiny_encoder_spec, tiny_head_spec

    slip = SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec(), optim={"lr": 1e-3})
    assert (slip.optim.lr, slip.optim.weight_decay) == (1e-3, 0.1)  # not CLIP's 0.5
    assert slip.hparams["optim"] == slip.optim  # the checkpoint records the whole spec
    clip = CLIP(encoder=tiny_encoder_spec(), optim={"weight_decay": 0.2})
    assert (clip.optim.lr, clip.optim.weight_decay) == (5e-4, 0.2)
    default = SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec())
    assert (default.optim.lr, default.optim.weight_decay, default.optim.min_lr) == (3e-3, 0.1, 1e-5)
    default.optim.lr = 7.0  # a module's spec is its own: the signature default is untouched
    assert SLIP_OPTIM.lr == 3e-3 and CLIP_OPTIM.lr == 5e-4
    with pytest.raises(ValueError, match="unknown OptimSpec keys: warmup_epocs"):
        SLIP(encoder=tiny_encoder_spec(), optim={"warmup_epocs": 2})


def test_partial_recipe_block_merges_onto_the_paper_default(tmp_path, capsys):
    """``optim: {lr: 1e-3}`` in a recipe, through the real CLI (``--print_config``) and
    through jsonargparse's instantiation of the model block as LightningCLI does it."""
    import yaml
    from jsonargparse import ArgumentParser

    from zoo.cli import main

    root = Path(__file__).resolve().parents[2]
    recipe = yaml.safe_load((root / "recipes/slip/tiny.yaml").read_text())
    recipe["model"]["init_args"]["optim"] = {"lr": 1e-3}
    path = tmp_path / "slip.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optim"]
    assert (printed["lr"], printed["weight_decay"], printed["min_lr"]) == (1e-3, 0.1, 1e-5)

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ZooModule, "model")
    model = {
        "class_path": "lightning_modules.slip.SLIP",
        "init_args": {
            "encoder": {
                "vision": {
                    "img_size": 16,
                    "patch_size": 4,
                    "embed_dim": 32,
                    "depth": 1,
                    "num_heads": 2,
                },
                "text": {
                    "vocab_size": 50,
                    "width": 32,
                    "layers": 1,
                    "heads": 2,
                    "context_length": 8,
                },
                "embed_dim": 16,
            },
            "ssl_head": {"hidden_dims": [16], "out_dim": 8},
            "optim": {"lr": 1e-3, "groups": "timm", "lr_mult": {"ssl_head": 10.0}},
        },
    }
    cfg = parser.parse_object({"model": model})
    slip = parser.instantiate_classes(cfg).model
    assert (slip.optim.lr, slip.optim.weight_decay, slip.optim.groups) == (1e-3, 0.1, "timm")
    assert slip.optim.lr_mult == {"ssl_head": 10.0}


@pytest.mark.parametrize("paper, expected", [("slip", (3e-3, 0.1)), ("clip", (5e-4, 0.5))])
def test_recipe_without_optim_gets_the_paper_default(
    tmp_path, capsys, monkeypatch, paper, expected
):
    """A recipe with no ``optim:`` block: ``--print_config`` shows the paper's optimiser and
    the model is built with it (jsonargparse alone would pass ``None`` in subclass mode)."""
    import yaml

    from zoo.cli import main
    from zoo.lightning_cli import run_lightning_cli

    module = {"slip": "slip.SLIP", "clip": "clip.CLIP"}[paper]
    datamodule = {"slip": "slip.SLIPDataModule", "clip": "clip.CLIPDataModule"}[paper]
    digits = {"source": "digits", "image_size": 16, "context_length": 16, "batch_size": 32}
    data = {"class_path": f"datamodules.{datamodule}", "init_args": digits}
    encoder = {"preset": "vit-tiny-digits"}
    model = {"class_path": f"lightning_modules.{module}", "init_args": {"encoder": encoder}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": data}))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optim"]
    assert (printed["lr"], printed["weight_decay"]) == expected

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    args = ["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path}"]
    cli = run_lightning_cli([*args, "--trainer.fast_dev_run=1", "--trainer.logger=false"])
    assert (cli.model.optim.lr, cli.model.optim.weight_decay) == expected
