"""The few-shot base: a frozen CLIP from a zoo package (sha256 pinned), the zero-shot
baseline fitted with ``max_epochs: 0`` and scored by the evaluation callbacks at fit end, the
optional ``class_logits`` protocol, and the head rebuilt from a checkpoint's class names."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from zoo.data.embedded import CLASSNAMES
from zoo.data.labelled_datamodule import LabelledImageDataModule
from zoo.eval import ZeroShotEval
from zoo.fewshot.baselines import ZeroShotCLIP
from zoo.fewshot.clip_source import WeightsMismatchError, load_clip
from zoo.freeze import FrozenTowerCheck

PACKAGE = Path(__file__).resolve().parents[2] / "checkpoints" / "clip-vit-tiny-digits"
TEMPLATE = "a photo of the number {}."
N_TEST = 60


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """60 scikit-learn digits as a 16 px ImageFolder test split (black on white, as the
    tiny CLIP saw them) and 20 as a train split."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for split, rows in {"test": range(N_TEST), "train": range(N_TEST, N_TEST + 20)}.items():
        for i in rows:
            label = int(digits.target[i])
            pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)
            folder = root / split / CLASSNAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((16, 16), Image.NEAREST).save(folder / f"{i}.png")
    return root


def _data(root: Path) -> LabelledImageDataModule:
    loaded = load_clip({"path": str(PACKAGE)})
    return LabelledImageDataModule(
        root=str(root),
        train="train",
        test="test",
        # class names = the folder names, in ImageFolder's (sorted) label order
        templates=[TEMPLATE],
        preprocess=loaded.preprocess,
        batch_size=10,
    )


def _trainer(tmp_path: Path, callbacks) -> L.Trainer:
    return L.Trainer(
        max_epochs=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def test_zoo_package_source_reports_the_weights_sha256_and_refuses_another_pin():
    loaded = load_clip({"path": str(PACKAGE)})
    config = (PACKAGE / "zoo_model_clip_vit_tiny_digits" / "model.safetensors.sha256").read_text()
    assert loaded.sha256 == config.split()[0]
    with pytest.raises(WeightsMismatchError, match="pins"):
        load_clip({"path": str(PACKAGE), "sha256": "0" * 64})


def test_random_source_is_deterministic_per_seed():
    a = load_clip({"encoder": {"preset": "vit-tiny-digits"}, "seed": 3})
    b = load_clip({"encoder": {"preset": "vit-tiny-digits"}, "seed": 3})
    c = load_clip({"encoder": {"preset": "vit-tiny-digits"}, "seed": 4})
    assert a.sha256 == b.sha256 != c.sha256


def test_zero_shot_baseline_fits_with_zero_epochs_and_scores_like_the_clip(digits_folder, tmp_path):
    data = _data(digits_folder)
    module = ZeroShotCLIP(clip={"path": str(PACKAGE)})
    callback = ZeroShotEval(split="test", name="fewshot", log_images=False)
    _trainer(tmp_path, [callback, FrozenTowerCheck()]).fit(module, datamodule=data)
    assert set(callback.results) >= {"eval/fewshot_top1", "eval/fewshot_top5"}

    # the same accuracy straight from the frozen encoder, by hand
    encoder = load_clip({"path": str(PACKAGE)}).encoder
    assert data.classnames == sorted(CLASSNAMES)
    tokens = data.tokenizer([TEMPLATE.format(c) for c in data.classnames])
    with torch.no_grad():
        text = F.normalize(encoder.encode_text(tokens), dim=-1)
        test = data.eval_set("test")
        images = torch.stack([test[i]["image"] for i in range(len(test))])
        labels = torch.tensor([test[i]["label"] for i in range(len(test))])
        pred = (F.normalize(encoder.encode_image(images), dim=-1) @ text.T).argmax(-1)
    expected = (pred == labels).float().mean().item() * 100
    assert callback.results["eval/fewshot_top1"] == pytest.approx(expected, abs=1e-4)
    assert not any(p.requires_grad for p in module.parameters())


class _FavourClassZero(ZeroShotCLIP):
    """Adds +1000 to class 0 ("eight", the first folder): every image is predicted as it."""

    def class_logits(self, features: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        logits = 100 * F.normalize(features, dim=-1) @ class_weights.T
        return logits + 1000 * (torch.arange(logits.shape[1]) == 0).to(logits)


def test_zero_shot_eval_uses_the_module_class_logits(digits_folder, tmp_path):
    data = _data(digits_folder)
    module = _FavourClassZero(clip={"path": str(PACKAGE)})
    callback = ZeroShotEval(split="test", name="fewshot", log_images=False)
    _trainer(tmp_path, [callback]).fit(module, datamodule=data)
    labels = load_digits().target[:N_TEST]
    assert callback.results["eval/fewshot_top1"] == pytest.approx(
        100 * float(np.mean(labels == 8)), abs=1e-4
    )


def test_checkpoint_rebuilds_the_head_for_its_class_names(digits_folder, tmp_path):
    data = _data(digits_folder)
    module = ZeroShotCLIP(clip={"path": str(PACKAGE)})
    trainer = _trainer(tmp_path, [])
    trainer.fit(module, datamodule=data)
    path = tmp_path / "zs.ckpt"
    trainer.save_checkpoint(path)
    restored = ZeroShotCLIP.load_from_checkpoint(path, weights_only=False)
    assert restored.classnames == sorted(CLASSNAMES)
    assert torch.equal(restored.head.text_weights, module.head.text_weights)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(restored.logits(images), module.logits(images))
