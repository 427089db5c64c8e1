"""ViSFT faithfulness: stage-1 freezing, stage-2 LoRA (function preservation, merge, the
trainable set), one task per step, the heads' loss weights, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from lightning_modules.visft import VISFT_KEY, ViSFT
from zoo.heads.captioner import CaptionVocab
from zoo.lora import load_adapter
from zoo.losses.detr import detr_weight_dict
from zoo.losses.mask2former import mask2former_weight_dict
from zoo.optim import build_optimizer

TASKS = ["detection", "segmentation", "caption"]
CLASSES = {"detection": 3, "segmentation": 3}
VIT = dict(
    model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
)
CAPTIONS = ["a red circle", "a blue square left of a red circle", "two small cubes"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def vit_file(tmp_path: Path) -> Path:
    """Pretrained-backbone stand-in: one random tiny ViT saved to disk, read by both stages."""
    vit = timm.create_model(
        VIT["model_name"], num_classes=0, **{k: v for k, v in VIT.items() if k != "model_name"}
    )
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), str(path))
    return path


def _vocab() -> CaptionVocab:
    return CaptionVocab.from_captions(CAPTIONS, min_word_freq=0)


def _module(vit_file: Path, stage: int = 1, **kwargs) -> ViSFT:
    module = ViSFT(
        backbone={**VIT, "checkpoint": str(vit_file)}, stage=stage, tasks=TASKS, **kwargs
    )
    module.configure_heads(TASKS, CLASSES, _vocab())
    return module


def _batches(seed: int = 0) -> dict[str, dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 32, 32, generator=g)
    masks = torch.zeros(1, 32, 32)
    masks[0, 8:16, 4:20] = 1
    tokens, lengths = _vocab().encode_batch(CAPTIONS[:2])
    no_box = torch.zeros(0, 4)
    none = torch.zeros(0, dtype=torch.long)
    return {
        "detection": {
            "task": "detection",
            "image": image,
            "boxes": [torch.tensor([[0.4, 0.5, 0.3, 0.2]]), no_box],
            "labels": [torch.tensor([1]), none],
        },
        "segmentation": {
            "task": "segmentation",
            "image": image,
            "masks": [masks, torch.zeros(0, 32, 32)],
            "labels": [torch.tensor([2]), none],
        },
        "caption": {"task": "caption", "image": image, "tokens": tokens, "lengths": lengths},
    }


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (bit for bit)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _step(module: ViSFT, batch: dict) -> torch.optim.Optimizer:
    optimizer = build_optimizer(module.optimizer_target(), module.optim)
    module.train()
    loss = module.task_loss(batch)["loss"]
    loss.backward()
    optimizer.step()
    return optimizer


def _two_step_trainer(tmp_path: Path):
    """A quiet 2-step CPU Trainer (no logger, checkpointing or progress bar)."""
    import lightning as L

    return L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def _stage1_checkpoint(module: ViSFT, path: Path) -> Path:
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------------------- stage 1
def test_stage1_backbone_is_bit_identical_and_outside_the_optimiser(vit_file):
    module = _module(vit_file)
    backbone = _state(module.vit)
    heads = _state(module.heads)
    optimizer = _step(module, _batches()["detection"])
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in module.vit.parameters())
    assert optimised == {id(p) for p in module.heads.parameters()}
    assert _same(backbone, _state(module.vit)) == []
    changed = _same(heads, _state(module.heads))
    assert changed and all(k.startswith("detection.") for k in changed)
    assert all(p.grad is None for p in module.vit.parameters())


def test_each_step_backpropagates_exactly_one_tasks_loss(vit_file):
    module = _module(vit_file)
    calls: list[str] = []
    for task, head in module.heads.items():
        head.register_forward_hook(lambda *_, t=task: calls.append(t))
    for task, batch in _batches().items():
        calls.clear()
        module.zero_grad()
        module.task_loss(batch)["loss"].backward()
        assert calls == [task]
        with_grad = {
            n.split(".")[0] for n, p in module.heads.named_parameters() if p.grad is not None
        }
        assert with_grad == {task}


def test_loss_weights_are_the_papers(vit_file):
    module = _module(vit_file)
    detr_layers = module.heads["detection"].spec.num_decoder_layers
    assert module.criteria["detection"].weight_dict == detr_weight_dict(detr_layers)
    assert detr_weight_dict(2) == {
        "loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0,
        "loss_ce_0": 1.0, "loss_bbox_0": 5.0, "loss_giou_0": 2.0,
    }  # fmt: skip
    assert module.criteria["detection"].eos_coef == 0.1
    m2f_layers = module.heads["segmentation"].spec.decoder_layers
    assert module.criteria["segmentation"].weight_dict == mask2former_weight_dict(m2f_layers)
    assert mask2former_weight_dict(9)["loss_ce"] == 2.0 and len(mask2former_weight_dict(9)) == 30
    assert module.criteria["segmentation"].eos_coef == 0.1
    # caption: CE + 1.0 · doubly stochastic term, by hand from the two terms
    terms = module.task_loss(_batches()["caption"])
    assert module.heads["caption"].spec.alpha_c == 1.0
    assert torch.equal(terms["loss"], terms["ce"] + 1.0 * terms["attention"])


# ------------------------------------------------------------------------------- stage 2
def _stage2(vit_file: Path, tmp_path: Path, **kwargs) -> tuple[ViSFT, ViSFT]:
    stage1 = _module(vit_file)
    _step(stage1, _batches()["detection"])  # heads that are not at their init
    path = _stage1_checkpoint(stage1, tmp_path / "stage1.ckpt")
    stage2 = _module(vit_file, stage=2, heads_from=str(path), **kwargs)
    return stage1, stage2


def test_stage2_lora_defaults_are_visfts(vit_file, tmp_path):
    _, stage2 = _stage2(vit_file, tmp_path)
    qkv = stage2.vit.blocks[0].attn.qkv
    assert stage2.lora_spec.r == 64 and stage2.lora_spec.alpha == 1.0 and stage2.lora_spec.qv_only
    assert qkv.scaling["default"] == pytest.approx(1 / 64)
    assert tuple(qkv.lora_A["default"].weight.shape) == (2 * 64, 32)  # loralib's q/v pair
    assert torch.count_nonzero(qkv.lora_B["default"].weight) == 0
    assert stage2.optim.lr == 1e-5 and stage2.optim.weight_decay == 1e-4


def test_stage2_starts_exactly_at_the_stage1_model(vit_file, tmp_path):
    stage1, stage2 = _stage2(vit_file, tmp_path)
    stage1.eval()
    stage2.eval()
    # torch's MultiheadAttention takes its fused fast path when no parameter requires grad
    # (stage 2's frozen heads): the same function, rounded differently (~6e-7), so the
    # stage-1 heads are compared frozen too
    stage1.heads.requires_grad_(False)
    image = _batches()["detection"]["image"]
    with torch.no_grad():
        assert torch.equal(stage2.feature_map(image), stage1.feature_map(image))
        out1 = stage1.heads["detection"](stage1.feature_map(image))
        out2 = stage2.heads["detection"](stage2.feature_map(image))
    assert torch.equal(out1["pred_logits"], out2["pred_logits"])
    assert _same(_state(stage1.heads), _state(stage2.heads)) == []


def test_merged_weights_equal_the_lora_forward(vit_file, tmp_path):
    _, stage2 = _stage2(vit_file, tmp_path)
    for name, p in stage2.backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a real delta (B = 0 would merge trivially)
    stage2.eval()
    image = _batches()["detection"]["image"]
    plain = timm.create_model(
        VIT["model_name"], num_classes=0, **{k: v for k, v in VIT.items() if k != "model_name"}
    )
    plain.load_state_dict(stage2.merged_backbone_state(), strict=True)
    plain.eval()
    with torch.no_grad():
        lora_out = stage2.vit.forward_features(image)
        merged_out = plain.forward_features(image)
        base = timm.create_model(
            VIT["model_name"], num_classes=0, **{k: v for k, v in VIT.items() if k != "model_name"}
        )
        base.load_state_dict(dict(__import__("safetensors.torch").torch.load_file(str(vit_file))))
        base.eval()
        base_out = base.forward_features(image)
    assert torch.allclose(merged_out, lora_out, atol=1e-5)
    assert not torch.allclose(base_out, lora_out, atol=1e-3)  # the delta is real


def test_stage2_trains_only_the_qv_lora_and_nothing_else_moves(vit_file, tmp_path):
    _, stage2 = _stage2(vit_file, tmp_path)
    assert all(p.requires_grad for p in stage2.vit.patch_embed.parameters())  # official
    before = _state(stage2)
    optimizer = _step(stage2, _batches()["caption"])
    lora = {n for n, _ in stage2.backbone.named_parameters() if "lora_" in n}
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = dict(stage2.backbone.named_parameters())
    assert optimised == {id(named[n]) for n in lora}
    assert len(optimizer.param_groups) == 1
    changed = _same(before, _state(stage2))
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)
    # the k third of every fused qkv delta is exactly zero, q and v are not
    for block in stage2.vit.blocks:
        delta = block.attn.qkv.get_delta_weight("default")
        d = delta.shape[0] // 3
        assert torch.count_nonzero(delta[d : 2 * d]) == 0
        assert torch.count_nonzero(delta[:d]) > 0 and torch.count_nonzero(delta[2 * d :]) > 0
    # patch_embed got a gradient (requires_grad) but never an update
    assert stage2.vit.patch_embed.proj.weight.grad is not None
    assert not any(k.startswith("backbone.") and "patch_embed" in k for k in changed)


def test_full_finetuning_ablation_trains_the_backbone_but_not_patch_embed(vit_file, tmp_path):
    _, full = _stage2(vit_file, tmp_path, finetune="full")
    before = _state(full)
    _step(full, _batches()["segmentation"])
    changed = _same(before, _state(full))
    assert any(k.startswith("backbone.blocks.") for k in changed)
    assert not any("patch_embed" in k or k.startswith("heads.") for k in changed)


def test_random_heads_ablation_and_bad_stage2_input(vit_file, tmp_path):
    random = _module(vit_file, stage=2, random_heads=True)
    assert not any(p.requires_grad for p in random.heads.parameters())
    with pytest.raises(ValueError, match="heads_from"):
        ViSFT(backbone=VIT, stage=2)
    with pytest.raises(ValueError, match="stage-2 options"):
        ViSFT(backbone=VIT, stage=1, random_heads=True)
    with pytest.raises(FileNotFoundError, match="stage-1 checkpoint for detection"):
        _module(vit_file, stage=2, heads_from=str(tmp_path / "nope.ckpt"))
    # heads trained on another backbone are refused
    stage1 = _module(vit_file)
    path = _stage1_checkpoint(stage1, tmp_path / "s1.ckpt")
    other = tmp_path / "other.safetensors"
    vit = timm.create_model(
        VIT["model_name"], num_classes=0, **{k: v for k, v in VIT.items() if k != "model_name"}
    )
    save_file(vit.state_dict(), str(other))
    with pytest.raises(ValueError, match="another backbone"):
        _module(other, stage=2, heads_from=str(path))
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint[VISFT_KEY]["num_classes"] == CLASSES


def test_lora_reaches_eva_attention_with_qv_biases(tmp_path):
    """timm's EVA attention applies its q/v biases with F.linear on qkv.weight, bypassing a
    wrapped qkv; the module routes it through the Linear so LoRA takes effect."""
    eva = dict(
        model_name="eva02_tiny_patch14_224",
        img_size=28,
        patch_size=7,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )
    module = ViSFT(backbone=eva, stage=2, random_heads=True, tasks=["caption"])
    module.configure_heads(["caption"], {}, _vocab())
    image = torch.randn(2, 3, 28, 28)
    module.eval()
    with torch.no_grad():
        start = module.vit.forward_features(image)
        for name, p in module.backbone.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        moved = module.vit.forward_features(image)
    assert module.vit.blocks[0].attn.q_bias is not None
    assert not torch.allclose(start, moved, atol=1e-3)

    # without the routing the same LoRA would be silently ignored
    from zoo.lora import apply_lora
    from zoo.visft.backbone import build_backbone

    plain = build_backbone(module.backbone_spec)
    plain.eval()
    with torch.no_grad():
        before = plain.forward_features(image)
        wrapped = apply_lora(plain, r=4, alpha=1.0, target_modules=["qkv"], qv_only=True)
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        assert torch.equal(wrapped.base_model.model.forward_features(image), before)


# ------------------------------------------------------------------------------- export
def test_export_merges_lora_and_the_adapter_round_trips(vit_file, tmp_path):
    _, stage2 = _stage2(vit_file, tmp_path)
    for name, p in stage2.backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    stage2.eval()
    kind, encoder = stage2.export_model()
    assert kind == "vision_encoder"
    encoder.eval()
    image = _batches()["detection"]["image"]
    with torch.no_grad():
        assert torch.allclose(encoder.features(image), stage2.features(image), atol=1e-5)
    stage2.save_adapter(tmp_path / "adapter")
    fresh = _module(vit_file, stage=2, heads_from=str(tmp_path / "stage1.ckpt"))
    load_adapter(fresh.backbone, tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.features(image), stage2.features(image))


def test_zoo_export_of_a_stage2_checkpoint_loads_as_the_merged_backbone(tmp_path, monkeypatch):
    """`zoo export` of a real stage-2 checkpoint → `zoo.load`: a ``vision_encoder`` package
    whose features equal the fitted module's (LoRA merged), with the data's preprocessing."""

    import zoo
    from datamodules.visft import ViSFTDataModule
    from zoo.cli import main

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    dm = ViSFTDataModule(
        source="clevr",
        root=str(tmp_path / "scenes"),
        clevr={"splits": {"train": 8, "val": 4}, "image_size": 32, "seed": 0},
        tasks=["caption"],
        image_size=32,
        batch_size=4,
        val_split=None,
        num_workers=0,
    )
    module = ViSFT(backbone=VIT, stage=2, tasks=["caption"], random_heads=True, optim={"lr": 1e-2})
    trainer = _two_step_trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    assert any(
        torch.count_nonzero(p) for n, p in module.backbone.named_parameters() if "lora_B" in n
    )  # the LoRA moved, so the merge is not trivial
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    out = tmp_path / "package"
    argv = ["export", str(tmp_path / "stage2.ckpt"), "--name", "visft-test", "--out", str(out)]
    argv += ["--trust-pickle", "--class-path", "lightning_modules.visft.ViSFT"]
    assert main(argv) == 0
    loaded = zoo.load(f"local-dir:{out}")
    assert loaded.config["architecture"]["type"] == "vision_encoder"
    image = torch.randn(2, 3, 32, 32)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.features(image), module.features(image), atol=1e-5, rtol=0
        )


# ------------------------------------------------------------------------------- base model
def test_base_model_from_a_clip_checkpoint_gives_backbone_and_retrieval(tmp_path, monkeypatch):
    """``model.base``: a CLIP fitted on the generated scenes' captions (``source: scenes``,
    read as COCO captions) becomes the backbone, bit for bit; its frozen text side answers
    ``text_features`` and ``features(kind="embed")`` as the dual encoder does; the stage-1
    heads record the base's weights and stage 2 on the same base accepts them."""

    from datamodules.clip import CLIPDataModule
    from lightning_modules.clip import CLIP
    from zoo.backbones import DualEncoder
    from zoo.fewshot.clip_source import load_clip
    from zoo.freeze import FrozenTower

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    data = CLIPDataModule(
        source="scenes",
        scenes={"splits": {"train": 16, "val": 8}, "image_size": 32, "seed": 1},
        image_size=32,
        train_transform="eval",
        context_length=24,
        batch_size=8,
    )
    encoder = {
        "vision": VIT,
        "text": {"vocab_size": 49408, "width": 32, "layers": 1, "heads": 2, "context_length": 24},
        "embed_dim": 16,
    }
    clip = CLIP(encoder=encoder, optim={"lr": 1e-3})
    trainer = _two_step_trainer(tmp_path)
    trainer.fit(clip, datamodule=data)
    ckpt = tmp_path / "clip.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)  # `zoo fit` records the module's class
    saved["hyper_parameters"]["_class_path"] = "lightning_modules.clip.CLIP"
    torch.save(saved, ckpt)

    base = {"path": str(ckpt), "trust_pickle": True}
    with pytest.raises(Exception, match="pickle"):  # a Lightning checkpoint needs trust
        ViSFT(base={"path": str(ckpt)})
    with pytest.raises(ValueError, match="not both"):
        ViSFT(base=base, backbone=VIT)
    module = ViSFT(base=base, stage=1, tasks=TASKS)
    module.configure_heads(TASKS, CLASSES, _vocab())
    reference = load_clip(base).encoder
    assert isinstance(reference, DualEncoder)
    assert not _same(_state(module.vit), _state(reference.visual))
    assert not _same(_state(module.vit), _state(clip.encoder.visual))  # the fitted weights
    assert isinstance(module.text_side, FrozenTower)
    assert not any(p.requires_grad for p in module.text_side.parameters())
    assert all("text_side" not in n for n, _ in module.trainable_parameters())
    images = torch.randn(3, 3, 32, 32)
    tokens = data.tokenizer(["a red circle.", "two squares.", "there is a small cube."])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.features(images), reference.encode_image(images))
        torch.testing.assert_close(module.features(images, "trunk"), reference.image_trunk(images))
        torch.testing.assert_close(module.text_features(tokens), reference.encode_text(tokens))
    assert module.backbone_spec.patch_size == VIT["patch_size"]

    # stage 2 on the same base accepts the stage-1 heads; it trains only LoRA
    heads = _stage1_checkpoint(module, tmp_path / "stage1.ckpt")
    stage2 = ViSFT(base=base, stage=2, tasks=TASKS, heads_from=str(heads))
    stage2.configure_heads(TASKS, CLASSES, _vocab())
    assert stage2.base_sha256 == module.base_sha256
    names = [n for n, _ in stage2.trainable_parameters()]
    assert names and all("lora_" in n for n in names)
    # a module without a base has no text side
    plain = ViSFT(backbone=VIT, stage=1, tasks=TASKS)
    with pytest.raises(AttributeError, match="base"):
        plain.text_features(tokens)
