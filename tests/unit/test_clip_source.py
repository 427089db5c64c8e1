"""CLIP sources of the few-shot family: Hugging Face folders, OpenAI and open_clip state
dicts (ViT and ResNet) load with the reference model's outputs, the weights file's sha256 and
the converters' preprocessing; pins and pickles are refused; ``auto`` picks the format; the
image projection is the affine map SgVA-CLIP inverts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import save_file

from tests.unit.test_rn50_convert import CONTEXT, VOCAB, _small_resnet_clip, _token_ids
from zoo.backbones.convert import UntrustedCheckpointError, dual_encoder_from_openai_state_dict
from zoo.fewshot.clip_source import (
    LOADERS,
    CLIPSource,
    WeightsMismatchError,
    detect_source_format,
    load_clip,
    pre_projection_features,
    projection_affine,
)
from zoo.hub.security import sha256_file
from zoo.preprocess import PreprocessSpec

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-5


def _images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _open_clip_vit(seed: int = 0):
    """A tiny open_clip ViT with QuickGELU (OpenAI's activation), 2-head towers."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=1),
        quick_gelu=True,
    )
    with torch.no_grad():  # non-trivial LayerNorms, biases and logit scale
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias") or name == "logit_scale":
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _assert_same_outputs(encoder, ref, image_size: int) -> None:
    images, ids = _images(image_size), _token_ids(VOCAB, CONTEXT)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.encode_image(images), ref.encode_image(images), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            encoder.encode_text(ids), ref.encode_text(ids), atol=ATOL, rtol=0
        )


# --------------------------------------------------------------------------- the formats


