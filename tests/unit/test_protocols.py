"""The evaluation callbacks ask the module through zoo.protocols, never its encoder.

Driven with modules that are not dual encoders: a prompt-learner-like module whose
``class_weights`` is a hand-made classifier (zero-shot accuracy known by construction), a
vision-only timm ViT (``features`` only: probe and kNN equal the functions on its features,
zero-shot and retrieval skip naming the missing method) and a module with neither (every
callback skips with a message). For CLIP, ``class_weights`` equals the template ensemble
computed by hand from ``encode_text``.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_modules.clip import CLIP
from tests.papers._tiny import CONTEXT, VOCAB, tiny_encoder_spec
from zoo.eval import (
    KNNEval,
    LinearProbeEval,
    RetrievalEval,
    ZeroShotEval,
    knn_accuracy,
    linear_probe,
)
from zoo.preprocess import PreprocessSpec
from zoo.protocols import (
    ImageFeatures,
    ProtocolUnavailable,
    TextFeatures,
    ZeroShotClassifier,
    data_tokenizer,
    missing_members,
)

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a {} picture", "{}"]


class _Colours(Dataset):
    """16 px images of class y: channel y at 1.0 plus a little noise. With ``wrong_every``,
    every such sample is drawn as class y+1 (channel y+1 at 1.0, channel y at 0.5), so a
    classifier that picks the brightest channel errs on exactly those, and ranks y second."""

    def __init__(self, n: int, seed: int, wrong_every: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.label = torch.arange(n) % 3
        self.image = 0.02 * torch.randn(n, 3, 16, 16, generator=g)
        for i, y in enumerate(self.label.tolist()):
            if wrong_every and i % wrong_every == wrong_every - 1:
                self.image[i, (y + 1) % 3] += 1.0
                self.image[i, y] += 0.5
            else:
                self.image[i, y] += 1.0
        # caption "<bos> y <eot>" in the tiny CLIP vocabulary, for modules whose
        # validation_step reads text
        self.text = torch.zeros(n, CONTEXT, dtype=torch.long)
        self.text[:, :3] = torch.stack(
            [torch.full((n,), VOCAB - 2), 1 + self.label, torch.full((n,), VOCAB - 1)], dim=1
        )

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.image[i], "label": self.label[i], "text": self.text[i]}


class _Data(L.LightningDataModule):
    """Class names, templates and labelled eval splits; no tokenizer."""

    classnames = CLASSES
    templates = TEMPLATES

    def __init__(self) -> None:
        super().__init__()
        # 25 test images, every 5th drawn as the next class: 20 / 25 brightest-channel hits
        self.sets = {"train": _Colours(45, seed=1), "test": _Colours(25, seed=2, wrong_every=5)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], batch_size=15)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=25)

    def eval_dataloader(self, split: str) -> DataLoader:
        return DataLoader(self.sets[split], batch_size=10)  # 10 does not divide 45 / 25


class _NoEvalData(L.LightningDataModule):
    """A datamodule that cannot serve evaluation splits."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Colours(5, seed=3), batch_size=5)


class _Module(L.LightningModule):
    """A tiny trainable module; subclasses add (or not) the evaluation protocols."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return (self.scale * batch["image"]).square().mean()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _PromptLearner(_Module):
    """Answers zero-shot with its own 'learned' class prompts, without any text encoder:
    features are per-channel means, class c's weight is 2·e_c (the brightest channel wins)."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts = nn.Parameter(2.0 * torch.eye(3))
        self.asked: list[tuple[list[str], list[str]]] = []

    def features(self, images: Tensor, kind: str = "embed") -> Tensor:
        return images.mean(dim=(2, 3))

    def class_weights(self, classnames, templates, *, tokenizer=None, batch_size=256) -> Tensor:
        self.asked.append((list(classnames), list(templates)))
        return self.prompts


class _VisionOnly(_Module):
    """A timm ViT with dropout (so eval mode matters) answering ``features`` only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vit = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=4,
            embed_dim=32,
            depth=1,
            num_heads=2,
            num_classes=0,
            drop_rate=0.3,
            pos_drop_rate=0.3,
        )

    def features(self, images: Tensor, kind: str = "embed") -> Tensor:
        return self.vit(images)  # one feature space: the same for both kinds


def _trainer(callbacks: list, tmp_path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=list(callbacks),  # Lightning appends its own callbacks to the list
        max_steps=1,
        limit_val_batches=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def _validate(module, datamodule, callbacks, tmp_path) -> list[str]:
    """``trainer.validate`` with the callbacks; the warnings raised, as strings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(callbacks, tmp_path).validate(module, datamodule=datamodule, verbose=False)
    return [str(w.message) for w in caught]


