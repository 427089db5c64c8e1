"""Architecture registry of zoo export / zoo.load: a round trip per registered type (equal
outputs, equal preprocessing), the Lightning path through ``export_model()``, and the
pydantic ``config.json`` schema's errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from zoo.backbones import DualEncoderSpec, build_dual_encoder
from zoo.backbones.clip_head import (
    CLIP_HEADS,
    AdapterHead,
    ClipHead,
    CLIPWithHead,
    LinearHead,
    register_clip_head,
)
from zoo.backbones.vision import VisionEncoder, VisionSpec
from zoo.backbones.vlm import VisionLanguageModel
from zoo.datamodule import ZooDataModule
from zoo.hub import UnsafeConfigError, export_model, load_model_folder
from zoo.hub.architectures import ARCHITECTURES, module_architecture
from zoo.hub.export import write_model_folder
from zoo.hub.sources import ExportSource
from zoo.module import ZooModule
from zoo.preprocess import PreprocessSpec
from zoo.specs import to_spec

VISION = {
    "model_name": "vit_tiny_patch16_224",
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
}
DUAL = {
    "vision": VISION,
    "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 8},
    "embed_dim": 16,
}
CLASSES = ["zero", "one", "two"]
# A non-default preprocessing: every field must survive the round trip.
PRE = PreprocessSpec(
    image_size=16, resize=20, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear"
)


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _pil() -> Image.Image:
    pixels = torch.rand(23, 29, 3, generator=torch.Generator().manual_seed(2))
    return Image.fromarray((pixels * 255).byte().numpy())


def _dual(seed: int = 0):
    torch.manual_seed(seed)
    return build_dual_encoder(to_spec(DualEncoderSpec, DUAL)).eval()


def _roundtrip(model: nn.Module, arch: str, tmp_path: Path, pre: PreprocessSpec = PRE):
    folder = tmp_path / arch
    folder.mkdir()
    src = ExportSource(model=model, architecture=arch, preprocess=pre, paper="test")
    config = write_model_folder(src, folder, name=f"{arch.replace('_', '-')}-test")
    return config, load_model_folder(folder)


def _same_preprocessing(loaded, pre: PreprocessSpec) -> None:
    assert loaded.preprocess == pre
    pil = _pil()
    assert torch.equal(loaded.transform(pil), pre.eval_transform()(pil))


@torch.no_grad()
def test_dual_encoder_roundtrip(tmp_path) -> None:
    model = _dual()
    config, loaded = _roundtrip(model, "dual_encoder", tmp_path)
    assert config["format_version"] == 1  # still readable by every earlier zoo
    images, tokens = _images(), torch.randint(0, 49408, (2, 8))
    assert torch.equal(loaded.features(images), model.encode_image(images))
    assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    _same_preprocessing(loaded, PRE)


@torch.no_grad()
def test_vision_encoder_roundtrip_without_tokenizer(tmp_path) -> None:
    torch.manual_seed(0)
    model = VisionEncoder(to_spec(VisionSpec, VISION)).eval()
    pre = PreprocessSpec(**{**PRE.__dict__, "tokenizer": None})
    config, loaded = _roundtrip(model, "vision_encoder", tmp_path, pre)
    assert config["format_version"] == 2 and config["tokenizer"] is None
    assert loaded.tokenizer is None
    images = _images()
    assert torch.equal(loaded.features(images), model.features(images))
    assert torch.equal(loaded.features(_pil()), model.features(PRE.eval_transform()(_pil())[None]))
    _same_preprocessing(loaded, pre)
    with pytest.raises(TypeError, match=r"has no encode_text\(\); it offers features"):
        loaded.encode_text(["a digit"])


@pytest.mark.parametrize("head_cls", [LinearHead, AdapterHead])
@torch.no_grad()
def test_clip_head_roundtrip(head_cls, tmp_path) -> None:
    torch.manual_seed(0)
    head = head_cls(embed_dim=16, classnames=CLASSES)
    for tensor in head.state_dict().values():  # non-trivial weights and buffers
        tensor.copy_(torch.randn_like(tensor))
    model = CLIPWithHead(_dual(), head).eval()
    config, loaded = _roundtrip(model, "clip_head", tmp_path)
    assert config["architecture"]["head"]["type"] == head_cls.type_name
    images = _images()
    assert torch.equal(loaded.logits(images), model.logits(images))
    assert torch.equal(loaded.class_weights(), model.class_weights())
    assert torch.equal(loaded.features(images), model.features(images))
    assert not any(p.requires_grad for p in loaded.encoder.encoder.parameters())
    _same_preprocessing(loaded, PRE)


def test_adapter_logits_match_a_hand_computation() -> None:
    """CLIP-Adapter: x = α·A(f) + (1-α)·f, logits = exp(t)·x̂ @ Wᵀ (gaopengcuhk/CLIP-Adapter)."""
    encoder = _dual()
    head = AdapterHead(embed_dim=16, classnames=CLASSES, reduction=4, ratio=0.2)
    head.text_weights.copy_(torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    f = torch.randn(2, 16)
    w1, w2 = head.adapter[0].weight, head.adapter[2].weight
    a = torch.relu(torch.relu(f @ w1.t()) @ w2.t())
    x = 0.2 * a + 0.8 * f
    x = x / x.norm(dim=-1, keepdim=True)
    expected = encoder.logit_scale.exp() * x @ head.text_weights.t()
    torch.testing.assert_close(head.logits(encoder, f), expected, rtol=0, atol=1e-6)


class _ScaledHead(ClipHead):
    """What a family registers: a head type with its own config and weights."""

    type_name = "test_scaled"

    def __init__(self, embed_dim: int, classnames: list[str], scale: float = 2.0):
        super().__init__(classnames)
        self.embed_dim, self.scale = embed_dim, scale
        self.weight = nn.Parameter(torch.randn(len(classnames), embed_dim))

    def to_config(self):
        return {"embed_dim": self.embed_dim, "classnames": self.classnames, "scale": self.scale}

    def class_weights(self, encoder):
        return self.weight

    def logits(self, encoder, image_features):
        return self.scale * image_features @ self.weight.t()


@torch.no_grad()
def test_registered_head_type_roundtrips(tmp_path) -> None:
    register_clip_head(_ScaledHead)
    try:
        model = CLIPWithHead(_dual(), _ScaledHead(16, CLASSES, scale=3.0)).eval()
        config, loaded = _roundtrip(model, "clip_head", tmp_path)
        assert config["architecture"]["head"]["config"]["scale"] == 3.0
        assert torch.equal(loaded.logits(_images()), model.logits(_images()))
    finally:
        CLIP_HEADS.pop(_ScaledHead.type_name)


LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


@torch.no_grad()
def test_vlm_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    model = VisionLanguageModel(to_spec(VisionSpec, VISION), LLAMA, "mlp2x_gelu").eval()
    config, loaded = _roundtrip(model, "vlm", tmp_path)
    assert config["architecture"]["language_model"]["model_type"] == "llama"
    images, ids = _images(), torch.randint(0, 64, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    expected = model.logits(images, ids, attention_mask=mask)
    assert expected.shape[:2] == (2, 17 + 5)  # 16 patches + class token, then the text
    assert torch.equal(loaded.logits(images, ids, attention_mask=mask), expected)
    assert torch.equal(loaded.features(images), model.features(images))
    _same_preprocessing(loaded, PRE)


def test_every_registered_architecture_has_a_roundtrip_test() -> None:
    # lora_adapter: tests/unit/test_adapter_package.py (it needs a LoRA-tuned module and a base)
    assert set(ARCHITECTURES) == {
        "dual_encoder",
        "vision_encoder",
        "clip_head",
        "vlm",
        "lora_adapter",
    }


# --------------------------------------------------------------------------- Lightning


class TinyMAE(ZooModule):
    """A module that says what it exports (``export_model``)."""

    def __init__(self, vision: dict | None = None):
        super().__init__()
        self.backbone = VisionEncoder(to_spec(VisionSpec, vision))
        self.decoder = nn.Linear(32, 48)  # training-only: not exported

    def export_model(self):
        return "vision_encoder", self.backbone


@torch.no_grad()
def test_lightning_export_uses_export_model_and_datamodule_preprocessing(tmp_path) -> None:
    torch.manual_seed(0)
    module = TinyMAE(VISION).eval()
    ckpt = tmp_path / "last.ckpt"
    dm = {"image_size": 16, "resize": 20, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    torch.save(
        {
            "hyper_parameters": {"_class_path": f"{__name__}.TinyMAE", "vision": VISION},
            "state_dict": module.state_dict(),
            "datamodule_hyper_parameters": {**dm, "interpolation": "bilinear", "tokenizer": "x"},
            "epoch": 0,
            "global_step": 1,
        },
        ckpt,
    )
    result = export_model(ckpt, "tiny-mae", tmp_path / "out", trust_pickle=True)
    assert result.config["architecture"]["type"] == "vision_encoder"
    assert result.config["heads"] == {} and result.config["tokenizer"] is None
    loaded = load_model_folder(result.model_dir)
    assert loaded.preprocess == PreprocessSpec(**{**PRE.__dict__, "tokenizer": None})
    images = _images()
    assert torch.equal(loaded.features(images), module.backbone.features(images))


class _TrainableMAE(TinyMAE):
    def __init__(self, vision: dict | None = None):
        super().__init__(vision)
        self.save_hyperparameters()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.decoder(self.backbone.features(batch["image"])).pow(2).mean()


class _RecordedPreprocessData(ZooDataModule):
    """Preprocessing that its (absent) hyper-parameters cannot reveal."""

    @property
    def preprocess(self) -> PreprocessSpec:
        return dataclasses.replace(PRE, tokenizer=None)

    def train_dataloader(self):
        images = _images(8)
        return self._loader([{"image": x, "label": 0} for x in images], train=True)


def test_export_writes_the_preprocessing_recorded_in_the_checkpoint(tmp_path) -> None:
    """``zoo fit`` checkpoints carry the datamodule's PreprocessSpec; export writes it as is
    (rebuilding it from the datamodule's arguments would give 16 px, OpenAI mean / std,
    bicubic and no resize here)."""
    import lightning as L

    torch.manual_seed(0)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TrainableMAE(VISION), datamodule=_RecordedPreprocessData(batch_size=4))
    (ckpt,) = tmp_path.glob("**/*.ckpt")
    recorded = torch.load(ckpt, map_location="cpu", weights_only=False)["preprocess"]
    assert recorded == dataclasses.replace(PRE, tokenizer=None).to_config()
    result = export_model(
        ckpt,
        "tiny-mae-fit",
        tmp_path / "out",
        trust_pickle=True,
        class_path=f"{__name__}._TrainableMAE",
    )
    loaded = load_model_folder(result.model_dir)
    assert loaded.preprocess == dataclasses.replace(PRE, tokenizer=None)


def test_module_architecture_fallback() -> None:
    class WithEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _dual()

    module = WithEncoder()
    assert module_architecture(module) == ("dual_encoder", module.encoder)
    assert module_architecture(nn.Linear(2, 2)) is None


# --------------------------------------------------------------------------- schema


@pytest.fixture(scope="module")
def dual_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dual") / "m"
    folder.mkdir()
    src = ExportSource(model=_dual(), architecture="dual_encoder", preprocess=PRE)
    write_model_folder(src, folder, name="schema-test")
    return folder


def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(colour="red"), r"colour: Extra inputs are not permitted"),
        (
            lambda c: c["preprocess"].update(crop="16"),
            r"preprocess\.crop: Input should be a valid integer",
        ),
        (
            lambda c: c["preprocess"].update(mean=[0.5, 0.5]),
            r"preprocess\.mean: List should have at least 3",
        ),
        (
            lambda c: c["preprocess"].update(interpolation="box"),
            r"preprocess\.interpolation: Input should be",
        ),
        (
            lambda c: c["tokenizer"].update(vocab=1),
            r"tokenizer\.vocab: Extra inputs are not permitted",
        ),
        (lambda c: c["weights"].update(dtype="int8"), r"weights\.dtype: Input should be"),
        (lambda c: c["architecture"].update(spec_v2={}), r"architecture\.spec_v2: Extra inputs"),
        (
            lambda c: c["architecture"].update(type="mystery"),
            r"'mystery' is not a known architecture \(known: clip_head, dual_encoder, lora_adapter, "
            r"vision_encoder, vlm\)",
        ),
        (
            lambda c: c["architecture"]["spec"]["vision"].update(checkpoint="/x.pt"),
            r"vision\.checkpoint",
        ),
        (lambda c: c.update(format_version=3), r"format_version 3 is not supported"),
        (lambda c: c.update(tokenizer=None), r"'dual_encoder' needs a tokenizer entry"),
    ],
)
def test_config_schema_errors_name_the_key(dual_folder, tmp_path, edit, message) -> None:
    folder = _edited(dual_folder, tmp_path, edit)
    with pytest.raises(UnsafeConfigError, match=message):
        load_model_folder(folder)


def test_unknown_spec_key_is_refused_at_build(dual_folder, tmp_path) -> None:
    folder = _edited(dual_folder, tmp_path, lambda c: c["architecture"]["spec"].update(width=3))
    with pytest.raises(ValueError, match="unknown DualEncoderSpec keys: width"):
        load_model_folder(folder)
