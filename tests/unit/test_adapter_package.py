"""LoRA adapter packages (``zoo export --adapter-only``, ``zoo.load(ADAPTER, base=BASE)``):
the package holds the LoRA matrices alone, merges into the right base exactly as the merged
export does, and refuses any other base."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import zoo
from lightning_modules.visft import ViSFT
from zoo.cli import main
from zoo.hub.adapter import BaseWeightsMismatchError
from zoo.hub.export import export_model
from zoo.preprocess import PreprocessSpec
from zoo.visft.backbone import state_sha256

VIT = dict(
    model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
)
LORA = {"r": 4, "alpha": 2.0, "qv_only": True}
TASKS, CLASSES = ["detection"], {"detection": 3}
CLASS_PATH = "lightning_modules.visft.ViSFT"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _module(vit_file: Path, stage: int, **kwargs) -> ViSFT:
    module = ViSFT(
        backbone={**VIT, "checkpoint": str(vit_file)}, stage=stage, tasks=TASKS, lora=LORA, **kwargs
    )
    module.configure_heads(TASKS, CLASSES, None)
    return module.eval()


def _checkpoint(module: ViSFT, path: Path) -> Path:
    """What `zoo fit` saves, less the trainer state: weights, init args, preprocessing."""
    preprocess = PreprocessSpec(image_size=32, tokenizer=None).to_config()
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {**dict(module.hparams), "_class_path": CLASS_PATH},
        "preprocess": preprocess,
        "epoch": 0,
        "global_step": 1,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def _export(ckpt: Path, name: str, out: Path, **kwargs) -> Path:
    export_model(ckpt, name, out, trust_pickle=True, **kwargs)
    return out


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict:
    """A stage-1 (base) and a stage-2 ViSFT on the same pretrained ViT, LoRA B non-zero; the
    base, merged and adapter-only packages of their checkpoints."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("adapter")
    vit = timm.create_model(
        VIT["model_name"], num_classes=0, **{k: v for k, v in VIT.items() if k != "model_name"}
    )
    vit_file = tmp / "vit.safetensors"
    save_file(vit.state_dict(), str(vit_file))
    stage1 = _module(vit_file, stage=1)
    stage1_ckpt = _checkpoint(stage1, tmp / "stage1.ckpt")
    stage2 = _module(vit_file, stage=2, heads_from=str(stage1_ckpt))
    with torch.no_grad():
        for name, p in stage2.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a real delta: B = 0 would make any base "fit"
    stage2_ckpt = _checkpoint(stage2, tmp / "stage2.ckpt")
    base = _export(stage1_ckpt, "visft-base", tmp / "base", class_path=CLASS_PATH)
    merged = _export(stage2_ckpt, "visft-merged", tmp / "merged")
    argv = ["export", str(stage2_ckpt), "--name", "visft-adapter", "--out", str(tmp / "adapter")]
    assert main([*argv, "--trust-pickle", "--adapter-only"]) == 0  # through the CLI
    return {
        "tmp": tmp,
        "vit_file": vit_file,
        "stage1_ckpt": stage1_ckpt,
        "stage2": stage2,
        "base": base,
        "merged": merged,
        "adapter": tmp / "adapter",
    }


def _weights(package: Path) -> Path:
    return next(package.glob("zoo_model_*/model.safetensors"))


def test_adapter_merged_into_its_base_equals_the_merged_export_and_the_module(packages):
    adapter = zoo.load(f"local-dir:{packages['adapter']}", base=f"local-dir:{packages['base']}")
    merged = zoo.load(f"local-dir:{packages['merged']}")
    base = zoo.load(f"local-dir:{packages['base']}")
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, reference = adapter.features(image), merged.features(image)
        module = packages["stage2"].features(image)
        plain = base.features(image)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, module, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-2  # the adapter changed the base's features
    # the base also comes as a folder (Path or plain str) or as an already loaded model
    for given in (packages["base"], str(packages["base"]), base):
        again = zoo.load(f"local-dir:{packages['adapter']}", base=given)
        with torch.no_grad():
            assert torch.equal(again.features(image), ours)
    assert adapter.config["architecture"]["type"] == "lora_adapter"
    assert adapter.tokenizer is None and adapter.preprocess.image_size == 32


