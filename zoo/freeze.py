"""Frozen towers: a pretrained network that a fit must not change (CoOp's CLIP, LiT's image
tower, a frozen teacher), and the callback that proves it did not.

:class:`FrozenTower` keeps its module in eval mode whatever the parent's ``train()`` says,
sets ``requires_grad=False`` (so :func:`zoo.optim.param_groups` leaves it out of every
optimiser group) and, with ``no_grad=True``, runs it under ``torch.no_grad()``. The default
``no_grad=False`` lets gradients flow *through* the tower to trainable inputs, as a prompt
learner needs (CoOp back-propagates through CLIP's frozen text encoder into its context
vectors, ``trainers/coop.py``); its own weights still get no gradient.

:class:`FrozenTowerCheck` fingerprints every tower (sha256 per tensor of its state dict) at
fit start and raises :class:`FrozenTowerChangedError`, naming the changed tensors, if any
differs at fit end. The fingerprint travels in the callback's checkpoint state, so a resumed
fit is checked against the weights of the very first start.

The plain helpers (:func:`freeze`, :func:`trainable_parameter_names`, :func:`assert_frozen`)
are for modules that are frozen once and never put back in train mode by a parent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


class FrozenTower(nn.Module):
    """``module`` frozen: eval mode always, no parameter requires grad, optionally no autograd.

    Args:
        module: the pretrained network; its weights appear in the parent's state dict
            under ``<attribute>.module.``.
        no_grad: run the forward pass under ``torch.no_grad()`` (saves the activations'
            memory when nothing upstream trains). Off by default so that gradients can reach
            trainable inputs (prompts, adapters before the tower).
    """

    def __init__(self, module: nn.Module, no_grad: bool = False):
        super().__init__()
        self.module = module
        self.no_grad = no_grad
        module.requires_grad_(False)
        module.eval()

    def train(self, mode: bool = True) -> FrozenTower:
        super().train(mode)
        self.module.eval()  # dropout off and BatchNorm statistics fixed, even in training
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.no_grad:
            with torch.no_grad():
                return self.module(*args, **kwargs)
        return self.module(*args, **kwargs)

    def fingerprint(self) -> dict[str, str]:
        """sha256 of each tensor of the state dict (dtype, shape and raw bytes)."""
        return {name: tensor_sha256(t) for name, t in self.module.state_dict().items()}


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frozen_towers(module: nn.Module) -> dict[str, FrozenTower]:
    """Every :class:`FrozenTower` inside ``module``, by its dotted path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, FrozenTower)}


class FrozenTowerChangedError(RuntimeError):
    """A frozen tower's weights or buffers changed during a fit."""


class FrozenTowerCheck(Callback):
    """Verifies at the end of fit that every :class:`FrozenTower` is bit-identical to fit start,
    and at fit start that none of its parameters requires grad or sits in an optimiser."""

    def __init__(self) -> None:
        self.fingerprints: dict[str, dict[str, str]] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        towers = frozen_towers(pl_module)
        optimised = {
            id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]
        }
        for path, tower in towers.items():
            bad = [
                f"{path}.module.{n}"
                for n, p in tower.module.named_parameters()
                if p.requires_grad or id(p) in optimised
            ]
            if bad:
                raise FrozenTowerChangedError(
                    f"frozen tower {path!r} has parameters that require grad or are in an "
                    f"optimiser: {_names(bad)}"
                )
        now = {path: tower.fingerprint() for path, tower in towers.items()}
        if self.fingerprints:  # restored from a checkpoint: the restored weights must match
            self._compare(self.fingerprints, now, "when the fit resumed")
        else:
            self.fingerprints = now

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        towers = frozen_towers(pl_module)
        now = {path: tower.fingerprint() for path, tower in towers.items()}
        self._compare(self.fingerprints, now, "at the end of fit")

    @staticmethod
    def _compare(
        before: dict[str, dict[str, str]], now: dict[str, dict[str, str]], when: str
    ) -> None:
        changed = []
        for path in sorted(before.keys() | now.keys()):
            old, new = before.get(path, {}), now.get(path, {})
            changed += [
                f"{path}.module.{n}"
                for n in sorted(old.keys() | new.keys())
                if old.get(n) != new.get(n)
            ]
        if changed:
            raise FrozenTowerChangedError(
                f"frozen tower tensors changed {when} (sha256 differs from fit start): "
                f"{_names(changed)}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprints": self.fingerprints}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fingerprints = dict(state_dict.get("fingerprints", {}))


def _names(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit})" if len(names) > limit else "")


# --- plain helpers -----------------------------------------------------------------------------
def freeze(*modules: nn.Module, eval_mode: bool = True) -> None:
    """Set ``requires_grad=False`` on every parameter; optionally switch to eval mode
    (so dropout and batch-norm statistics stay fixed). A parent's ``train()`` undoes the
    eval mode: wrap in :class:`FrozenTower` to keep it."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
        if eval_mode:
            m.eval()


def unfreeze(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def trainable_parameter_names(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def assert_frozen(module: nn.Module, allow: Iterable[str] = ()) -> None:
    """Raise if any parameter outside the ``allow`` name prefixes requires grad."""
    allowed = tuple(allow)
    bad = [n for n in trainable_parameter_names(module) if not (allowed and n.startswith(allowed))]
    if bad:
        raise AssertionError(
            f"expected frozen, but trainable: {bad[:10]}{' …' if len(bad) > 10 else ''}"
        )
