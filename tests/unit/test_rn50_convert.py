"""OpenAI / open_clip CLIP ResNets (ModifiedResNet, RN50) → DualEncoder with timm's byobnet
``resnet50_clip`` tower, by output equality with randomly initialised open_clip models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.backbones.convert import (
    clip_resnet_attention_pool,
    dual_encoder_from_openai_state_dict,
    export_openai_state_dict,
)
from zoo.backbones.dual_encoder import DualEncoder

ATOL = 1e-4
VOCAB, CONTEXT = 100, 16


@torch.no_grad()
def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics, LayerNorm gains and
    biases, and logit scale: open_clip initialises every bottleneck's last BatchNorm gain to
    zero (identity residual branches) and running statistics to 0 / 1, which would hide a
    wrongly mapped weight."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.fill_(3.1)
        elif any(part in name for part in ("bn", "downsample.1", "ln_")):
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model.eval()


def _token_ids(vocab: int, context: int, seed: int = 0) -> torch.Tensor:
    """Token ids whose single largest id (the EOT) ends each caption."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 1, (2, context), generator=gen)
    for row, length in enumerate((5, context)):
        ids[row, length - 1] = vocab - 1
        ids[row, length:] = 0
    return ids


def _small_resnet_clip(quick_gelu: bool, seed: int = 0, image_size: int = 64):
    """open_clip's CLIP with a ModifiedResNet of RN50's depths (3, 4, 6, 3) at a quarter of
    its width (16: attention pool 512 wide, 8 heads) and a tiny text tower."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=(3, 4, 6, 3), width=16, image_size=image_size),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=64, heads=1, layers=1),
        quick_gelu=quick_gelu,
    )
    return _randomise(model, seed)


def _assert_matches(zoo: DualEncoder, ref, image_size: int, vocab: int, context: int) -> None:
    images = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(7))
    ids = _token_ids(vocab, context)
    with torch.no_grad():
        ref_image, ref_text = ref.encode_image(images), ref.encode_text(ids)
        torch.testing.assert_close(zoo.encode_image(images), ref_image, atol=ATOL, rtol=0)
        torch.testing.assert_close(zoo.encode_text(ids), ref_text, atol=ATOL, rtol=0)
    assert zoo.logit_scale.item() == ref.logit_scale.item()


def _assert_exports_back(zoo: DualEncoder, original: dict[str, torch.Tensor]) -> None:
    exported = export_openai_state_dict(zoo)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key


def _rn50(text: str):
    """open_clip's "RN50" (its model config, GELU: open_clip builds it without
    ``-quickgelu``) with its own 12-layer text tower (``text="rn50"``), or with a tiny one
    (``"tiny"``: the full-width RN50 vision tower at a third of the time; the text tower is
    the one every ViT conversion test covers)."""
    import open_clip
    from open_clip.model import CLIP

    if text == "rn50":
        return open_clip.create_model("RN50", pretrained=None), 49408, 77
    config = open_clip.get_model_config("RN50")
    config["text_cfg"] = dict(context_length=CONTEXT, vocab_size=VOCAB, width=64, heads=1, layers=1)
    return CLIP(**config), VOCAB, CONTEXT


@pytest.mark.parametrize("text", ["tiny", pytest.param("rn50", marks=pytest.mark.slow)])
def test_rn50_matches_open_clip_and_exports_back(text: str) -> None:
    """RN50 at full width: one 224 image, two captions; the export is the exact inverse."""
    torch.manual_seed(0)
    model, vocab, context = _rn50(text)
    ref = _randomise(model, seed=0)
    state = ref.state_dict()
    zoo, pre = dual_encoder_from_openai_state_dict(state, quick_gelu=False)

    assert zoo.spec.vision.model_name == "resnet50_clip"
    assert zoo.spec.vision.kwargs == {"num_classes": 1024}  # c_proj stays in the tower
    assert (zoo.vision_width, zoo.embed_dim) == (1024, 1024)
    assert torch.equal(zoo.image_projection, torch.eye(1024))
    pool = clip_resnet_attention_pool(zoo.visual)
    assert pool is not None and pool.num_heads == ref.visual.attnpool.num_heads == 32
    assert torch.equal(pool.proj.weight, state["visual.attnpool.c_proj.weight"])
    assert zoo.text.spec.act == "gelu"
    assert (pre["image_size"], pre["context_length"]) == (224, context)

    _assert_matches(zoo, ref, 224, vocab, context)
    _assert_exports_back(zoo, state)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_reduced_width_resnet_from_file_matches_open_clip(tmp_path: Path, quick_gelu: bool) -> None:
    """Width 16 (``width_factor`` 0.25 on timm's resnet50_clip), 64-pixel input (a 2 × 2
    pool grid): the same conversion path, through a safetensors file, both activations."""
    ref = _small_resnet_clip(quick_gelu, seed=int(quick_gelu))
    path = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    zoo, pre = dual_encoder_from_openai_state_dict(path, quick_gelu=quick_gelu)
    assert zoo.spec.vision.kwargs == {"num_classes": 32, "width_factor": 0.25}
    assert zoo.spec.vision.img_size == pre["image_size"] == 64
    assert zoo.text.spec.act == ("quick_gelu" if quick_gelu else "gelu")
    _assert_matches(zoo, ref, 64, VOCAB, CONTEXT)
    _assert_exports_back(zoo, ref.state_dict())


def test_missing_batchnorm_counters_are_filled() -> None:
    """Some exports drop BatchNorm's ``num_batches_tracked`` (unused in eval)."""
    ref = _small_resnet_clip(quick_gelu=True, seed=2)
    state = {k: v for k, v in ref.state_dict().items() if "num_batches_tracked" not in k}
    zoo, _ = dual_encoder_from_openai_state_dict(state)
    _assert_matches(zoo, ref, 64, VOCAB, CONTEXT)


