"""CLIP baseline: the step's loss is the symmetric InfoNCE of the encoder's embeddings, the
paper's optimiser values are the defaults, and a step trains every part."""

import torch

from lightning_modules.clip import CLIP
from zoo.losses import clip_infonce

from ._tiny import tiny_batch, tiny_encoder_spec


def test_step_loss_is_clip_infonce_of_embeddings():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec())
    batch = tiny_batch()
    z_i = model.encoder.encode_image(batch["image"])
    z_t = model.encoder.encode_text(batch["text"])
    expected = clip_infonce(z_i, z_t, model.encoder.logit_scale.exp())
    torch.testing.assert_close(model.loss_terms(batch)["loss"], expected)
    # the initial scale is 1/0.07
    assert model.encoder.logit_scale.exp().item() == torch.tensor(1 / 0.07).item()


def test_paper_optimiser_defaults_and_everything_trains():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec())
    assert (model.optim.lr, model.optim.weight_decay, model.optim.betas) == (5e-4, 0.5, (0.9, 0.98))
    model.loss_terms(tiny_batch())["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # only the embeddings of token ids that never occur get no gradient
    assert no_grad == ["encoder.text.model.embeddings.token_embedding.weight"] or not no_grad


def test_text_pooling_ignores_tokens_after_eot():
    torch.manual_seed(0)
    model = CLIP(encoder=tiny_encoder_spec()).eval()
    batch = tiny_batch()
    changed = batch["text"].clone()
    changed[:, 6:] = 7  # padding after EOT is invisible to a causal model with EOT pooling
    torch.testing.assert_close(
        model.encoder.encode_text(batch["text"]), model.encoder.encode_text(changed)
    )
