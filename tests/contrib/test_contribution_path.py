"""The path a contributor follows, end to end, in a temporary copy of the project:
``zoo new`` -> the scaffold fails ``zoo check`` and its placeholder test -> the placeholders
replaced by a small real method (CLIP with a fixed temperature instead of a learned one) and
a faithfulness test of that property -> ``zoo docs`` -> ``zoo check`` passes -> the tiny fit
through the CLI -> ``zoo reproduce --seeds 1 --append`` records a ledger entry -> ``zoo docs``
puts it in the generated README. A core change that breaks this path fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import copy_project
from zoo.docs import render_readme
from zoo.ledger import validate_metafile
from zoo.recipe_index import Paper

ROOT = Path(__file__).resolve().parents[2]
SLUG = "toy_method"
# a few optimiser steps: the path is under test, not the numbers
FEW_STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]

MODULE = '''"""Toy method: CLIP with a fixed temperature (after Radford et al., 2021).

    L = 1/2 [CE(z_I z_T^T / tau, y) + CE(z_T z_I^T / tau, y)]        (CLIP, Eq. of Fig. 3)

- z_I, z_T: L2-normalised image / text embeddings, ``DualEncoder.forward``;
- tau: ``temperature``, fixed (CLIP learns it); the encoder's logit scale is set to log(1/tau)
  and frozen, so it never changes.