@torch.no_grad()
def test_export_folds_a_trained_image_projection_into_c_proj() -> None:
    """A non-identity image_projection P (e.g. fine-tuned) has no OpenAI key of its own: the
    export folds it into c_proj, and converting the export back gives the same outputs."""
    ref = _small_resnet_clip(quick_gelu=True, seed=3)
    zoo, _ = dual_encoder_from_openai_state_dict(ref.state_dict())
    zoo.image_projection.copy_(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    again, _ = dual_encoder_from_openai_state_dict(export_openai_state_dict(zoo))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        again.encode_image(images), zoo.encode_image(images), atol=ATOL, rtol=0
    )
    assert torch.equal(again.image_projection, torch.eye(32))


@torch.no_grad()
def test_zoo_export_of_a_resnet_describes_and_reloads_it(tmp_path: Path) -> None:
    """``zoo export`` of an RN state dict writes a dual_encoder architecture spec (timm
    resnet50_clip with its head kept) that ``zoo.load`` rebuilds with the same outputs."""
    import zoo as zoo_pkg
    from zoo.hub import export_model

    ref = _small_resnet_clip(quick_gelu=True, seed=4)
    path = tmp_path / "RN-small.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    export_model(path, "rn-small", tmp_path / "out")
    loaded = zoo_pkg.load(f"local-dir:{tmp_path / 'out'}")
    vision = loaded.config["architecture"]["spec"]["vision"]
    assert (vision["model_name"], vision["img_size"]) == ("resnet50_clip", 64)
    assert vision["kwargs"] == {"num_classes": 32, "width_factor": 0.25}
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        loaded.encode_image(images), ref.encode_image(images), atol=ATOL, rtol=0
    )
    ids = _token_ids(VOCAB, CONTEXT)
    torch.testing.assert_close(loaded.encode_text(ids), ref.encode_text(ids), atol=ATOL, rtol=0)


def test_resnet_errors_name_the_problem() -> None:
    state = _small_resnet_clip(quick_gelu=True, seed=5).state_dict()
    with pytest.raises(NotImplementedError, match=r"64-wide heads, i.e. 8 heads"):
        dual_encoder_from_openai_state_dict(state, vision_heads=4)
    deeper = dict(state)  # a seventh block in stage 3: no timm CLIP ResNet has it
    deeper.update(
        {k.replace("layer3.5.", "layer3.6."): v for k, v in state.items() if "layer3.5." in k}
    )
    with pytest.raises(NotImplementedError, match=r"stage depths \(3, 4, 7, 3\)"):
        dual_encoder_from_openai_state_dict(deeper)
    with pytest.raises(ValueError, match=r"no timm counterpart: \['visual.attnpool.extra'\]"):
        dual_encoder_from_openai_state_dict({**state, "visual.attnpool.extra": torch.zeros(2)})
