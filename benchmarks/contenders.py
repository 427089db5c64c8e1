"""Training-step contenders: the zoo's step inside a real ``lightning.Trainer`` fit, and
plain-PyTorch steps (the zoo's model, loss and fused AdamW; open_clip's model, ``ClipLoss``
and optimiser recipe) that run interleaved with it, between two Lightning steps."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import synchronize
from benchmarks.models import open_clip_cosine_lr, open_clip_optimizer

Step = Callable[[], None]


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` (bf16 / fp16), or a no-op for full precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def zoo_plain_step(
    module: Any, batch: dict, total_steps: int, dtype: torch.dtype | None, device: str
) -> Step:
    """A plain loop over a copy of ``module``'s encoder, with the zoo's loss, fused AdamW,
    per-step schedule and logit-scale clamp: what the Lightning step does, minus Lightning."""
    from zoo.losses import ClipInfoNCE
    from zoo.optim import build_adamw, build_schedule

    encoder = copy.deepcopy(module.encoder)
    loss_fn = ClipInfoNCE(gather="no_grad")
    optimizer = build_adamw(encoder, module.optim)
    scheduler = build_schedule(optimizer, module.optim, total_steps, total_steps)
    images, tokens = batch["image"], batch["text"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            z_i, z_t, scale = encoder(images, tokens)
            loss = loss_fn(z_i, z_t, scale)
        loss.backward()
        optimizer.step()
        scheduler.step()
        encoder.clamp_logit_scale()

    step.model = encoder  # type: ignore[attr-defined]
    return step


def open_clip_step(
    model: torch.nn.Module, batch: dict, total_steps: int, dtype: torch.dtype | None, device: str
) -> Step:
    """open_clip's ``train_one_epoch`` body: model + ``ClipLoss``, AdamW, lr set per step,
    logit scale clamped to log(100) after the step."""
    import open_clip

    loss_fn = open_clip.loss.ClipLoss()
    optimizer = open_clip_optimizer(model, lr=5e-4, weight_decay=0.2)
    images, tokens = batch["image"], batch["text"]
    state = {"step": 0}

    def step() -> None:
        lr = open_clip_cosine_lr(state["step"] % total_steps, total_steps, 1, 5e-4)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            z_i, z_t, scale = model(images, tokens)
            loss = loss_fn(z_i, z_t, scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        state["step"] += 1

    step.model = model  # type: ignore[attr-defined]
    return step


def with_math_attention(step: Step) -> Step:
    """``step`` with SDPA restricted to its math backend (no fused flash kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run() -> None:
        with sdpa_kernel([SDPBackend.MATH]):
            step()

    return run


class InterleaveHost(Callback):
    """Times the Lightning step and runs the other contenders between two steps.

    A zoo step is measured from one ``on_train_batch_start`` to the next, minus the time the
    other contenders took in ``on_train_batch_end``; so it includes everything the Trainer
    does per step (fetch, transfer, hooks, logging, optimiser, scheduler, bookkeeping).
    """

    def __init__(self, others: dict[str, Step], device: str) -> None:
        self.others, self.device = others, device
        self.times: dict[str, list[float]] = {"zoo": [], **{k: [] for k in others}}
        self._start = self._inside = self._done = 0.0
        self._round = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if self._round > 0:
            self.times["zoo"].append(self._inside + (now - self._done))
        self._start = now

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        synchronize(self.device)
        self._inside = time.perf_counter() - self._start
        names = list(self.others)
        shift = self._round % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            synchronize(self.device)
            t0 = time.perf_counter()
            self.others[name]()
            synchronize(self.device)
            self.times[name].append(time.perf_counter() - t0)
        self._round += 1
        synchronize(self.device)
        self._done = time.perf_counter()


class _Repeat(torch.utils.data.Dataset):
    """``n`` times the same in-memory batch (``DataLoader(batch_size=None)``)."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.batch


def lightning_fit(
    module: Any,
    batch: dict,
    steps: int,
    precision: str,
    others: dict[str, Step],
    device: str,
    warmup: int,
) -> dict[str, list[float]]:
    """``Trainer.fit`` over ``steps`` steps (no logger, checkpoints or progress bar) with the
    ``others`` interleaved; per-contender step times after ``warmup``, equal in number."""
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    host = InterleaveHost(others, device)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[host],
    )
    loader = torch.utils.data.DataLoader(_Repeat(batch, steps), batch_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    n = len(host.times["zoo"]) - warmup
    return {k: v[warmup : warmup + n] for k, v in host.times.items()}
