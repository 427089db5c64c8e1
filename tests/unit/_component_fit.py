"""A tiny real fit for the component tests (EMA teacher, LoRA, frozen tower).

48 digits from ``sklearn.datasets.load_digits`` at 16 px (6 batches of 8 per epoch) through
the zoo's exact-resume pieces (:class:`~zoo.data.resumable.EpochSampler`,
:class:`~zoo.data.resumable.ResumableDataLoader`, :class:`~zoo.callbacks.ExactResume`), a
timm ViT of width 32 and depth 2, checkpoints every ``every`` steps plus ``last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset, default_collate

from zoo.callbacks import ExactResume
from zoo.data.resumable import EpochSampler, ResumableDataLoader

N_SAMPLES, BATCH = 48, 8


def tiny_vit(**overrides: Any) -> nn.Module:
    args: dict[str, Any] = dict(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    )
    args.update(overrides)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


class Digits16(Dataset):
    """Digits as 3×16×16 images in [-1, 1] with their labels (the 8×8 pixels doubled)."""

    def __init__(self, n: int = N_SAMPLES):
        digits = load_digits()
        x = torch.tensor(digits.images[:n], dtype=torch.float32) / 8.0 - 1.0
        x = x.repeat_interleave(2, 1).repeat_interleave(2, 2)
        self.images = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        self.labels = torch.tensor(digits.target[:n], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(index)  # EpochSampler yields SampleKey ints
        return {"image": self.images[i], "label": self.labels[i]}


class DigitsData(L.LightningDataModule):
    """Resumable training loader; its position travels in the datamodule's checkpoint state
    (as in ``ZooDataModule``: Lightning 2.6 never reloads its own slot when
    ``configure_optimizers`` reads ``estimated_stepping_batches``)."""

    def __init__(self) -> None:
        super().__init__()
        self._loader: ResumableDataLoader | None = None
        self._state: dict[str, Any] | None = None

    def train_dataloader(self) -> ResumableDataLoader:
        data = Digits16()
        loader = ResumableDataLoader(
            data,
            sampler=EpochSampler(data, seed=0),
            batch_size=BATCH,
            drop_last=True,
            collate_fn=default_collate,
        )
        if self._state is not None:
            loader.load_state_dict(self._state)
            self._state = None
        self._loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._loader.state_dict()} if self._loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict.get("train_loader")


def fit(
    module: L.LightningModule,
    root: Path,
    max_steps: int,
    every: int | None = None,
    ckpt_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> L.Trainer:
    """Fit on CPU for ``max_steps`` optimiser steps, checkpointing into ``root`` (every
    ``every`` steps and ``last.ckpt``) on ``datamodule`` (default: :class:`DigitsData`)."""
    checkpoint = ModelCheckpoint(
        dirpath=root, every_n_train_steps=every, save_top_k=-1, save_last=True
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ExactResume(), checkpoint, *callbacks],
    )
    trainer.fit(module, datamodule=datamodule or DigitsData(), ckpt_path=ckpt_path)
    return trainer


def optimised_ids(trainer: L.Trainer) -> set[int]:
    return {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}


def cloned(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(prefix)}
