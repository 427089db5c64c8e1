"""Weight converters: HF CLIP and OpenAI / open_clip state dicts → DualEncoder, by output equality."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.backbones.convert import (
    OPENAI_CLIP_MEAN,
    UntrustedCheckpointError,
    dual_encoder_from_hf_clip,
    dual_encoder_from_openai_state_dict,
    export_openai_state_dict,
)
from zoo.backbones.dual_encoder import DualEncoder

VOCAB, CONTEXT, IMAGE = 100, 16, 32
ATOL = 1e-5


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Replace every parameter by random values, so zero/one-initialised LayerNorms, biases,
    class and position embeddings take part in the comparison."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.fill_(3.1)
        elif name.endswith("weight") and ("norm" in name or "ln_" in name):  # LayerNorm gain
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and token ids whose single largest id (the EOT) ends each caption."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=gen)
    ids = torch.randint(1, VOCAB - 1, (3, CONTEXT), generator=gen)
    for row, length in enumerate((5, 11, CONTEXT)):
        ids[row, length - 1] = VOCAB - 1
        ids[row, length:] = 0
    return images, ids


def _features(output: object) -> torch.Tensor:
    """``get_*_features`` return a tensor or (transformers 5) a model output with the pooler."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --------------------------------------------------------------------------- Hugging Face


def _hf_clip(act: str = "quick_gelu", eos: int = VOCAB - 1, eps: float = 1e-5, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        hidden_act=act,
        layer_norm_eps=eps,
        eos_token_id=eos,
        bos_token_id=VOCAB - 2,
        pad_token_id=0,
    )
    vision = dict(
        image_size=IMAGE,
        patch_size=8,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act=act,
        layer_norm_eps=eps,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    _perturb(model, seed)
    return model.eval()


def _assert_matches_hf(zoo: DualEncoder, hf, ids: torch.Tensor | None = None) -> None:
    images, default_ids = _inputs()
    ids = default_ids if ids is None else ids
    with torch.no_grad():
        torch.testing.assert_close(
            zoo.encode_image(images),
            _features(hf.get_image_features(pixel_values=images)),
            atol=ATOL,
            rtol=0,
        )
        torch.testing.assert_close(
            zoo.encode_text(ids), _features(hf.get_text_features(input_ids=ids)), atol=ATOL, rtol=0
        )
    assert zoo.logit_scale.item() == hf.logit_scale.item()


def test_hf_clip_from_folder_matches_transformers(tmp_path: Path) -> None:
    hf = _hf_clip()
    hf.save_pretrained(tmp_path)
    zoo, pre = dual_encoder_from_hf_clip(tmp_path)
    assert zoo.text.spec.pooling == "argmax"
    assert zoo.visual.patch_embed.proj.bias is None  # CLIP's conv1 has no bias
    _assert_matches_hf(zoo, hf)
    assert pre == {
        "image_size": IMAGE,
        "resize": IMAGE,
        "crop": IMAGE,
        "mean": OPENAI_CLIP_MEAN,
        "std": (0.26862954, 0.26130258, 0.27577711),
        "interpolation": "bicubic",
        "context_length": CONTEXT,
    }


def test_hf_clip_gelu_eps_and_preprocessor_config(tmp_path: Path) -> None:
    hf = _hf_clip(act="gelu", eps=1e-6, seed=1)
    hf.save_pretrained(tmp_path)
    cfg = {
        "size": {"shortest_edge": 36},
        "crop_size": {"height": IMAGE, "width": IMAGE},
        "do_center_crop": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "resample": 2,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    zoo, pre = dual_encoder_from_hf_clip(tmp_path)
    assert zoo.visual.norm.eps == 1e-6
    assert type(zoo.visual.blocks[0].mlp.act).__name__ == "GELU"  # timm's exact (erf) GELU
    _assert_matches_hf(zoo, hf)
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (36, IMAGE, "bilinear")
    assert (pre["mean"], pre["std"]) == ((0.5,) * 3, (0.25,) * 3)


def test_hf_clip_legacy_eos_2_uses_argmax_and_other_eos_uses_first_eos() -> None:
    legacy = _hf_clip(eos=2, seed=2)
    zoo, _ = dual_encoder_from_hf_clip(legacy)  # in-memory model
    assert (zoo.text.spec.pooling, zoo.text.spec.eos_token_id) == ("argmax", 2)
    _assert_matches_hf(zoo, legacy)

    # EOS id 7 (not the largest): pool at the first 7, which is not the argmax of these ids.
    hf = _hf_clip(eos=7, seed=3)
    zoo, _ = dual_encoder_from_hf_clip(hf)
    assert zoo.text.spec.pooling == "eos"
    _, ids = _inputs()
    ids[ids == 7] = 8
    ids[:, 6] = 7
    _assert_matches_hf(zoo, hf, ids)


def test_hf_clip_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dual_encoder_from_hf_clip(tmp_path / "nowhere")


# --------------------------------------------------------------------------- OpenAI / open_clip


def _open_clip(quick_gelu: bool, seed: int = 0):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(
            layers=2, width=64, patch_size=8, image_size=IMAGE, head_width=16, mlp_ratio=2.5
        ),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=48, heads=4, layers=2),
        quick_gelu=quick_gelu,
    )
    _perturb(model, seed)
    return model.eval()


