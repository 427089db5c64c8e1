"""The EMA teacher, LoRA and the frozen tower through the real ``zoo export`` path: a real fit
on CPU, ``zoo export`` of its Lightning checkpoint (the module rebuilt from its saved
hyper-parameters and class path, what it exports chosen by its ``export_model()``), then
``zoo.load`` of the folder, compared with the fitted module by weights and outputs.

- EMA (DINO releases the teacher): the folder holds the teacher, not the student, and a fit
  interrupted mid-epoch and resumed exports the very file an uninterrupted fit exports.
- LoRA: the folder is a plain ``vision_encoder`` with the deltas merged (no adapter keys); it
  answers like the LoRA model and unlike the pre-fit base.
- Frozen tower: a ``clip_head`` whose dual encoder is bit-identical to the weights before the
  fit (``FrozenTowerCheck`` passes in the fit), whose head trained, and whose loaded
  ``class_weights`` / ``logits`` are the module's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch import nn

import zoo
from tests.unit._component_fit import Digits16, DigitsData, cloned
from tests.unit._component_fit import fit as component_fit
from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.backbones.clip_head import AdapterHead, ClipHead, CLIPWithHead, LinearHead
from zoo.backbones.vision import VisionEncoder, VisionSpec
from zoo.cli import main
from zoo.data.tokenizers import TextTokenizer
from zoo.ema import EMATeacher
from zoo.freeze import FrozenTower, FrozenTowerCheck
from zoo.lora import apply_lora, merged_state_dict
from zoo.module import ZooModule
from zoo.specs import to_spec

STEPS, K = 8, 4  # 6 batches per epoch: the interruption at K is mid-epoch, the end in epoch 2
VISION = {
    "model_name": "vit_tiny_patch16_224",
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
}
CTX = 8
DUAL = {
    "vision": VISION,
    "text": {"width": 32, "layers": 1, "heads": 2, "context_length": CTX},
    "embed_dim": 16,
}
# Digits16 pixels are x / 8 - 1 for x in [0, 16]: normalised with mean = std = 0.5
MEAN = STD = [0.5, 0.5, 0.5]
CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPTS = [f"a photo of the digit {c}" for c in CLASSNAMES]


def images(n: int = 16) -> torch.Tensor:
    return Digits16(n).images


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Digits(DigitsData):
    """The component tests' resumable digits, with the preprocessing hyper-parameters that
    ``zoo export`` reads from the checkpoint (``datamodule_hyper_parameters``)."""

    def __init__(self, image_size: int = 16, mean: list = MEAN, std: list = STD):
        super().__init__()
        self.save_hyperparameters()


class StopAt(Callback):
    """Ends the fit after optimiser step ``step`` (an interruption: the run's ``max_steps``,
    hence its LR and momentum schedules, stay those of the full run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(
    module: L.LightningModule,
    root: Path,
    ckpt_path: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """``STEPS`` optimiser steps on CPU, checkpoints every ``K`` steps plus ``last.ckpt``."""
    return component_fit(module, root, STEPS, K, ckpt_path, callbacks, datamodule=Digits())


def export(ckpt: Path, cls: type, out: Path, name: str) -> zoo.hub.ZooModel:
    """``zoo export CKPT`` (the CLI) and ``zoo.load("local-dir:OUT")``. The fits here are
    plain ``Trainer`` fits, so the class path ``zoo fit`` records is given on the command line."""
    argv = ["export", str(ckpt), "--name", name, "--out", str(out), "--trust-pickle"]
    assert main([*argv, "--class-path", class_path(cls)]) == 0
    return zoo.load(f"local-dir:{out}")


def from_checkpoint(cls: type, ckpt: Path) -> ZooModule:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module = cls(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"], strict=True)
    return module.eval()


def stored_tensors(folder: Path) -> tuple[dict, bytes]:
    """A safetensors file without its metadata: the tensor entries of the header (name,
    dtype, shape, offsets) and the data bytes."""
    data = (folder / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__")
    return header, data[8 + n :]


def assert_same_state(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


# --------------------------------------------------------------------------- EMA teacher


class ByolLike(ZooModule):
    """A student ViT regressing its EMA teacher's features of the clean image from a noisy
    view (BYOL); DINO and BYOL release the teacher, so ``export_model`` returns it."""

    def __init__(self, vision: dict, momentum: float = 0.9, seed: int = 0):
        super().__init__({"lr": 3e-3, "weight_decay": 0.05, "warmup_steps": 2, "min_lr": 1e-4})
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.student = VisionEncoder(to_spec(VisionSpec, vision))
        self.teacher = EMATeacher(self.student, momentum=momentum, schedule="cosine")
        width = self.student.num_features
        self.predictor = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        online = self.predictor(self.student(x + 0.2 * torch.randn_like(x)))
        with torch.no_grad():
            target = self.teacher(x)
        return (2 - 2 * F.cosine_similarity(online, target, dim=-1)).mean()

    def after_optimizer_step(self) -> None:
        self.teacher.update_from_trainer(self.student, self.trainer)

    def export_model(self) -> tuple[str, nn.Module]:
        return "vision_encoder", self.teacher.module


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    model = ByolLike(VISION)
    fit(model, root / "ckpt")
    loaded = export(root / "ckpt" / "last.ckpt", ByolLike, root / "out", "byol-tiny-test")
    return model.eval(), loaded, root


@torch.no_grad()
def test_the_exported_model_is_the_teacher_of_the_checkpoint(ema_run):
    model, loaded, root = ema_run
    ckpt = root / "ckpt" / "last.ckpt"
    ref = from_checkpoint(ByolLike, ckpt)
    assert torch.load(ckpt, weights_only=False)["global_step"] == STEPS
    assert_same_state(ref.state_dict(), model.state_dict())  # last.ckpt is the end of fit

    config = loaded.config
    assert config["architecture"]["type"] == "vision_encoder"
    assert config["provenance"]["global_step"] == STEPS
    assert config["provenance"]["class_path"] == class_path(ByolLike)
    assert config["heads"] == {} and loaded.tokenizer is None  # no predictor, no student
    assert (loaded.preprocess.image_size, list(loaded.preprocess.mean)) == (16, MEAN)
    assert list(loaded.preprocess.std) == STD

    teacher, student = ref.teacher.module.state_dict(), ref.student.state_dict()
    assert_same_state(loaded.encoder.state_dict(), teacher)
    x = images()
    assert torch.equal(loaded.features(x), ref.teacher.module.features(x))
    # the student would not pass: an exported student differs in weights and in features
    differ = [k for k in teacher if not torch.equal(teacher[k], student[k])]
    assert "visual.blocks.0.attn.qkv.weight" in differ
    gap = (loaded.features(x) - ref.student.features(x)).abs().max()
    assert gap > 1e-3, gap


def test_an_interrupted_and_resumed_fit_exports_the_same_weights(ema_run, tmp_path):
    _, loaded, root = ema_run
    first = ByolLike(VISION)
    trainer = fit(first, tmp_path / "first", callbacks=[StopAt(K)])
    assert trainer.global_step == K  # really interrupted, mid-epoch
    stopped = tmp_path / "first" / "last.ckpt"
    assert torch.load(stopped, weights_only=False)["global_step"] == K

    resumed = ByolLike(VISION, seed=1)  # other initial weights: all must come from the ckpt
    fit(resumed, tmp_path / "second", ckpt_path=stopped)
    again = export(tmp_path / "second" / "last.ckpt", ByolLike, tmp_path / "out", "byol-tiny-test")

    want = load_file(str(loaded.folder / "model.safetensors"))
    got = load_file(str(again.folder / "model.safetensors"))
    assert_same_state(got, want)
    # byte for byte but for the metadata: safetensors (0.8) writes its keys in a random
    # order (a Rust HashMap), so two exports of the same weights differ in sha256
    assert stored_tensors(again.folder) == stored_tensors(loaded.folder)
    assert again.config["architecture"] == loaded.config["architecture"]
    assert again.config["weights"]["sha256"] == loaded.config["weights"]["sha256"]
    x = images()
    with torch.no_grad():
        assert torch.equal(again.features(x), loaded.features(x))


# --------------------------------------------------------------------------- LoRA


class LoraProbe(ZooModule):
    """LoRA on the fused qkv of a VisionEncoder plus a linear classifier; it releases the
    encoder with the deltas merged (a plain ``vision_encoder``, no peft needed to load it)."""

    def __init__(self, vision: dict, r: int = 4, alpha: float = 8.0, seed: int = 0):
        super().__init__({"lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 2, "min_lr": 1e-4})
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.backbone = apply_lora(VisionEncoder(to_spec(VisionSpec, vision)), r=r, alpha=alpha)
        self.head = nn.Linear(self.backbone.get_base_model().num_features, 10)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.head(self.backbone(batch["image"])), batch["label"])

    def export_model(self) -> tuple[str, nn.Module]:
        merged = VisionEncoder(self.backbone.get_base_model().spec)
        merged.load_state_dict(merged_state_dict(self.backbone), strict=True)
        return "vision_encoder", merged


def test_lora_exports_the_merged_encoder(tmp_path):
    x = images()
    torch.manual_seed(0)
    base = VisionEncoder(to_spec(VisionSpec, VISION)).eval()  # what LoraProbe wraps
    base_state, base_features = cloned(base.state_dict()), base.features(x)

    model = LoraProbe(VISION)
    fit(model, tmp_path / "ckpt")
    model.eval()
    loaded = export(tmp_path / "ckpt" / "last.ckpt", LoraProbe, tmp_path / "out", "lora-test")

    assert loaded.config["architecture"]["type"] == "vision_encoder"
    assert loaded.config["provenance"]["global_step"] == STEPS
    assert loaded.config["heads"] == {}
    lora_features = model.backbone(x)
    torch.testing.assert_close(loaded.features(x), lora_features, rtol=1e-5, atol=1e-5)
    gap = (loaded.features(x) - base_features).abs().max()
    assert gap > 1e-3, gap  # the fit moved the model, and the export carries it

    # merged: the base model's keys, only the adapted qkv weights differ from the base
    state = loaded.encoder.state_dict()
    assert state.keys() == base_state.keys()
    adapted = {k for k in state if not torch.equal(state[k], base_state[k])}
    assert adapted == {"visual.blocks.0.attn.qkv.weight"}
    stored = load_file(str(loaded.folder / "model.safetensors"))
    assert not [k for k in stored if "lora" in k or "base_layer" in k]


# --------------------------------------------------------------------------- frozen tower


class FrozenClipProbe(ZooModule):
    """CLIP frozen in a :class:`FrozenTower` and a trainable few-shot head (linear probe or
    CLIP-Adapter over the frozen text tower's zero-shot classifier); released as
    ``clip_head``."""

    def __init__(self, encoder: dict, head: str = "linear", seed: int = 0):
        super().__init__({"lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 1, "min_lr": 1e-4})
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.tower = FrozenTower(build_dual_encoder(to_spec(DualEncoderSpec, encoder)))
        clip = self.tower.module
        self.head: ClipHead
        if head == "linear":
            self.head = LinearHead(clip.embed_dim, CLASSNAMES)
        else:
            self.head = AdapterHead(clip.embed_dim, CLASSNAMES, reduction=2, ratio=0.2)
            with torch.no_grad():
                tokens = TextTokenizer("clip-bpe", clip.context_length)(PROMPTS)
                self.head.text_weights.copy_(clip.encode_text(tokens, normalize=True))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        clip = self.tower.module
        with torch.no_grad():
            features = clip.encode_image(images)
        return self.head.logits(clip, features)

    def class_weights(self) -> torch.Tensor:
        return self.head.class_weights(self.tower.module)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch["image"]), batch["label"])

    def export_model(self) -> tuple[str, nn.Module]:
        return "clip_head", CLIPWithHead(self.tower.module, self.head)


@pytest.mark.parametrize("head", ["linear", "adapter"])
def test_frozen_tower_exports_the_untouched_encoder_and_the_trained_head(head, tmp_path):
    model = FrozenClipProbe(DUAL, head)
    tower_before = cloned(model.tower.module.state_dict())
    head_before = cloned(model.head.state_dict())
    check = FrozenTowerCheck()
    fit(model, tmp_path / "ckpt", callbacks=[check])  # raises if the tower changed
    model.eval()
    assert set(check.fingerprints) == {"tower"}
    loaded = export(tmp_path / "ckpt" / "last.ckpt", FrozenClipProbe, tmp_path / "out", "fs-test")

    arch = loaded.config["architecture"]
    assert arch["type"] == "clip_head" and arch["head"]["type"] == head
    assert arch["head"]["config"]["classnames"] == CLASSNAMES
    assert loaded.config["provenance"]["global_step"] == STEPS
    # the encoder, bit for bit as before the fit; the head as trained
    assert_same_state(loaded.encoder.encoder.state_dict(), tower_before)
    assert_same_state(loaded.encoder.head.state_dict(), model.head.state_dict())
    trained = [
        k for k in head_before if not torch.equal(model.head.state_dict()[k], head_before[k])
    ]
    want_trained = (
        ["linear.weight", "linear.bias"]
        if head == "linear"
        else ["adapter.0.weight", "adapter.2.weight"]
    )
    assert set(want_trained) <= set(trained), trained
    assert "text_weights" not in trained  # the adapter's zero-shot classifier is a buffer

    x = images()
    assert torch.equal(loaded.class_weights(), model.class_weights())
    assert torch.equal(loaded.logits(x), model.logits(x))
    if head == "adapter":  # the stored tokenizer and text tower rebuild the stored classifier
        again = loaded.encode_text(PROMPTS, normalize=True)
        torch.testing.assert_close(again, loaded.class_weights(), rtol=0, atol=1e-6)
