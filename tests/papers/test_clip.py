"""CLIP baseline: the step's loss is the symmetric InfoNCE of the encoder's embeddings, the
paper's optimiser values are the defaults, and a step trains every part."""

import math

import pytest
import torch

from lightning_modules.clip import CLIP
from zoo.losses import clip_infonce

from ._tiny import CLIP_HAND_LOSS, CLIP_SCALE, Z_IMAGE, Z_TEXT, tiny_batch, tiny_encoder_spec


def test_clip_infonce_by_hand():
    loss = clip_infonce(torch.tensor(Z_IMAGE), torch.tensor(Z_TEXT), CLIP_SCALE)
    assert loss.item() == pytest.approx(CLIP_HAND_LOSS, rel=1e-6)


def test_step_loss_is_symmetric_infonce_of_normalised_embeddings():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec())
    # the initial scale is 1/0.07
    assert model.encoder.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-6)
    # the step on fixed embeddings (16-d, zero beyond the first two coordinates), s = 2
    pad = torch.nn.functional.pad
    model.encoder.encode_image = lambda images, normalize=False: pad(torch.tensor(Z_IMAGE), (0, 14))
    model.encoder.encode_text = lambda tokens, normalize=False: pad(torch.tensor(Z_TEXT), (0, 14))
    with torch.no_grad():
        model.encoder.logit_scale.fill_(math.log(CLIP_SCALE))
    terms = model.loss_terms(tiny_batch(n=2))
    assert terms["loss"].item() == pytest.approx(CLIP_HAND_LOSS, rel=1e-6)
    assert terms["logit_scale"].item() == pytest.approx(2.0, rel=1e-6)
    # the embeddings are not unit vectors: unnormalised they give another loss, so the
    # match above also shows that the step normalises them
    assert clip_infonce(
        torch.tensor(Z_IMAGE), torch.tensor(Z_TEXT), CLIP_SCALE, normalize=False
    ).item() != pytest.approx(CLIP_HAND_LOSS, rel=1e-3)


def test_paper_optimiser_defaults_and_everything_trains():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec())
    assert (model.optim.lr, model.optim.weight_decay, model.optim.betas) == (5e-4, 0.5, (0.9, 0.98))
    batch = tiny_batch()
    model.loss_terms(batch)["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []  # every parameter gets a gradient
    # token embedding rows: exactly the ids up to and including EOT (positions 0-5) get a
    # gradient; the padding id 0 after EOT does not (causal attention, EOT pooling)
    grad = model.encoder.text.model.embeddings.token_embedding.weight.grad
    rows_with_grad = {i for i in range(grad.shape[0]) if grad[i].abs().sum() > 0}
    assert rows_with_grad == set(batch["text"][:, :6].flatten().tolist())
    assert 0 not in rows_with_grad


def test_text_pooling_ignores_tokens_after_eot():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec()).eval()
    batch = tiny_batch()
    changed = batch["text"].clone()
    changed[:, 6:] = 7  # padding after EOT is invisible to a causal model with EOT pooling
    torch.testing.assert_close(
        model.encoder.encode_text(batch["text"]), model.encoder.encode_text(changed)
    )