"""

from __future__ import annotations

import math

import torch

from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.losses import ClipInfoNCE
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import DualEncoderProtocols
from zoo.specs import to_spec

TOY_METHOD_OPTIM = OptimSpec(lr=5e-4, weight_decay=0.5, betas=(0.9, 0.98), warmup_epochs=1.0)


class ToyMethod(DualEncoderProtocols, ZooModule):
    def __init__(
        self,
        encoder: DualEncoderSpec | None = None,
        temperature: float = 0.1,
        optim: OptimSpec = TOY_METHOD_OPTIM,
    ):
        super().__init__(merge_onto(TOY_METHOD_OPTIM, optim))
        self.save_hyperparameters()
        self.temperature = temperature
        self.encoder = build_dual_encoder(to_spec(DualEncoderSpec, encoder))
        with torch.no_grad():
            self.encoder.logit_scale.fill_(math.log(1.0 / temperature))
        self.encoder.logit_scale.requires_grad_(False)
        self.contrastive_loss = ClipInfoNCE()

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        z_i, z_t, _ = self.encoder(batch["image"], batch["text"])
        loss = self.contrastive_loss(z_i, z_t, 1.0 / self.temperature)
        return {"loss": loss}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.log_losses(terms)
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_losses(self.loss_terms(batch), prefix=self.eval_prefix, sync_dist=True)
'''

TEST = '''"""Toy method: the loss uses the fixed temperature, which training never changes."""

import math

import pytest
import torch

from lightning_modules.toy_method import ToyMethod

from ._tiny import CLIP_HAND_LOSS, CLIP_SCALE, Z_IMAGE, Z_TEXT, tiny_batch, tiny_encoder_spec


def test_loss_is_infonce_at_the_fixed_temperature():
    model = ToyMethod(encoder=tiny_encoder_spec(), temperature=1 / CLIP_SCALE)
    pad = torch.nn.functional.pad
    model.encoder.encode_image = lambda x, normalize=False: pad(torch.tensor(Z_IMAGE), (0, 14))
    model.encoder.encode_text = lambda t, normalize=False: pad(torch.tensor(Z_TEXT), (0, 14))
    assert model.loss_terms(tiny_batch(n=2))["loss"].item() == pytest.approx(CLIP_HAND_LOSS)


def test_temperature_stays_fixed_through_training_steps():
    torch.manual_seed(0)
    model = ToyMethod(encoder=tiny_encoder_spec(), temperature=0.25)
    before = model.encoder.logit_scale.detach().clone()
    assert before.exp().item() == pytest.approx(4.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model.loss_terms(tiny_batch())["loss"].backward()
        opt.step()
    assert torch.equal(model.encoder.logit_scale, before)
    assert model.encoder.visual.patch_embed.proj.weight.grad is not None  # the rest trains
'''


def _run(copy: Path, *args: str, ok: bool = True) -> str:
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1"}
    env.pop("VL_ZOO_RECIPES", None)  # the copy's recipes, not the checkout's
    done = subprocess.run(
        [sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert (done.returncode == 0) == ok, f"{' '.join(args)} -> {done.returncode}\n{out[-3000:]}"
    return out


def _zoo(copy: Path, *args: str, ok: bool = True) -> str:
    return _run(copy, "-m", "zoo", *args, ok=ok)


def _finish_scaffold(copy: Path) -> None:
    """What a contributor writes: the method, its test, the metafile, a paper-scale recipe."""
    (copy / f"lightning_modules/{SLUG}.py").write_text(MODULE)
    (copy / f"tests/papers/test_{SLUG}.py").write_text(TEST)
    tiny = copy / f"recipes/{SLUG}/tiny.yaml"
    body = "".join(line for line in tiny.read_text().splitlines(True) if "ZOO-TODO" not in line)
    tiny.write_text(
        "# toy_method, tiny: CLIP with a fixed temperature on embedded digits.\n" + body
    )
    paper = (copy / "recipes/clip/vit_b16_cc3m.yaml").read_text()
    paper = paper.replace("lightning_modules.clip.CLIP", "lightning_modules.toy_method.ToyMethod")
    paper = paper.replace(
        "datamodules.clip.CLIPDataModule", "datamodules.toy_method.ToyMethodDataModule"
    )
    (copy / f"recipes/{SLUG}/vit_b16_cc3m.yaml").write_text(paper)
    dm = copy / f"datamodules/{SLUG}.py"
    dm.write_text(dm.read_text().replace("ZOO-TODO: the paper's training view", "CLIP's view"))
    dm.write_text(dm.read_text().replace("(ZOO-TODO: the paper's data and its augmentations)", ""))
    meta = {
        "paper": {"title": "Toy method: CLIP with a fixed temperature", "arxiv": "2103.00020"},
        "reported": [
            {
                "dataset": "ImageNet-1k",
                "metric": "zero-shot top-1",
                "value": 17.1,
                "recipe": "vit_b16_cc3m.yaml",
                "source": "a made-up number for the contribution-path test",
            }
        ],
    }
    (copy / f"recipes/{SLUG}/metafile.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


# About 2 minutes on 2 free cores: eight subprocesses each import torch and Lightning (the
# copy's code must be imported, not the checkout's). .ci/run runs it explicitly.
@pytest.mark.slow
def test_contribution_path(tmp_path):
    copy = tmp_path / "project"
    copy_project(copy)

    # 1. the scaffold: five parts, refused twice, runs as generated, but is not a paper
    out = _zoo(copy, "new", SLUG, "--family", "contrastive")
    for part in (
        f"lightning_modules/{SLUG}.py",
        f"datamodules/{SLUG}.py",
        f"recipes/{SLUG}/tiny.yaml",
        f"recipes/{SLUG}/metafile.yaml",
        f"tests/papers/test_{SLUG}.py",
    ):
        assert (copy / part).is_file() and part in out
    assert "already exists" in _zoo(copy, "new", SLUG, "--family", "contrastive", ok=False)
    recipe = f"recipes/{SLUG}/tiny.yaml"
    _zoo(copy, "fit", "--config", recipe, "--trainer.fast_dev_run", "1")
    failed = _zoo(copy, "check", SLUG, ok=False)
    for where in ("lightning_modules", "metafile.yaml", "README.md", "test_toy_method.py"):
        assert f"FAIL {SLUG}: " in failed and where in failed, failed
    tests = _run(
        copy,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"tests/papers/test_{SLUG}.py",
        ok=False,
    )
    assert "ZOO-TODO: replace with a faithfulness test" in tests

    # 2. the contributor's work, then the contract holds
    _finish_scaffold(copy)
    assert "2 passed" in _run(
        copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/papers/test_{SLUG}.py"
    )
    _zoo(copy, "docs")
    assert f"ok   {SLUG}" in _zoo(copy, "check", SLUG)

    # 3. the tiny fit through the CLI, a one-seed reproduction into the ledger, the README
    fit = _zoo(copy, "fit", "--config", recipe, *FEW_STEPS)
    assert "zero-shot top-1" in fit
    _zoo(
        copy,
        "reproduce",
        recipe,
        "--seeds",
        "1",
        "--append",
        "--scale",
        "tiny: 2 steps",
        "--out",
        "runs/reproduce/toy.json",
        "--",
        *FEW_STEPS,
    )
    meta = validate_metafile(copy / f"recipes/{SLUG}/metafile.yaml")
    metrics = {r.metric for r in meta.reproduced}
    assert "eval/zeroshot_top1" in metrics
    assert all(r.seeds == [0] and r.recipe == "tiny.yaml" for r in meta.reproduced)
    _zoo(copy, "docs")
    readme = (copy / f"recipes/{SLUG}/README.md").read_text()
    assert "Nothing reproduced yet" not in readme and "eval/zeroshot_top1" in readme
    # the README zoo check compares against: up to date after `zoo docs`
    assert readme == render_readme(Paper(SLUG, copy / "recipes" / SLUG))
