"""CoCoOp (card "Faithfulness tests", random tiny CLIP, real CLIP BPE tokenizer):

1. with the meta-net's last layer zeroed, CoCoOp's logits are CoOp's with the same context;
2. the batched image-conditioned prompts give the logits of the official per-image loop
   (``trainers/cocoop.py``: π on the normalised feature, ``torch.cat`` prompts, one text
   pass per image), for the trained classes and for new class names (base-to-new);
3. one SGD step trains the context and the meta-net only; both towers stay bit-identical;
4. ``ZeroShotEval`` scores CoCoOp through ``class_logits`` (the image-conditioned
   classifier), not the zero-shift ``class_weights``;
5. export → ``zoo.load`` gives the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

import zoo
from lightning_modules.cocoop import COCOOP_OPTIM, CoCoOp
from lightning_modules.coop import COOP_OPTIM, CoOp
from zoo.cli import main
from zoo.eval import ZeroShotEval
from zoo.freeze import FrozenTowerCheck
from zoo.protocols import ProtocolUnavailable

from .test_coop import (  # noqa: F401  (fixtures: the shared tiny CLIP and tokenizer)
    CLASSNAMES,
    CLIP,
    TEMPLATE,
    Prompted,
    _one_clip,
    loaded_clip_fixture,
    tokenizer_fixture,
    trainer,
)


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _cocoop(tok, **kwargs) -> CoCoOp:
    model = CoCoOp(CLIP, **kwargs).eval()
    model.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    with torch.no_grad():  # a context and a meta-net away from their init
        gen = torch.Generator().manual_seed(2)
        model.head.learner.ctx.add_(0.05 * torch.randn(model.head.learner.ctx.shape, generator=gen))
        for p in model.head.meta_net.parameters():
            p.normal_(0, 0.3, generator=gen)
    return model


def official_loop_logits(model: CoCoOp, names: list[str], tok, images: torch.Tensor):
    """The official CustomCLIP.forward: f̂ = f/‖f‖, bias = meta_net(f̂), and per image the C
    prompts cat(prefix, ctx + bias, suffix) of the full-length tokenised prompts through the
    text encoder, pooled at argmax(ids), then s · f̂ Wᵀ."""
    encoder, head = model.encoder, model.head
    names = [n.replace("_", " ") for n in names]
    n_ctx = head.learner.n_ctx
    tokens = tok([f"a photo of a {n}." for n in names])
    embedding = encoder.text.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx :]
    f = encoder.encode_image(images)
    f = f / f.norm(dim=-1, keepdim=True)
    bias = head.meta_net(f)
    rows = []
    for f_i, bias_i in zip(f, bias):
        ctx_i = (head.learner.ctx + bias_i).unsqueeze(0).expand(len(names), -1, -1)
        prompts = torch.cat([prefix, ctx_i, suffix], dim=1)
        text = encoder.encode_text_embeddings(prompts, tokens.argmax(dim=-1))
        text = text / text.norm(dim=-1, keepdim=True)
        rows.append(encoder.logit_scale.exp() * f_i @ text.t())
    return torch.stack(rows)


def test_paper_defaults(tok):
    model = CoCoOp(CLIP)
    assert (model.n_ctx, model.ctx_init, model.class_token_position) == (4, "a photo of a", "end")
    assert model.optim == COCOOP_OPTIM == COOP_OPTIM  # SGD 0.002, Dassl's schedule
    model.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    net = model.head.meta_net  # Linear(d, d/16) → ReLU → Linear(d/16, width), d = 64
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]
    assert (net.linear1.in_features, net.linear1.out_features) == (64, 4)
    assert (net.linear2.in_features, net.linear2.out_features) == (4, 64)
    assert model.head.learner.ctx.shape == (4, 64)


def test_zeroed_meta_net_gives_coop_logits(tok):
    cocoop = _cocoop(tok)
    coop = CoOp(CLIP, ctx_init="a photo of a").eval()
    coop.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    with torch.no_grad():
        coop.head.learner.ctx.copy_(cocoop.head.learner.ctx)
        cocoop.head.meta_net.linear2.weight.zero_()
        cocoop.head.meta_net.linear2.bias.zero_()
        one, batch = _images(1), _images(5)
        torch.testing.assert_close(cocoop.logits(one), coop.logits(one), rtol=0, atol=1e-6)
        torch.testing.assert_close(cocoop.logits(batch), coop.logits(batch), rtol=1e-6, atol=1e-5)
        # a meta-net that is not zero moves them (not by a constant: pre-LN removes that)
        cocoop.head.meta_net.linear2.bias.normal_(
            0, 0.3, generator=torch.Generator().manual_seed(3)
        )
        assert (cocoop.logits(batch) - coop.logits(batch)).abs().max() > 1e-3


def test_batched_prompts_equal_the_official_per_image_loop(tok):
    model = _cocoop(tok, max_prompts=8)  # 2 images per text pass: 3 chunks for 5 images
    images = _images(5)
    with torch.no_grad():
        logits = model.logits(images)
        reference = official_loop_logits(model, CLASSNAMES, tok, images)
        # the meta-net moves the classifier away from the zero-shift one
        f = F.normalize(model.encoder.encode_image(images), dim=-1)
        zero_shift = model.logit_scale * f @ model.head.class_weights(model.encoder).T
        assert (logits - zero_shift).abs().max() > 1e-3
    torch.testing.assert_close(logits, reference, rtol=1e-6, atol=1e-5)


def test_one_step_trains_the_context_and_the_meta_net_only(tmp_path):
    data = Prompted(n=4, batch_size=1)  # the paper's batch of 1
    model = CoCoOp(CLIP)
    model.configure_classes(data.classnames, data.templates, data.tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = trainer(tmp_path, [FrozenTowerCheck()], max_steps=1, max_epochs=1)
    fitted.fit(model, datamodule=data)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    meta = {f"head.meta_net.linear{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
    assert changed == {"head.learner.ctx", *meta}
    optimised = {id(p) for g in fitted.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}


def test_zero_shot_eval_scores_the_image_conditioned_classifier(tmp_path, tok):
    data = Prompted(n=8, batch_size=4)
    model = _cocoop(tok)
    callback = ZeroShotEval(split="test", name="fewshot", top_k=(1,), log_images=False)
    trainer(tmp_path, [callback], max_epochs=0).fit(model, datamodule=data)
    model.eval()
    with torch.no_grad():
        features = model.features(data.images)
        weights = model.class_weights(CLASSNAMES, [TEMPLATE], tokenizer=tok)
        conditioned = model.class_logits(features, weights)
        assert torch.equal(conditioned, model.logits(data.images))
        # the zero-shift weights alone are another classifier
        cosine = F.normalize(features, dim=-1) @ weights.T
        assert not torch.equal(conditioned.argmax(-1), cosine.argmax(-1))
    top1 = (conditioned.argmax(-1) == data.labels).float().mean().item() * 100
    assert callback.results["eval/fewshot_top1"] == pytest.approx(top1, abs=1e-4)


def test_new_class_names_are_scored_with_conditioned_prompts(tok):
    model = _cocoop(tok)
    new = ["zebra", "golden_retriever", "tabby cat"]
    images = _images(3)
    with torch.no_grad():
        weights = model.class_weights(new, [TEMPLATE], tokenizer=tok)
        logits = model.class_logits(model.features(images), weights)
        reference = official_loop_logits(model, new, tok, images)
        torch.testing.assert_close(logits, reference, rtol=1e-6, atol=1e-5)
        with pytest.raises(ProtocolUnavailable, match="class_weights"):
            model.class_logits(model.features(images), torch.randn(3, 64))


def test_trained_checkpoint_exports_and_loads_with_the_same_logits(tmp_path):
    data = Prompted(n=4, batch_size=1)
    model = CoCoOp(CLIP)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [ckpt], max_steps=3, enable_checkpointing=True).fit(model, datamodule=data)
    model.eval()
    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "ckpt" / "last.ckpt"), "--name", "cocoop-test"]
    argv += ["--out", str(out), "--trust-pickle"]
    assert main([*argv, "--class-path", "lightning_modules.cocoop.CoCoOp"]) == 0
    loaded = zoo.load(f"local-dir:{out}")
    assert loaded.config["architecture"]["head"]["type"] == "cocoop"
    with torch.no_grad():
        assert torch.equal(loaded.logits(data.images), model.logits(data.images))
