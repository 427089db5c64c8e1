"""Freezing helpers and the projection MLP block spec (the EMA teacher: test_ema_teacher.py)."""

import pytest
import torch
from torch import nn

from zoo.freeze import assert_frozen, freeze, trainable_parameter_names
from zoo.heads import MLPSpec, ProjectionMLP


def test_frozen_weights_stay_bit_identical_through_training():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    freeze(model[0], model[1])
    before = {k: v.clone() for k, v in model[:2].state_dict().items()}
    assert trainable_parameter_names(model) == ["2.weight", "2.bias"]
    assert_frozen(model, allow=["2."])
    with pytest.raises(AssertionError, match="2.weight"):
        assert_frozen(model)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5
    )
    for _ in range(3):
        model[2].train()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    for k, v in model[:2].state_dict().items():
        assert torch.equal(v, before[k]), k  # includes BN running stats (eval mode)


def test_projection_mlp_matches_slip_head_layout():
    head = ProjectionMLP(384, MLPSpec(hidden_dims=[4096, 4096], out_dim=256))
    kinds = [type(m).__name__ for m in head]
    assert kinds == [
        "Linear",
        "GlobalBatchNorm1d",
        "ReLU",
        "Linear",
        "GlobalBatchNorm1d",
        "ReLU",
        "Linear",
    ]
    assert isinstance(head.bn1, nn.BatchNorm1d)  # SyncBN semantics, plain BN with one process
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [4096, 4096, 256]
    assert head[0].in_features == 384
    # hand computation in eval mode (BN uses running statistics)
    small = ProjectionMLP(6, MLPSpec(hidden_dims=[5], out_dim=3)).eval()
    with torch.no_grad():
        small.bn1.running_mean.uniform_(-1, 1)
        small.bn1.running_var.uniform_(0.5, 2)
        small.bn1.weight.uniform_(0.5, 2)
    x = torch.randn(4, 6)
    bn = small.bn1
    h = x @ small.layer1.weight.T + small.layer1.bias
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = h.clamp_min(0) @ small.layer2.weight.T + small.layer2.bias
    torch.testing.assert_close(small(x), expected)


def test_cpu_bf16_attention_uses_math_kernel_with_same_results():
    from unittest import mock

    from tests.papers._tiny import tiny_batch, tiny_encoder_spec
    from zoo.backbones import build_dual_encoder
    from zoo.backbones import dual_encoder as de

    torch.manual_seed(0)
    model = build_dual_encoder(tiny_encoder_spec()).eval()
    batch = tiny_batch()
    chosen = []
    real = de.attention_kernels

    def spy(x):
        ctx = real(x)
        chosen.append(type(ctx).__name__)
        return ctx

    with mock.patch.object(de, "attention_kernels", spy), torch.no_grad():
        fp32 = model.encode_image(batch["image"])
        assert chosen == ["nullcontext"]  # fp32: default kernels
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_math = model.encode_image(batch["image"]).float()
            text_math = model.encode_text(batch["text"]).float()
    amx = torch.cpu._is_amx_tile_supported()
    if amx:
        assert chosen[1:] == ["nullcontext"] * 2
    else:  # the math kernel was selected for both towers
        assert len(chosen) == 3 and "nullcontext" not in chosen[1:]
    default = mock.patch.object(de, "attention_kernels", lambda x: de.nullcontext())
    with default, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_default = model.encode_image(batch["image"]).float()
        text_default = model.encode_text(batch["text"]).float()
    # both kernels compute the same attention: bf16-level agreement, and close to fp32
    torch.testing.assert_close(bf16_math, bf16_default, atol=0.05, rtol=0.05)
    torch.testing.assert_close(text_math, text_default, atol=0.05, rtol=0.05)
    torch.testing.assert_close(bf16_math, fp32, atol=0.1, rtol=0.1)