def test_adapter_package_holds_only_the_lora_matrices_and_records_its_base(packages):
    path = _weights(packages["adapter"])
    shapes = {k: tuple(v.shape) for k, v in load_file(str(path)).items()}
    prefix = "backbone.base_model.model.blocks"
    assert shapes == {  # peft's key names; loralib's q/v pair: A (2r, d), B (2d, r)
        **{f"{prefix}.{i}.attn.qkv.lora_A.weight": (8, 32) for i in (0, 1)},
        **{f"{prefix}.{i}.attn.qkv.lora_B.weight": (64, 4) for i in (0, 1)},
    }
    assert path.stat().st_size < _weights(packages["merged"]).stat().st_size / 10
    config = zoo.hub.read_config(path.parent)
    arch = config["architecture"]
    merged_arch = zoo.hub.read_config(_weights(packages["merged"]).parent)["architecture"]
    assert arch["base"] == {k: v for k, v in merged_arch.items() if k != "num_parameters"}
    assert arch["base_module"] == "visual"
    assert arch["lora"] == {
        "r": 4,
        "alpha": 2.0,
        "dropout": 0.0,
        "target_modules": ["qkv"],
        "qv_only": True,
        "modules_to_save": None,
    }
    # the digest the module computed from its pretrained ViT when it was built
    assert arch["base_sha256"] == packages["stage2"].base_sha256
    assert config["provenance"]["base_sha256"] == packages["stage2"].base_sha256
    assert arch["num_parameters"]["total"] == 2 * (8 * 32 + 64 * 4)


def test_another_base_is_refused_naming_both_digests(packages):
    recorded = packages["stage2"].base_sha256
    # a well-formed base package whose backbone differs in one weight
    checkpoint = torch.load(packages["stage1_ckpt"], weights_only=False)
    (key,) = [k for k in checkpoint["state_dict"] if k.endswith("blocks.1.mlp.fc2.weight")]
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key].clone()
    checkpoint["state_dict"][key][0, 0] += 0.01
    ckpt = packages["tmp"] / "tampered.ckpt"
    torch.save(checkpoint, ckpt)
    tampered = _export(ckpt, "visft-tampered", packages["tmp"] / "tampered", class_path=CLASS_PATH)
    actual = state_sha256(zoo.load(f"local-dir:{tampered}").encoder.visual)
    assert actual != recorded
    with pytest.raises(BaseWeightsMismatchError, match=f"(?s){actual}.*{recorded}"):
        zoo.load(f"local-dir:{packages['adapter']}", base=tampered)
    # the same for an already loaded base changed in memory
    base = zoo.load(f"local-dir:{packages['base']}")
    with torch.no_grad():
        base.encoder.visual.pos_embed[0, 0, 0] += 1e-3
    with pytest.raises(BaseWeightsMismatchError, match=recorded):
        zoo.load(f"local-dir:{packages['adapter']}", base=base)


def test_clear_errors_without_a_base_and_for_modules_without_an_adapter(packages):
    adapter = f"local-dir:{packages['adapter']}"
    with pytest.raises(ValueError, match=r"LoRA adapter package.*needs its base vision_encoder"):
        zoo.load(adapter)
    with pytest.raises(ValueError, match="'lora_adapter' model; visft-adapter needs a"):
        zoo.load(adapter, base=packages["adapter"])  # an adapter is no base
    with pytest.raises(ValueError, match="'vision_encoder' package, not an adapter"):
        zoo.load(f"local-dir:{packages['base']}", base=packages["base"])
    with pytest.raises(ValueError, match="has no LoRA adapter"):  # stage 1: nothing to export
        _export(packages["stage1_ckpt"], "x", packages["tmp"] / "x", adapter_only=True)
    with pytest.raises(ValueError, match="--adapter-only exports the LoRA adapter of a zoo fit"):
        export_model(packages["vit_file"], "y", packages["tmp"] / "y", adapter_only=True)
