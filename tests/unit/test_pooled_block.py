"""Pooled-row last block (zoo.backbones.pooled): same features and gradients as the full
last block, for the timm ViT and the CLIP text tower, and measurably fewer FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec, build_dual_encoder
from zoo.backbones.pooled import timm_vit_pooled_forward, timm_vit_prunable
from zoo.backbones.text import CLIPTextTower
from zoo.backbones.vision import build_vision_tower


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same_forward_backward(full, pruned, run_full, run_pruned) -> None:
    out_full, out_pruned = run_full(), run_pruned()
    torch.testing.assert_close(out_pruned, out_full, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(out_full)
    (out_full * weights).sum().backward()
    (out_pruned * weights).sum().backward()
    g_full, g_pruned = _grads(full), _grads(pruned)
    assert g_full.keys() == g_pruned.keys() and len(g_full) > 0
    for name in g_full:
        torch.testing.assert_close(g_pruned[name], g_full[name], rtol=1e-9, atol=1e-10, msg=name)


VIT_CASES = {
    "plain": {},
    "no_qkv_bias": {"qkv_bias": False},
    "layer_scale_qk_norm": {"init_values": 0.1, "qk_norm": True},
    "register_tokens": {"reg_tokens": 2},
}


@pytest.mark.parametrize("kwargs", VIT_CASES.values(), ids=VIT_CASES.keys())
def test_vit_class_token_last_block_equals_full_model(kwargs):
    torch.manual_seed(0)
    spec = VisionSpec(
        "vit_small_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=3,
        num_heads=4,
        kwargs=kwargs,
    )
    full = build_vision_tower(spec).double().eval()
    pruned = copy.deepcopy(full)
    assert timm_vit_prunable(pruned)
    images = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    _assert_same_forward_backward(
        full, pruned, lambda: full(images), lambda: timm_vit_pooled_forward(pruned, images)
    )


def test_vit_pooled_by_average_is_left_alone():
    spec = VisionSpec(
        "vit_small_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=4,
        kwargs={"global_pool": "avg", "class_token": False},
    )
    assert not timm_vit_prunable(build_vision_tower(spec))
    cnn = VisionSpec("resnet18")
    assert not timm_vit_prunable(build_vision_tower(cnn))


def _text_pair(**spec_kwargs) -> tuple[CLIPTextTower, CLIPTextTower]:
    torch.manual_seed(0)
    spec = TextSpec(
        vocab_size=100,
        width=32,
        layers=3,
        heads=4,
        context_length=12,
        eos_token_id=99,
        **spec_kwargs,
    )
    full = CLIPTextTower(TextSpec(**{**spec.__dict__, "pooled_last_block": False}))
    pruned = CLIPTextTower(spec)
    pruned.load_state_dict(full.state_dict())
    return full.double().eval(), pruned.double().eval()


def _tokens_with_padding(eot: list[int], length: int = 12) -> torch.Tensor:
    tokens = torch.zeros(len(eot), length, dtype=torch.long)
    for row, position in enumerate(eot):
        tokens[row, :position] = torch.randint(1, 98, (position,))
        tokens[row, position] = 99
    return tokens


@pytest.mark.parametrize("pooling", ["argmax", "eos"])
def test_text_eot_rows_last_layer_equals_full_tower(pooling):
    full, pruned = _text_pair(pooling=pooling)
    tokens = _tokens_with_padding([1, 4, 11, 7])  # EOT early, middle and at the last position
    _assert_same_forward_backward(full, pruned, lambda: full(tokens), lambda: pruned(tokens))


def test_text_prompt_embeddings_path_equals_full_tower():
    full, pruned = _text_pair()
    embeds = torch.randn(3, 12, 32, dtype=torch.float64)
    eot = torch.tensor([2, 11, 5])
    full_in, pruned_in = embeds.clone().requires_grad_(), embeds.clone().requires_grad_()
    _assert_same_forward_backward(
        full,
        pruned,
        lambda: full.forward_embeddings(full_in, eot),
        lambda: pruned.forward_embeddings(pruned_in, eot),
    )
    torch.testing.assert_close(pruned_in.grad, full_in.grad, rtol=1e-9, atol=1e-10)


def test_dual_encoder_flag_saves_the_dead_rows_flops():
    """Per tower the last block keeps only its K/V projections for non-pooled rows: the
    saving is close to (1 - 2/12) / depth of the tower's FLOPs (attention adds a little)."""

    def spec(pooled: bool) -> DualEncoderSpec:
        return DualEncoderSpec(
            vision=VisionSpec(
                "vit_small_patch16_224",
                img_size=64,
                patch_size=8,
                embed_dim=64,
                depth=4,
                num_heads=4,
                pooled_last_block=pooled,
            ),
            text=TextSpec(
                vocab_size=100,
                width=64,
                layers=4,
                heads=4,
                context_length=16,
                eos_token_id=99,
                pooled_last_block=pooled,
            ),
            embed_dim=32,
        )

    def flops(encoder, run) -> int:
        with FlopCounterMode(display=False) as counter:
            run(encoder)
        return counter.get_total_flops()

    full, pruned = build_dual_encoder(spec(False)), build_dual_encoder(spec(True))
    pruned.load_state_dict(full.state_dict())
    assert pruned.prune_visual and not full.prune_visual
    images = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(1, 98, (2, 16))
    tokens[:, -1] = 99
    for run in (lambda e: e.encode_image(images), lambda e: e.encode_text(tokens)):
        saved = 1 - flops(pruned, run) / flops(full, run)
        assert 0.8 * (10 / 12) / 4 < saved < 1.2 * (10 / 12) / 4
        torch.testing.assert_close(run(pruned), run(full), rtol=1e-4, atol=1e-5)
