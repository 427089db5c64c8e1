"""SLIP faithfulness tests (SLIP card §5): loss decomposition, ssl_scale = 0, logit-scale
clamp, weight-decay grouping and the SSL head layout."""

import math

import pytest
import torch
from torch import nn

from lightning_modules.slip import SLIP
from zoo.heads.norm import GlobalBatchNorm1d
from zoo.optim import param_groups

from ._tiny import (
    CLIP_HAND_LOSS,
    CLIP_SCALE,
    TINY_ENCODER_DECAY,
    TINY_ENCODER_NO_DECAY,
    Z_IMAGE,
    Z_TEXT,
    tiny_batch,
    tiny_encoder_spec,
    tiny_head_spec,
)


def _model(**kwargs) -> SLIP:
    torch.manual_seed(0)
    return SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec(), **kwargs)


def test_loss_decomposes_into_clip_plus_scaled_ssl():
    """The step on fixed trunk features / text embeddings, against hand computations:
    L = L_CLIP + 0.7 · L_SSL with L_CLIP the symmetric InfoNCE at s = 2 (_tiny) and L_SSL
    SLIP's NT-Xent at τ = 0.1 on two views of two images."""
    model = _model(ssl_scale=0.7)
    pad = nn.functional.pad
    # f_I of the CLIP view and of the two SSL views (32-d trunk, zero beyond 2 coordinates)
    h_image = pad(torch.tensor(Z_IMAGE), (0, 30))
    h_1 = pad(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), (0, 30))  # → [[1, 0], [0, 1]]
    h_2 = pad(torch.tensor([[3.0, 4.0], [4.0, 3.0]]), (0, 30))  # → [[.6, .8], [.8, .6]]
    model.image_trunks = lambda image, views: [h_image, h_1, h_2]
    model.encoder.encode_text = lambda tokens, normalize=False: pad(torch.tensor(Z_TEXT), (0, 14))
    model.ssl_head = nn.Identity()  # q_k = h_k
    with torch.no_grad():
        model.encoder.image_projection.zero_()  # W_I keeps the first two coordinates
        model.encoder.image_projection[0, 0] = model.encoder.image_projection[1, 1] = 1.0
        model.encoder.logit_scale.fill_(math.log(CLIP_SCALE))
    # NT-Xent by hand, logits = cosine / τ; each anchor's positive is the other view of its
    # image (cosine 0.6 for both images and both views), its negatives the other image's
    # other view (0.8) and own view (view 1: 0, view 2: 0.96); the anchor itself is masked
    ssl_1 = math.log(math.exp(6.0) + math.exp(8.0) + math.exp(0.0)) - 6.0
    ssl_2 = math.log(math.exp(6.0) + math.exp(8.0) + math.exp(9.6)) - 6.0
    ssl = (ssl_1 + ssl_2) / 2  # 2.96680…

    terms = model.loss_terms(tiny_batch(n=2))
    assert terms["clip_loss"].item() == pytest.approx(CLIP_HAND_LOSS, rel=1e-5)
    assert terms["ssl_loss"].item() == pytest.approx(ssl, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(CLIP_HAND_LOSS + 0.7 * ssl, rel=1e-5)


def test_ssl_scale_zero_gives_zero_gradient_in_ssl_head():
    model = _model(ssl_scale=0.0)
    model.loss_terms(tiny_batch())["loss"].backward()
    grads = [p.grad for p in model.ssl_head.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    # while the CLIP part still trains the encoder
    assert model.encoder.image_projection.grad.abs().sum() > 0


def test_ssl_scale_one_trains_ssl_head():
    model = _model(ssl_scale=1.0)
    model.loss_terms(tiny_batch())["loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in model.ssl_head.parameters())


def test_logit_scale_is_clamped_after_a_training_step(tmp_path):
    import lightning as L

    model = _model()
    model.encoder.logit_scale.data.fill_(10.0)

    class _Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([tiny_batch()], batch_size=None)

    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=_Data())
    assert trainer.global_step == 1
    assert model.encoder.logit_scale.item() == pytest.approx(4.6052)


def test_weight_decay_grouping_on_slip_model():
    model = _model()
    decay, no_decay = param_groups(model, model.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    head = "ssl_head."
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        [
            *TINY_ENCODER_DECAY,
            head + "layer1.weight",
            head + "layer2.weight",
            head + "layer3.weight",
        ]
    )
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        [
            *TINY_ENCODER_NO_DECAY,
            *(head + f"layer{i}.bias" for i in (1, 2, 3)),
            *(head + f"bn{i}.{kind}" for i in (1, 2) for kind in ("weight", "bias")),
        ]
    )
    assert model.optim.lr == 3e-3 and model.optim.weight_decay == 0.1  # SLIP's paper values
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_ssl_head_is_slip_bn_mlp_on_trunk_features():
    model = SLIP(encoder=tiny_encoder_spec())  # default head = the paper's
    kinds = [type(m) for m in model.ssl_head]
    assert kinds == [
        nn.Linear,
        GlobalBatchNorm1d,
        nn.ReLU,
        nn.Linear,
        GlobalBatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert model.ssl_head[0].in_features == model.encoder.vision_width == 32
    assert [model.ssl_head[i].out_features for i in (0, 3, 6)] == [4096, 4096, 256]


def test_batched_trunk_equals_separate_passes():
    model = _model().eval()
    batch = tiny_batch()
    joint = model.image_trunks(batch["image"], batch["views"])
    separate = [model.encoder.image_trunk(x) for x in (batch["image"], *batch["views"])]
    for a, b in zip(joint, separate):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
