"""CLIP-Adapter: α = 0 is zero-shot CLIP exactly, the logits are the residual blend by hand,
one SGD step moves the adapter only (frozen CLIP bit-identical), the optimiser is CoOp's, and
the evaluation callbacks score the adapted model through the module protocols."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import zoo
from lightning_modules.clip_adapter import CLIP_ADAPTER_OPTIM, ClipAdapter
from zoo.cli import main
from zoo.data import TextTokenizer
from zoo.eval import ZeroShotEval
from zoo.freeze import FrozenTowerCheck

from ._fewshot_layout import PACKAGE, TEMPLATE, digits_datamodule, write_digits_layout

CLASSES = ["zero", "one", "two", "three", "four"]


def _module(**kwargs) -> ClipAdapter:
    torch.manual_seed(0)
    module = ClipAdapter(clip={"path": str(PACKAGE)}, **kwargs)
    module.configure_classes(CLASSES, [TEMPLATE], TextTokenizer("clip-bpe", 16))
    return module


def _zero_shot_logits(module: ClipAdapter, images: torch.Tensor) -> torch.Tensor:
    """Zero-shot CLIP written out: exp(t) · f̂ Wᵀ, W the prompt classifier (checked against
    the prompts' normalised text features)."""
    encoder = module.encoder
    tokens = TextTokenizer("clip-bpe", 16)([TEMPLATE.format(c) for c in CLASSES])
    text = F.normalize(encoder.encode_text(tokens), dim=-1)
    weights = module.adapter_head.text_weights
    torch.testing.assert_close(weights, text, rtol=0, atol=1e-6)
    f = F.normalize(encoder.encode_image(images), dim=-1)
    return encoder.logit_scale.exp() * f @ weights.t()


@torch.no_grad()
def test_ratio_zero_is_zero_shot_clip_exactly():
    module = _module(ratio=0.0).eval()
    images = torch.randn(6, 3, 16, 16)
    assert torch.equal(module.logits(images), _zero_shot_logits(module, images))
    assert torch.equal(module.features(images), module.encoder.encode_image(images))
    adapted = _module(ratio=0.2).eval()
    assert not torch.equal(adapted.logits(images), _zero_shot_logits(adapted, images))


@torch.no_grad()
def test_logits_are_the_residual_blend_of_the_raw_feature():
    """x = 0.2·ReLU(ReLU(f W₁ᵀ) W₂ᵀ) + 0.8·f on the unnormalised feature, then exp(t)·x̂ Wᵀ."""
    module = _module().eval()
    head = module.adapter_head
    assert head.adapter[0].weight.shape == (16, 64) and head.adapter[2].weight.shape == (64, 16)
    images = torch.randn(4, 3, 16, 16)
    f = module.encoder.encode_image(images)
    a = torch.relu(torch.relu(f @ head.adapter[0].weight.t()) @ head.adapter[2].weight.t())
    x = 0.2 * a + 0.8 * f
    expected = module.encoder.logit_scale.exp() * F.normalize(x, dim=-1) @ head.text_weights.t()
    torch.testing.assert_close(module.logits(images), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(module.features(images), x, rtol=0, atol=1e-6)


def test_optimiser_is_coops_and_only_the_adapter_is_in_it():
    spec = CLIP_ADAPTER_OPTIM
    assert (spec.optimizer, spec.lr, spec.momentum, spec.weight_decay) == ("sgd", 0.002, 0.9, 5e-4)
    assert (spec.schedule, spec.interval, spec.warmup_lr, spec.min_lr) == (
        "constant_warmup_cosine",
        "epoch",
        1e-5,
        0.0,
    )
    module = _module(learnable_ratio=True)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"head.adapter.0.weight", "head.adapter.2.weight", "head.learned_ratio"}
    assert _module().adapter_head.to_config().get("learnable_ratio") is None  # old configs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clip_adapter")
    write_digits_layout(root, {"train": 2, "val": 1, "test": 2})
    return root


def test_a_step_moves_only_the_adapter_and_eval_scores_the_adapted_model(data_root, tmp_path):
    dm = digits_datamodule(data_root, tmp_path / "splits", batch_size=10)
    torch.manual_seed(0)
    module = ClipAdapter(clip={"path": str(PACKAGE)}, learnable_ratio=True)
    frozen = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    callback = ZeroShotEval(split="test", name="fewshot", log_images=False)
    seen: dict[str, dict[str, torch.Tensor]] = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, module):
            seen["head"] = {k: v.clone() for k, v in module.head.state_dict().items()}
            seen["lr"] = {"start": trainer.optimizers[0].param_groups[0]["lr"]}

    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[Snapshot(), callback, FrozenTowerCheck()],
    )
    trainer.fit(module, datamodule=dm)
    # epoch 0 is CoOp's constant warm-up epoch at 1e-5
    assert seen["lr"]["start"] == pytest.approx(1e-5)
    for name, tensor in module.encoder.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name
    after = module.head.state_dict()
    changed = {k for k, v in seen["head"].items() if not torch.equal(v, after[k])}
    assert changed == {"adapter.0.weight", "adapter.2.weight", "learned_ratio"}

    # the callback scored the adapted classifier: features() is the blend x
    module.eval()
    test = dm.build_dataset("test")
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.tensor([test[i]["label"] for i in range(len(test))])
    with torch.no_grad():
        predicted = module.logits(images).argmax(-1)
    accuracy = (predicted == labels).float().mean().item() * 100
    assert callback.results["eval/fewshot_top1"] == pytest.approx(accuracy, abs=1e-4)

    # zoo export → zoo.load: an `adapter` clip_head package, the learned ratio included
    trainer.save_checkpoint(tmp_path / "adapter.ckpt")
    out = tmp_path / "package"
    argv = ["export", str(tmp_path / "adapter.ckpt"), "--name", "adapter-test", "--out", str(out)]
    argv += ["--trust-pickle", "--class-path", "lightning_modules.clip_adapter.ClipAdapter"]
    assert main(argv) == 0
    loaded = zoo.load(f"local-dir:{out}")
    assert loaded.config["architecture"]["head"]["config"]["learnable_ratio"] is True
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), module.logits(images))