def _skipped(messages: list[str], who: str) -> list[str]:
    return [m for m in messages if m.startswith(f"{who} skipped:")]


def test_zeroshot_uses_the_modules_class_weights_not_an_encoder(tmp_path, capsys) -> None:
    module, data = _PromptLearner(), _Data()
    zeroshot, retrieval = ZeroShotEval(top_k=(1, 2), log_images=False), RetrievalEval()
    messages = _validate(module, data, [zeroshot, retrieval], tmp_path)
    # by construction 20 of the 25 test images are brightest in their own channel, and the
    # 5 others rank their own class second: top-1 = 20/25, top-2 = 25/25
    assert zeroshot.results == {
        "eval/zeroshot_top1": pytest.approx(80.0, abs=1e-4),
        "eval/zeroshot_top2": pytest.approx(100.0, abs=1e-4),
    }
    assert module.asked == [(CLASSES, TEMPLATES)]  # the datamodule's, asked once
    assert "zero-shot top-1: 80.00% (top-2 100.00%) on 25 test images" in capsys.readouterr().out
    (why,) = _skipped(messages, "RetrievalEval")
    assert "_PromptLearner" in why and "`text_features(tokens)`" in why
    assert retrieval.results == {}


def test_vision_only_module_probes_its_features_and_skips_text_protocols(tmp_path) -> None:
    module, data = _VisionOnly().train(), _Data()
    callbacks = [
        LinearProbeEval(Cs=(0.1, 1.0, 10.0)),
        KNNEval(k=5, temperature=0.1),
        ZeroShotEval(),
        RetrievalEval(),
    ]
    messages = _validate(module, data, callbacks, tmp_path)
    assert module.training and module.vit.pos_drop.training  # train/eval flags restored

    vit = module.vit.eval()
    with torch.no_grad():
        x, y = {}, {}
        for split in ("train", "test"):
            batches = list(data.eval_dataloader(split))
            x[split] = torch.cat([vit(b["image"]) for b in batches])
            y[split] = torch.cat([b["label"] for b in batches])
    probe = linear_probe(x["train"], y["train"], x["test"], y["test"], Cs=(0.1, 1.0, 10.0))
    knn = knn_accuracy(x["train"], y["train"], x["test"], y["test"], 3, k=5, temperature=0.1)
    assert callbacks[0].results == {
        "eval/linear_probe_top1": probe["top1"],
        "eval/linear_probe_C": probe["C"],
    }
    assert callbacks[1].results == {f"eval/knn_{k}": v for k, v in knn.items()}

    (zs,) = _skipped(messages, "ZeroShotEval")
    assert "_VisionOnly" in zs and "`class_weights(classnames, templates)`" in zs
    (rt,) = _skipped(messages, "RetrievalEval")
    assert "`text_features(tokens)`" in rt and "features(images)" not in rt
    assert callbacks[2].results == {} and callbacks[3].results == {}


class _TrunkOnly(_PromptLearner):
    """Has only a pre-projection feature: asked for ``"embed"`` it says it cannot answer."""

    def features(self, images: Tensor, kind: str = "embed") -> Tensor:
        if kind != "trunk":
            raise ProtocolUnavailable(f"_TrunkOnly has no {kind!r} features")
        return images.mean(dim=(2, 3))


def test_protocol_method_that_cannot_answer_is_a_skip_message(tmp_path) -> None:
    embed, trunk = KNNEval(k=3, feature="embed"), KNNEval(k=3, feature="trunk")
    messages = _validate(_TrunkOnly(), _Data(), [embed, trunk], tmp_path)
    assert _skipped(messages, "KNNEval") == ["KNNEval skipped: _TrunkOnly has no 'embed' features"]
    data = _Data()
    x = {s: data.sets[s].image.mean(dim=(2, 3)) for s in ("train", "test")}
    y = {s: data.sets[s].label for s in ("train", "test")}
    knn = knn_accuracy(x["train"], y["train"], x["test"], y["test"], 3, k=3)
    assert embed.results == {}
    assert trunk.results == pytest.approx({f"eval/knn_{k}": v for k, v in knn.items()})