def _assert_matches_open_clip(zoo: DualEncoder, ref) -> None:
    images, ids = _inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(
            zoo.encode_image(images), ref.encode_image(images), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(zoo.encode_text(ids), ref.encode_text(ids), atol=ATOL, rtol=0)
    assert zoo.logit_scale.item() == ref.logit_scale.item()


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_openai_layout_from_safetensors_matches_open_clip(tmp_path: Path, quick_gelu: bool) -> None:
    ref = _open_clip(quick_gelu, seed=int(quick_gelu))
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    zoo, pre = dual_encoder_from_openai_state_dict(
        path, quick_gelu=quick_gelu, vision_heads=4, text_heads=4
    )
    act = zoo.visual.blocks[0].mlp.act
    assert type(act).__name__ == ("QuickGELU" if quick_gelu else "GELU")
    assert (zoo.visual.blocks[0].attn.num_heads, zoo.text.spec.heads) == (4, 4)
    assert (pre["image_size"], pre["context_length"], pre["mean"]) == (
        IMAGE,
        CONTEXT,
        OPENAI_CLIP_MEAN,
    )
    _assert_matches_open_clip(zoo, ref)

    # Export is the exact inverse: the same keys and tensors as open_clip's state dict.
    exported = export_openai_state_dict(zoo)
    original = ref.state_dict()
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key


def test_hf_to_openai_export_roundtrip() -> None:
    """HF → zoo → OpenAI layout → zoo gives the same outputs as the HF model."""
    hf = _hf_clip(seed=4)
    zoo, _ = dual_encoder_from_hf_clip(hf)
    again, _ = dual_encoder_from_openai_state_dict(
        export_openai_state_dict(zoo), vision_heads=4, text_heads=4
    )
    _assert_matches_hf(again, hf)


class _Holder(nn.Module):
    """A TorchScript-able tree of parameters (stands in for OpenAI's JIT CLIP archive)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _script_archive(state: dict[str, torch.Tensor], path: Path) -> None:
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(value.clone()))
    torch.jit.script(root).save(str(path))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pickles_refused_unless_trusted(tmp_path: Path) -> None:
    ref = _open_clip(quick_gelu=True, seed=5)
    state = ref.state_dict()
    heads = dict(vision_heads=4, text_heads=4)

    jit = tmp_path / "ViT-tiny.pt"
    _script_archive(state, jit)
    with pytest.raises(UntrustedCheckpointError, match="TorchScript.*trust_pickle=True"):
        dual_encoder_from_openai_state_dict(jit, **heads)
    zoo, _ = dual_encoder_from_openai_state_dict(jit, trust_pickle=True, **heads)
    _assert_matches_open_clip(zoo, ref)

    pickled = tmp_path / "epoch_1.pt"  # open_clip training checkpoint: args pickled alongside
    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"state_dict": ddp, "args": argparse.Namespace(model="tiny")}, pickled)
    with pytest.raises(UntrustedCheckpointError, match="pickled objects.*trust_pickle=True"):
        dual_encoder_from_openai_state_dict(pickled, **heads)
    zoo, _ = dual_encoder_from_openai_state_dict(pickled, trust_pickle=True, **heads)
    _assert_matches_open_clip(zoo, ref)

    plain = tmp_path / "plain.pt"  # tensors only: weights_only loading, no trust needed
    torch.save(state, plain)
    zoo, _ = dual_encoder_from_openai_state_dict(plain, **heads)
    _assert_matches_open_clip(zoo, ref)


def test_openai_layout_errors(tmp_path: Path) -> None:
    state = _open_clip(quick_gelu=True, seed=6).state_dict()
    with pytest.raises(ValueError, match="no zoo counterpart.*logit_bias"):
        dual_encoder_from_openai_state_dict({**state, "logit_bias": torch.zeros(())})
    resnet = {k: v for k, v in state.items() if k != "visual.proj"}
    resnet["visual.layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    with pytest.raises(ValueError, match="incomplete OpenAI-layout CLIP ResNet.*attnpool"):
        dual_encoder_from_openai_state_dict(resnet)  # ResNets: tests/unit/test_rn50_convert.py
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        dual_encoder_from_openai_state_dict(tmp_path / "missing.safetensors")