def test_logit_scale_is_a_vector_and_scalar_checkpoints_still_load():
    """FSDP cannot shard 0-d parameters, so the dual encoder holds t with shape (1,); 0-d
    logit scales (older zoo checkpoints, OpenAI / HF layouts) load into it. (The OpenAI
    export writes OpenAI's 0-d scalar: test_converters compares it tensor for tensor.)"""
    from tests.papers._tiny import tiny_encoder_spec
    from zoo.backbones import build_dual_encoder

    encoder = build_dual_encoder(tiny_encoder_spec())
    assert all(p.dim() >= 1 for p in encoder.parameters())
    assert encoder.logit_scale.shape == (1,)
    state = encoder.state_dict()
    state["logit_scale"] = torch.tensor(2.5)
    encoder.load_state_dict(state)
    assert encoder.logit_scale.tolist() == [2.5]


def test_convolutional_towers_run_channels_last_with_the_same_features():
    from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec, build_dual_encoder

    text = TextSpec(vocab_size=100, width=32, layers=1, heads=2, context_length=8, eos_token_id=99)

    def encoder(name: str, channels_last: bool | None, **kw):
        torch.manual_seed(0)
        vision = VisionSpec(name, channels_last=channels_last, **kw)
        return build_dual_encoder(DualEncoderSpec(vision=vision, text=text, embed_dim=16)).eval()

    nhwc, nchw = encoder("resnet18", None), encoder("resnet18", False)
    assert nhwc.channels_last and not nchw.channels_last
    conv = nhwc.visual.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.encode_image(images), nchw.encode_image(images))
    vit = encoder("vit_small_patch16_224", None, img_size=32, patch_size=8, embed_dim=48,
                  depth=1, num_heads=4)  # fmt: skip
    assert not vit.channels_last  # a ViT's only conv is its patch embedding


def _table_with_bad_images(root) -> None:
    """16 readable PNGs, one of them overwritten with garbage, plus a row whose file is
    missing: 2 bad samples per pass."""
    import csv

    import numpy as np
    from PIL import Image

    rows = []
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"picture {i}", "label": i % 10})
    (root / "3.png").write_bytes(b"not a png")  # corrupt
    rows.append({"image": "gone.png", "caption": "missing", "label": 0})  # missing
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)


def _two_rank_strategy():
    """One process standing in for 2 ranks whose counts are equal: its all-reduce sums two
    copies of the local count."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class TwoRanks(SingleDeviceStrategy):
        def reduce(self, tensor, group=None, reduce_op="mean"):
            assert reduce_op == "sum"
            return tensor * 2

    return TwoRanks(device=torch.device("cpu"))


@pytest.mark.parametrize("ranks", [1, 2])
def test_epoch_total_of_skipped_samples_is_printed(tmp_path, capsys, ranks):
    import re

    import lightning as L

    from datamodules.clip import CLIPDataModule
    from lightning_modules.clip import CLIP
    from tests.papers._tiny import tiny_encoder_spec

    _table_with_bad_images(tmp_path)
    spec = tiny_encoder_spec()
    spec.text.vocab_size, spec.text.eos_token_id = 49408, 49407  # the real CLIP BPE
    data = CLIPDataModule(
        source="csv",
        root=str(tmp_path),
        train="pairs.csv",
        image_size=16,
        context_length=8,
        batch_size=6,  # 17 rows: 3 batches an epoch
        drop_last=False,
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        strategy=_two_rank_strategy() if ranks == 2 else "auto",
        default_root_dir=tmp_path,
    )
    trainer.fit(CLIP(encoder=spec), datamodule=data)
    lines = re.findall(r"^epoch \d+: .*bad.*$", capsys.readouterr().out, flags=re.MULTILINE)
    total = 2 * ranks
    assert lines == [
        f"epoch 0: {total} bad samples skipped (replaced by the next readable ones)",
        f"epoch 1: {total} bad samples skipped (replaced by the next readable ones)",
    ]