def test_hf_clip_folder(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=CONTEXT,
        eos_token_id=VOCAB - 1,
        bos_token_id=VOCAB - 2,
        pad_token_id=0,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    hf.save_pretrained(tmp_path)

    assert detect_source_format(str(tmp_path)) == "hf-clip"
    loaded = load_clip({"path": str(tmp_path)})
    assert loaded.sha256 == sha256_file(tmp_path / "model.safetensors")
    assert loaded.preprocess == PreprocessSpec(image_size=32, context_length=CONTEXT)
    assert not loaded.encoder.training
    images, ids = _images(32), _token_ids(VOCAB, CONTEXT)
    with torch.no_grad():
        ref_image = hf.get_image_features(pixel_values=images)
        ref_text = hf.get_text_features(input_ids=ids)
        if not isinstance(ref_image, torch.Tensor):  # transformers 5: a model output
            ref_image, ref_text = ref_image.pooler_output, ref_text.pooler_output
        torch.testing.assert_close(
            loaded.encoder.encode_image(images), ref_image, atol=ATOL, rtol=0
        )
        torch.testing.assert_close(loaded.encoder.encode_text(ids), ref_text, atol=ATOL, rtol=0)


def test_openai_state_dict_file_defaults_to_quickgelu(tmp_path: Path) -> None:
    ref = _open_clip_vit()
    path = _save(ref.state_dict(), tmp_path / "ViT-tiny.safetensors")
    assert detect_source_format(str(path)) == "openai"
    loaded = load_clip({"path": str(path), "vision_heads": 2, "text_heads": 2})
    assert loaded.encoder.text.spec.act == "quick_gelu"
    assert loaded.sha256 == sha256_file(path)
    assert loaded.preprocess == PreprocessSpec(image_size=32, context_length=CONTEXT)
    _assert_same_outputs(loaded.encoder, ref, 32)


def test_open_clip_resnet_file_reads_its_open_clip_config(tmp_path: Path) -> None:
    """open_clip's hub layout: ``open_clip_pytorch_model.bin`` (tensors only: no trust
    needed) next to ``open_clip_config.json``, which says GELU and its mean / std."""
    ref = _small_resnet_clip(quick_gelu=False, seed=1)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    assert detect_source_format(str(path)) == "open_clip"
    with pytest.raises(ValueError, match="set model.clip.quick_gelu"):
        load_clip({"path": str(path)})  # no config: the activation is unknown

    config = {
        "model_cfg": {"embed_dim": 32, "quick_gelu": False, "vision_cfg": {"layers": [3, 4, 6, 3]}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    loaded = load_clip({"path": str(path)})
    assert loaded.encoder.text.spec.act == "gelu"
    assert loaded.encoder.spec.vision.model_name == "resnet50_clip"
    assert (loaded.preprocess.mean, loaded.preprocess.std) == ((0.5,) * 3, (0.25,) * 3)
    assert loaded.sha256 == sha256_file(path)
    _assert_same_outputs(loaded.encoder, ref, 64)

    explicit = load_clip({"path": str(path), "format": "open_clip", "quick_gelu": True})
    assert explicit.encoder.text.spec.act == "quick_gelu"  # the source's setting wins


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pickles_need_trust_and_pins_are_checked_first(tmp_path: Path) -> None:
    ref = _small_resnet_clip(quick_gelu=True, seed=2)
    pickled = tmp_path / "epoch_1.pt"  # an open_clip training checkpoint: pickled args
    torch.save({"state_dict": ref.state_dict(), "args": argparse.Namespace(model="RN")}, pickled)
    with pytest.raises(UntrustedCheckpointError, match="trust_pickle=True"):
        load_clip({"path": str(pickled)})
    digest = sha256_file(pickled)
    wrong = "0" * 64
    # the pin is checked before the file is parsed: a wrong file is never unpickled
    with pytest.raises(WeightsMismatchError, match=f"pins {wrong}"):
        load_clip({"path": str(pickled), "sha256": wrong, "trust_pickle": True})
    loaded = load_clip({"path": str(pickled), "sha256": digest, "trust_pickle": True})
    assert loaded.sha256 == digest
    _assert_same_outputs(loaded.encoder, ref, 64)


def test_auto_detection(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    files = {}
    for name in ("RN50.pt", "ViT-B-16.safetensors", "open_clip_pytorch_model.bin"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"")
    assert detect_source_format(str(ROOT / "checkpoints" / "clip-vit-tiny-digits")) == "zoo"
    assert detect_source_format("local-dir:/anywhere") == "zoo"
    assert detect_source_format("clip-vit-tiny-digits") == "zoo"  # an installed package name
    assert detect_source_format(str(hf)) == "hf-clip"  # HF's config.json is not the zoo's
    assert detect_source_format(str(files["RN50.pt"])) == "openai"
    assert detect_source_format(str(files["ViT-B-16.safetensors"])) == "openai"
    assert detect_source_format(str(files["open_clip_pytorch_model.bin"])) == "open_clip"
    assert {"zoo", "hf-clip", "openai", "open_clip"} <= set(LOADERS)
    with pytest.raises(ValueError, match="format 'nope' is unknown"):
        load_clip({"path": str(files["RN50.pt"]), "format": "nope"})


# --------------------------------------------------------------------------- the projection


@torch.no_grad()
def test_projection_affine_of_a_vit_is_the_transposed_projection() -> None:
    encoder = load_clip({"encoder": {"preset": "vit-tiny-digits"}}).encoder
    weight, bias = projection_affine(encoder)
    assert bias is None and torch.equal(weight, encoder.image_projection.t())
    images = _images(16)
    x = pre_projection_features(encoder, images)
    assert torch.equal(x, encoder.image_trunk(images))
    torch.testing.assert_close(x @ weight.t(), encoder.encode_image(images), atol=1e-6, rtol=0)


@torch.no_grad()
def test_projection_affine_of_a_resnet_is_c_proj_and_inverts() -> None:
    """RN: x is the attention pool's output before c_proj, ``f = x Wᵀ + b`` with W, b
    c_proj's (here 32 × 512; RN50: 1024 × 2048); SgVA's ``x = (f − b) pinv(Wᵀ)`` maps back
    onto f. A non-identity image_projection composes into the map."""
    ref = _small_resnet_clip(quick_gelu=True, seed=3)
    encoder, _ = dual_encoder_from_openai_state_dict(ref.state_dict())
    weight, bias = projection_affine(encoder)
    state = ref.state_dict()
    assert torch.equal(weight, state["visual.attnpool.c_proj.weight"])
    assert torch.equal(bias, state["visual.attnpool.c_proj.bias"])
    assert weight.shape == (32, 512)

    images = _images(64, n=3)
    x = pre_projection_features(encoder, images)
    f = encoder.encode_image(images)
    assert x.shape == (3, 512)
    torch.testing.assert_close(x @ weight.t() + bias, f, atol=ATOL, rtol=0)
    recovered = (f - bias) @ torch.linalg.pinv(weight.t())
    torch.testing.assert_close(recovered @ weight.t() + bias, f, atol=ATOL, rtol=0)

    encoder.image_projection.copy_(torch.randn(32, 32, generator=torch.Generator().manual_seed(4)))
    weight, bias = projection_affine(encoder)
    torch.testing.assert_close(
        x @ weight.t() + bias, encoder.encode_image(images), atol=ATOL, rtol=0
    )


def test_a_zoo_fit_checkpoint_is_the_lightning_format_and_needs_trust(tmp_path: Path) -> None:
    from zoo.fewshot.clip_source import LOADERS, detect_source_format

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    assert detect_source_format(str(ckpt)) == "lightning"
    with pytest.raises(UntrustedCheckpointError):
        LOADERS["lightning"](CLIPSource(path=str(ckpt)))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        LOADERS["lightning"](CLIPSource(path=str(tmp_path / "missing.ckpt"), trust_pickle=True))
