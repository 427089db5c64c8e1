"""Local vision weights: timm's own layout loads as is; an official EVA-CLIP-style file
(``visual.`` prefix, rotary buffers, another input size) is converted by timm's
``checkpoint_filter_fn`` (the ViSFT paper-scale recipes point at such a file)."""

from pathlib import Path

import pytest
import torch

from zoo.backbones.vision import VisionSpec, build_vision_tower

EVA = dict(model_name="eva02_tiny_patch14_224", patch_size=14, embed_dim=32, depth=1, num_heads=2)


def test_timm_layout_loads_as_is(tmp_path: Path):
    torch.manual_seed(0)
    source = build_vision_tower(VisionSpec(img_size=28, **EVA))
    torch.save(source.state_dict(), tmp_path / "eva.pt")
    loaded = build_vision_tower(VisionSpec(img_size=28, checkpoint=str(tmp_path / "eva.pt"), **EVA))
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_an_eva_clip_file_is_converted_and_its_position_embedding_resampled(tmp_path: Path):
    torch.manual_seed(0)
    source = build_vision_tower(VisionSpec(img_size=56, **EVA))  # a 4 × 4 grid
    official = {f"visual.{k}": v for k, v in source.state_dict().items()}
    official["visual.rope.freqs_cos"] = torch.zeros(16, 16)  # a buffer the file carries
    official["text.token_embedding.weight"] = torch.zeros(3, 4)  # the other tower: ignored
    torch.save({"module": official}, tmp_path / "eva_clip.pt")

    spec = VisionSpec(img_size=28, checkpoint=str(tmp_path / "eva_clip.pt"), **EVA)  # 2 × 2
    loaded = build_vision_tower(spec).state_dict()
    reference = source.state_dict()
    same = [k for k in reference if k != "pos_embed"]
    assert "blocks.0.attn.qkv.weight" in same and "blocks.0.attn.q_bias" in same
    for name in same:  # every weight but the resampled position embedding, bit for bit
        assert torch.equal(loaded[name], reference[name]), name
    assert torch.equal(loaded["patch_embed.proj.weight"], reference["patch_embed.proj.weight"])
    assert loaded["pos_embed"].shape == (1, 1 + 4, 32) and reference["pos_embed"].shape[1] == 17
    assert torch.equal(loaded["pos_embed"][:, :1], reference["pos_embed"][:, :1])  # class token
    grid = reference["pos_embed"][:, 1:].reshape(1, 4, 4, 32)
    # bicubic resampling: not a crop of the 4 × 4 grid
    assert not torch.allclose(loaded["pos_embed"][:, 1:].reshape(1, 2, 2, 32), grid[:, :2, :2])


def test_a_file_that_fits_nothing_names_the_problem(tmp_path: Path):
    torch.save({"something.else": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises((RuntimeError, ValueError), match="pos_embed|Missing|could not convert"):
        build_vision_tower(VisionSpec(img_size=28, checkpoint=str(tmp_path / "bad.pt"), **EVA))
