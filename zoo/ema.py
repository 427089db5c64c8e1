"""EMA teacher: a momentum copy of a student network (DINO, BYOL, MoCo, iBOT, data2vec).

After every optimiser step ``θ_t ← m·θ_t + (1 − m)·θ_s`` with the momentum ``m`` chosen
by a named schedule (:func:`ema_momentum`). The teacher starts as a copy of the student
(DINO ``main_dino.py``: ``teacher_without_ddp.load_state_dict(student.module.state_dict())``),
never requires grad (so it is in no optimiser group) and stays in eval mode unless
``train_mode=True``.

The step ``k`` and run length ``K`` come from the trainer (``global_step``,
``estimated_stepping_batches``; :meth:`EMATeacher.update_from_trainer`), so a resumed run
needs nothing checkpointed besides the teacher's weights, which are in the owning module's
``state_dict`` as ``<attribute>.module.<name>``.

Why not ``torch.optim.swa_utils.AveragedModel``: its first ``update_parameters`` *copies*
the student (``n_averaged == 0``) instead of averaging, it adds an ``n_averaged`` buffer and
a ``module.`` key level to the checkpoint, its EMA decay is fixed in a closure (no per-step
schedule), and its buffers are either averaged or left alone (no copy). The update here is
two vectorised calls over all parameters (``torch._foreach_mul_`` then ``_foreach_add_``:
one kernel per dtype/device group, no Python arithmetic per tensor), in DINO's order of
operations (``param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)``).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    import lightning as L

MomentumSchedule = Literal["cosine", "constant"]
BufferRule = Literal["copy", "average", "none"]


def ema_momentum(schedule: MomentumSchedule, base: float, step: int, total_steps: int) -> float:
    """The teacher momentum for optimiser step ``step`` (0-based) of ``total_steps``.

    ``cosine``: DINO's ``cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)``
    indexed per iteration, ``m_k = 1 + (base − 1)(1 + cos(π k / K)) / 2``: ``base`` at the
    first step, rising to 1 at the end. BYOL's ``τ = 1 − (1 − τ_base)(cos(π k / K) + 1) / 2``
    is the same formula. Steps past ``K`` (a run extended on resume) stay at 1.
    ``constant``: ``base`` at every step (MoCo's 0.999).
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {base}")
    if schedule == "constant":
        return base
    if schedule == "cosine":
        if total_steps <= 0:
            raise ValueError(
                f"the cosine momentum schedule needs total_steps > 0, got {total_steps}"
            )
        k = min(step, total_steps)
        return 1.0 + (base - 1.0) * (1.0 + math.cos(math.pi * k / total_steps)) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}: use 'cosine' or 'constant'")


class EMATeacher(nn.Module):
    """A momentum teacher of ``student``: ``update`` it after every optimiser step.

    Args:
        student: the network to follow; deep-copied once, here.
        momentum: the base momentum (DINO 0.996, BYOL 0.996, MoCo 0.999).
        schedule: ``cosine`` (base → 1 over the run) or ``constant``, see :func:`ema_momentum`.
        buffers: ``copy`` the student's buffers (BatchNorm statistics) after each update,
            ``average`` floating-point buffers like the parameters (integer ones such as
            ``num_batches_tracked`` are copied), or ``none``: leave the teacher's own
            (DINO and MoCo update parameters only; a teacher in train mode then keeps its
            own running statistics).
        train_mode: follow the parent's ``train()`` / ``eval()``; by default the teacher
            always runs in eval mode (no dropout, frozen BatchNorm statistics).

    A module uses it as::

        self.teacher = EMATeacher(self.student, momentum=0.996)

        def after_optimizer_step(self):
            self.teacher.update_from_trainer(self.student, self.trainer)
    """

    def __init__(
        self,
        student: nn.Module,
        momentum: float = 0.996,
        schedule: MomentumSchedule = "cosine",
        buffers: BufferRule = "copy",
        train_mode: bool = False,
    ):
        super().__init__()
        ema_momentum(schedule, momentum, 0, 1)  # validate name and range now, not mid-run
        if buffers not in ("copy", "average", "none"):
            raise ValueError(f"unknown buffer rule {buffers!r}: use 'copy', 'average' or 'none'")
        self.momentum, self.schedule, self.buffers = momentum, schedule, buffers
        self.train_mode = train_mode
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.train(train_mode and student.training)
        self.last_momentum: float | None = None  # the momentum of the latest update

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(mode)
        self.module.train(mode and self.train_mode)
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return ema_momentum(self.schedule, self.momentum, step, total_steps)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, total_steps: int) -> float:
        """``θ_t ← m·θ_t + (1 − m)·θ_s`` with ``m = momentum_at(step, total_steps)``;
        returns ``m``. Parameters are matched by name and must be the same set."""
        m = self.momentum_at(step, total_steps)
        teacher_p, student_p = self._pairs(
            self.module.named_parameters(), student.named_parameters()
        )
        _ema_(teacher_p, student_p, m)
        if self.buffers != "none":
            teacher_b, student_b = self._pairs(self.module.named_buffers(), student.named_buffers())
            floats = [i for i, b in enumerate(teacher_b) if b.is_floating_point()]
            if self.buffers == "average" and floats:
                _ema_([teacher_b[i] for i in floats], [student_b[i] for i in floats], m)
            rest = set(range(len(teacher_b))) - (
                set(floats) if self.buffers == "average" else set()
            )
            if rest:
                torch._foreach_copy_(
                    [teacher_b[i] for i in sorted(rest)], [student_b[i] for i in sorted(rest)]
                )
        self.last_momentum = m
        return m

    def update_from_trainer(self, student: nn.Module, trainer: L.Trainer) -> float:
        """:meth:`update` for the optimiser step just taken (call from
        ``after_optimizer_step``): ``k = trainer.global_step``, the steps completed before
        this one (Lightning counts a step after ``LightningModule.optimizer_step`` returns,
        so the first update is ``k = 0``, momentum ``base``), ``K`` the run's
        ``estimated_stepping_batches``."""
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the EMA momentum schedule needs a finite run: set max_epochs or max_steps"
            )
        return self.update(student, trainer.global_step, int(total))

    @staticmethod
    def _pairs(teacher, student) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        t, s = dict(teacher), dict(student)
        if t.keys() != s.keys():
            missing, extra = sorted(s.keys() - t.keys()), sorted(t.keys() - s.keys())
            raise ValueError(
                f"teacher and student differ: only in the student {missing[:5]}, "
                f"only in the teacher {extra[:5]}"
            )
        return list(t.values()), [s[name].detach() for name in t]


def _ema_(teacher: list[torch.Tensor], student: list[torch.Tensor], m: float) -> None:
    if teacher:
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)
