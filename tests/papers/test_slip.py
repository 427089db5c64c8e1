"""SLIP faithfulness tests (SLIP card §5): loss decomposition, ssl_scale = 0, logit-scale
clamp, weight-decay grouping and the SSL head layout."""

import pytest
import torch
from torch import nn

from lightning_modules.slip import SLIP
from zoo.heads.norm import GlobalBatchNorm1d
from zoo.losses import clip_infonce, nt_xent
from zoo.optim import param_groups

from ._tiny import tiny_batch, tiny_encoder_spec, tiny_head_spec


def _model(**kwargs) -> SLIP:
    torch.manual_seed(0)
    return SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec(), **kwargs)


def test_loss_decomposes_into_clip_plus_scaled_ssl():
    # float64: the batched pass and the separate passes differ only by rounding
    model = _model(ssl_scale=0.7).double()
    batch = tiny_batch()
    batch["image"] = batch["image"].double()
    batch["views"] = [v.double() for v in batch["views"]]
    terms = model.loss_terms(batch)
    # recompute each term from its definition, through separate passes of the encoder
    enc = model.encoder
    z_i, z_t = enc.encode_image(batch["image"]), enc.encode_text(batch["text"])
    clip = clip_infonce(z_i, z_t, enc.logit_scale.exp())
    q1 = model.ssl_head(enc.image_trunk(batch["views"][0]))
    q2 = model.ssl_head(enc.image_trunk(batch["views"][1]))
    ssl = nt_xent(q1, q2, temperature=0.1)
    torch.testing.assert_close(terms["clip_loss"], clip, atol=1e-12, rtol=0)
    torch.testing.assert_close(terms["ssl_loss"], ssl, atol=1e-12, rtol=0)
    torch.testing.assert_close(terms["loss"], clip + 0.7 * ssl, atol=1e-12, rtol=0)


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
    predicted = [
        n
        for n, p in model.named_parameters()
        if p.ndim < 2 or any(k in n for k in ("bias", "ln", "bn"))
    ]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(predicted)
    assert len(no_decay["params"]) == len(predicted) > 0
    assert all(p.ndim >= 2 for p in decay["params"])
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
