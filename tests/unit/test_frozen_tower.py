"""The frozen tower (zoo.freeze) inside a real fit: bit-identical, in eval mode and out of the
optimiser afterwards; a change during the fit fails the end-of-fit check naming the tensor;
gradients reach a trainable prompt through it (CoOp), and not with ``no_grad``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from tests.unit._component_fit import Digits16, cloned, fit, optimised_ids, tiny_vit
from zoo.freeze import FrozenTower, FrozenTowerChangedError, FrozenTowerCheck
from zoo.module import ZooModule

STEPS, EVERY = 8, 4
TAMPERED = "blocks.0.attn.qkv.weight"


class PromptedTower(ZooModule):
    """CoOp-like: a learned additive image prompt, a frozen ViT, a trainable linear head."""

    def __init__(self, no_grad: bool = False):
        super().__init__({"lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 1, "min_lr": 1e-4})
        torch.manual_seed(0)
        # dropout everywhere: any train-mode forward would change the features
        vit = tiny_vit(num_classes=0, drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5)
        self.tower = FrozenTower(vit, no_grad=no_grad)
        self.prompt = nn.Parameter(torch.zeros(1, 3, 16, 16))
        self.head = nn.Linear(32, 10)
        self.tower_training: list[bool] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.tower_training.append(any(m.training for m in self.tower.module.modules()))
        features = self.tower(batch["image"] + self.prompt)
        return F.cross_entropy(self.head(features), batch["label"])


class Tamper(Callback):
    """Changes one frozen weight after the second training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 2:
            with torch.no_grad():
                pl_module.tower.module.get_parameter(TAMPERED)[0, 0] += 1e-3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    model = PromptedTower()
    before = cloned(model.state_dict())
    trainer = fit(model, root, STEPS, every=EVERY, callbacks=[FrozenTowerCheck()])
    return model, before, trainer, root


def test_after_a_fit_the_tower_is_bit_identical_in_eval_mode_and_not_optimised(run):
    model, before, trainer, _ = run
    after = model.state_dict()
    tower = [k for k in after if k.startswith("tower.")]
    assert tower and all(torch.equal(after[k], before[k]) for k in tower)
    assert model.tower_training == [False] * STEPS
    frozen = list(model.tower.parameters())
    assert not {id(p) for p in frozen} & optimised_ids(trainer)
    assert optimised_ids(trainer) == {id(model.prompt), id(model.head.weight), id(model.head.bias)}
    # ... while the prompt upstream of the tower trained through it
    assert not torch.equal(after["prompt"], before["prompt"])


def test_the_parent_train_call_leaves_the_tower_in_eval_mode():
    model = PromptedTower().train()
    assert model.training and model.tower.training
    assert not any(m.training for m in model.tower.module.modules())
    x = Digits16(4).images
    with torch.no_grad():  # eval mode: dropout off, so two passes agree
        assert torch.equal(model.tower(x), model.tower(x))


def test_a_change_during_the_fit_fails_the_end_of_fit_check(tmp_path):
    with pytest.raises(FrozenTowerChangedError, match="at the end of fit") as err:
        fit(PromptedTower(), tmp_path, 4, callbacks=[FrozenTowerCheck(), Tamper()])
    assert f"tower.module.{TAMPERED}" in str(err.value)
    assert "tower.module.blocks.0.attn.qkv.bias" not in str(err.value)  # only what changed


def test_a_resumed_fit_is_checked_against_the_first_start(run, tmp_path):
    model, _, _, root = run
    ckpt = root / f"epoch=0-step={EVERY}.ckpt"
    resumed = PromptedTower()
    fit(resumed, tmp_path / "ok", STEPS, ckpt_path=ckpt, callbacks=[FrozenTowerCheck()])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())

    state = torch.load(ckpt, weights_only=False)  # a checkpoint whose tower was edited
    state["state_dict"][f"tower.module.{TAMPERED}"][0, 0] += 1.0
    torch.save(state, tmp_path / "edited.ckpt")
    with pytest.raises(FrozenTowerChangedError, match=f"when the fit resumed.*{TAMPERED}"):
        fit(
            PromptedTower(),
            tmp_path / "bad",
            STEPS,
            ckpt_path=tmp_path / "edited.ckpt",
            callbacks=[FrozenTowerCheck()],
        )


def test_a_tower_made_trainable_again_is_refused_at_fit_start(tmp_path):
    model = PromptedTower()
    model.tower.module.get_parameter(TAMPERED).requires_grad_(True)
    with pytest.raises(FrozenTowerChangedError, match=f"require grad.*tower.module.{TAMPERED}"):
        fit(model, tmp_path, 1, callbacks=[FrozenTowerCheck()])


def test_gradients_flow_through_the_tower_unless_no_grad():
    model = PromptedTower().eval()
    x = Digits16(4).images
    prompt = torch.randn(1, 3, 16, 16, requires_grad=True)
    model.tower(x + prompt).square().sum().backward()
    # the same gradient as through the plain (unfrozen) network
    plain = copy.deepcopy(model.tower.module).requires_grad_(True)
    reference = torch.zeros_like(prompt, requires_grad=True)
    with torch.no_grad():
        reference.copy_(prompt)
    plain(x + reference).square().sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert torch.equal(prompt.grad, reference.grad)
    assert all(p.grad is None for p in model.tower.parameters())

    model.tower.no_grad = True
    out = model.tower(x + prompt)
    assert not out.requires_grad and out.grad_fn is None
