"""The EMA teacher inside a real fit: DINO's cosine momentum per optimiser step, the EMA rule
on every step, never optimised, and a resumed run ending bit-identical to an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit._component_fit import cloned, fit, optimised_ids, tiny_vit
from zoo.ema import EMATeacher, ema_momentum
from zoo.module import ZooModule

STEPS, EVERY, BASE = 8, 4, 0.9  # 6 steps per epoch: the resume point and the end straddle epochs


class Distil(ZooModule):
    """A student ViT trained on labels plus a distillation term towards its EMA teacher."""

    def __init__(self, schedule: str = "cosine"):
        super().__init__({"lr": 3e-3, "weight_decay": 0.05, "warmup_steps": 2, "min_lr": 1e-4})
        torch.manual_seed(0)
        self.student = tiny_vit(drop_path_rate=0.2)  # step randomness: reseeded by ExactResume
        self.teacher = EMATeacher(self.student, momentum=BASE, schedule=schedule)
        self.history: list[dict] = []
        self.teacher_training: list[bool] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.student(batch["image"])
        with torch.no_grad():
            target = self.teacher(batch["image"]).softmax(-1)
        self.teacher_training.append(any(m.training for m in self.teacher.module.modules()))
        return F.cross_entropy(logits, batch["label"]) + F.cross_entropy(logits, target)

    def after_optimizer_step(self) -> None:
        before = cloned(dict(self.teacher.module.named_parameters()))
        m = self.teacher.update_from_trainer(self.student, self.trainer)
        self.history.append(
            {
                "global_step": self.trainer.global_step,
                "momentum": m,
                "teacher_before": before,
                "student": cloned(dict(self.student.named_parameters())),
                "teacher_after": cloned(dict(self.teacher.module.named_parameters())),
            }
        )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    model = Distil()
    trainer = fit(model, root, STEPS, every=EVERY)
    return model, trainer, root


def test_momentum_follows_dinos_cosine_schedule_per_optimiser_step(full_run):
    model, _, _ = full_run
    # global_step counts the steps before this one: k = 0 .. K - 1
    assert [h["global_step"] for h in model.history] == list(range(STEPS))
    got = [h["momentum"] for h in model.history]
    # m_k = 1 + (base - 1)(1 + cos(pi k / K)) / 2, k = 0 .. K-1, K = 8
    want = [1 + (BASE - 1) * (1 + math.cos(math.pi * k / STEPS)) / 2 for k in range(STEPS)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[0] == BASE  # the first step uses the base momentum
    assert got[4] == pytest.approx(0.95, abs=1e-15)  # half-way: (base + 1) / 2
    assert got[2] == pytest.approx(1 - 0.05 * (1 + math.sqrt(0.5)), abs=1e-15)


def test_each_step_is_the_ema_of_the_previous_teacher_and_the_new_student(full_run):
    model, _, _ = full_run
    for h in model.history:
        m = h["momentum"]
        for name, after in h["teacher_after"].items():
            want = m * h["teacher_before"][name] + (1 - m) * h["student"][name]
            torch.testing.assert_close(after, want, rtol=1e-6, atol=1e-7, msg=name)
    first = model.history[0]
    name = "blocks.0.attn.qkv.weight"
    # an average, not a copy (torch's AveragedModel copies on its first update)
    assert not torch.equal(first["teacher_after"][name], first["student"][name])
    assert not torch.equal(first["teacher_after"][name], first["teacher_before"][name])


def test_the_teacher_is_frozen_out_of_the_optimiser_and_in_eval_mode(full_run):
    model, trainer, _ = full_run
    teacher = list(model.teacher.parameters())
    assert teacher and not any(p.requires_grad for p in teacher)
    assert not {id(p) for p in teacher} & optimised_ids(trainer)
    assert len(optimised_ids(trainer)) == len(list(model.student.parameters()))
    assert model.teacher_training and not any(model.teacher_training)


def test_a_resumed_run_ends_with_the_uninterrupted_teacher(full_run, tmp_path):
    model, _, root = full_run
    ckpt = root / f"epoch=0-step={EVERY}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "teacher.module.blocks.0.attn.qkv.weight" in saved  # the teacher is checkpointed

    resumed = Distil()
    fit(resumed, tmp_path, STEPS, ckpt_path=ckpt)
    assert [h["global_step"] for h in resumed.history] == list(range(EVERY, STEPS))
    assert [h["momentum"] for h in resumed.history] == [
        h["momentum"] for h in model.history[EVERY:]
    ]
    want, got = model.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_constant_schedule_and_unknown_names():
    assert [ema_momentum("constant", 0.999, k, 10) for k in (0, 5, 9)] == [0.999] * 3
    assert ema_momentum("cosine", 0.996, 10, 10) == 1.0
    assert ema_momentum("cosine", 0.996, 12, 10) == 1.0  # past the end of a run
    with pytest.raises(ValueError, match="unknown momentum schedule 'linear'"):
        EMATeacher(nn.Linear(2, 2), schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        EMATeacher(nn.Linear(2, 2), momentum=1.5)


@pytest.mark.parametrize("rule", ["copy", "average", "none"])
def test_buffer_rules(rule):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher(student, momentum=0.75, schedule="constant", buffers=rule)
    start = cloned(dict(teacher.module.named_buffers()))
    student.train()
    student(torch.randn(16, 3))  # moves the running statistics
    teacher.update(student, step=0, total_steps=1)
    mean, count = teacher.module[1].running_mean, teacher.module[1].num_batches_tracked
    student_mean = student[1].running_mean
    if rule == "copy":
        assert torch.equal(mean, student_mean) and int(count) == 1
    elif rule == "average":
        torch.testing.assert_close(mean, 0.75 * start["1.running_mean"] + 0.25 * student_mean)
        assert int(count) == 1  # integer buffers are copied
    else:
        assert torch.equal(mean, start["1.running_mean"]) and int(count) == 0


def test_train_mode_flag_follows_the_parent():
    parent = nn.Module()
    parent.student = nn.Dropout(0.5)
    parent.frozen = EMATeacher(parent.student)
    parent.following = EMATeacher(parent.student, train_mode=True)
    parent.train()
    assert not parent.frozen.module.training and parent.following.module.training
    parent.eval()
    assert not parent.following.module.training