def test_module_without_protocols_is_skipped_by_every_callback(tmp_path) -> None:
    callbacks = [ZeroShotEval(), LinearProbeEval(), KNNEval(), RetrievalEval()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(callbacks, tmp_path).fit(_Module(), datamodule=_Data())
    messages = [str(w.message) for w in caught]
    for cb in callbacks:
        name = type(cb).__name__
        (ahead,) = [m for m in messages if m.startswith(f"{name} will be skipped:")]
        (at_end,) = _skipped(messages, name)
        for why in (ahead, at_end):
            assert "the module (_Module) does not implement `features(images)`" in why
        assert cb.results == {}
    (zs,) = _skipped(messages, "ZeroShotEval")
    assert "`class_weights(classnames, templates)`" in zs  # every missing method named


def test_datamodule_without_eval_splits_is_a_skip_message(tmp_path) -> None:
    callback = LinearProbeEval()
    messages = _validate(_PromptLearner(), _NoEvalData(), [callback], tmp_path)
    (why,) = _skipped(messages, "LinearProbeEval")
    assert "the datamodule (_NoEvalData) does not implement `eval_dataloader(split)`" in why
    assert callback.results == {}


def test_dual_encoder_without_a_tokenizer_skips_zero_shot(tmp_path) -> None:
    callback = ZeroShotEval()
    messages = _validate(CLIP(encoder=tiny_encoder_spec()), _Data(), [callback], tmp_path)
    (why,) = _skipped(messages, "ZeroShotEval")
    assert "no tokenizer" in why and callback.results == {}


class _WordTokenizer:
    """BOS, one id per word (1 + its index in ``words``), EOT (the largest id), 0 padding."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def __call__(self, texts: list[str]) -> Tensor:
        out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [VOCAB - 2, *(1 + self.words.index(w) for w in text.split()), VOCAB - 1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def test_clip_class_weights_are_the_template_ensemble_of_encode_text() -> None:
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec()).train()
    classes, templates = ["cat", "dog", "bird"], ["a {}", "a photo of a {}"]
    tokenizer = _WordTokenizer(["a", "photo", "of", *classes])
    got = model.class_weights(classes, templates, tokenizer=tokenizer, batch_size=4)
    assert model.training and model.encoder.visual.training  # eval only while encoding

    model.eval()
    with torch.no_grad():  # CLIP §3.1.4: normalise each prompt, average, renormalise
        rows = []
        for c in classes:
            z = torch.cat([model.encoder.encode_text(tokenizer([t.format(c)])) for t in templates])
            rows.append(F.normalize(F.normalize(z, dim=-1).mean(0), dim=0))
    torch.testing.assert_close(got, torch.stack(rows))

    images = torch.randn(4, 3, 16, 16)
    tokens = tokenizer(["a photo of a dog", "a cat"])
    with torch.no_grad():
        assert torch.equal(model.features(images, "embed"), model.encoder.encode_image(images))
        assert torch.equal(model.features(images, "trunk"), model.encoder.image_trunk(images))
        assert torch.equal(model.text_features(tokens), model.encoder.encode_text(tokens))


def test_protocol_membership_and_missing_member_names() -> None:
    clip, vision = CLIP(encoder=tiny_encoder_spec()), _VisionOnly()
    for protocol in (ImageFeatures, ZeroShotClassifier, TextFeatures):
        assert isinstance(clip, protocol) and missing_members(clip, protocol) == []
    assert isinstance(vision, ImageFeatures) and not isinstance(vision, ZeroShotClassifier)
    assert missing_members(vision, TextFeatures) == ["text_features(tokens)"]


def test_tokenizer_comes_from_the_datamodule_or_its_preprocess_spec() -> None:
    import open_clip

    own = _WordTokenizer(["a"])
    assert data_tokenizer(SimpleNamespace(tokenizer=own, preprocess=PreprocessSpec())) is own
    spec = PreprocessSpec(image_size=16, context_length=8)
    tokens = data_tokenizer(SimpleNamespace(preprocess=spec))(["a photo of a cat"])
    assert torch.equal(tokens, open_clip.tokenize(["a photo of a cat"], context_length=8))
    assert data_tokenizer(SimpleNamespace(preprocess=PreprocessSpec(tokenizer=None))) is None
    assert data_tokenizer(SimpleNamespace()) is None
