"""CoOp (card "Faithfulness tests", on a random tiny CLIP with the real CLIP BPE tokenizer):

1. M = 4 initialised from "a photo of a" gives the token embeddings of "a photo of a {c}."
   and the zero-shot logits of that template;
2. one SGD step through Lightning changes the context only (the hand SGD update of the
   hand gradient); the token-embedding table and both towers stay bit-identical;
3. the class-token positions (end / middle / front) and unified / class-specific contexts
   follow the hand layout of the official prompt learner;
4. the paper's schedule: epoch 0 at 1e-5, epoch 1 at 0.002, then the cosine, per epoch;
5. a trained checkpoint exports with ``zoo export`` and loads with ``zoo.load``, giving the
   same logits;
plus prompts for new class names (unified context only) and the errors for bad input.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

import zoo
import zoo.fewshot.module as fewshot_module
from lightning_modules.coop import COOP_OPTIM, CoOp
from zoo.cli import main
from zoo.data import TextTokenizer
from zoo.fewshot.clip_source import load_clip
from zoo.fewshot.prompts import PromptLearner
from zoo.freeze import FrozenTowerCheck
from zoo.preprocess import PreprocessSpec
from zoo.protocols import ProtocolUnavailable

CLIP = {"encoder": {"preset": "vit-tiny-digits"}, "seed": 0}  # width 64, context 16
CONTEXT = 16
CLASSNAMES = ["dog", "golden retriever", "cat", "tabby_cat"]  # "_" becomes a space
TEMPLATE = "a photo of a {}."
# CLIP BPE ids (open_clip's vocabulary)
SOS, EOT, DOT = 49406, 49407, 269
NAME_IDS = {"dog": [1929], "golden retriever": [3878, 28394], "zebra": [22548]}


@pytest.fixture(scope="module", name="loaded_clip")
def loaded_clip_fixture():
    return load_clip(CLIP)


@pytest.fixture(autouse=True)
def _one_clip(loaded_clip, monkeypatch):
    """Every module here adapts the CLIP ``load_clip(CLIP)`` builds; it is built once and
    deep-copied per module (building it takes seconds)."""
    monkeypatch.setattr(fewshot_module, "load_clip", lambda source: copy.deepcopy(loaded_clip))


@pytest.fixture(scope="module", name="tok")
def tokenizer_fixture() -> TextTokenizer:
    return TextTokenizer("clip-bpe", CONTEXT)


class Prompted(L.LightningDataModule):
    """What a few-shot datamodule gives a prompt learner (class names, template, tokenizer,
    preprocessing) over fixed random 16 px images, in a fixed order."""

    def __init__(self, n: int = 8, batch_size: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        self.labels = torch.arange(n) % len(CLASSNAMES)
        self.classnames, self.templates = list(CLASSNAMES), [TEMPLATE]
        self.preprocess = PreprocessSpec(image_size=16, context_length=CONTEXT)
        self.tokenizer = TextTokenizer("clip-bpe", CONTEXT)
        self.batch_size = batch_size

    def _loader(self) -> DataLoader:
        rows = [{"image": x, "label": y} for x, y in zip(self.images, self.labels)]
        return DataLoader(rows, batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._loader()


def trainer(root: Path, callbacks=(), **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kwargs,
    )


def _clean(names: list[str]) -> list[str]:
    return [n.replace("_", " ") for n in names]


def test_paper_defaults():
    model = CoOp(CLIP)
    assert (model.n_ctx, model.ctx_init, model.class_specific) == (16, None, False)
    assert (model.class_token_position, model.init_std) == ("end", 0.02)
    spec = model.optim
    assert (spec.optimizer, spec.lr, spec.momentum, spec.weight_decay) == ("sgd", 0.002, 0.9, 5e-4)
    assert (spec.schedule, spec.interval, spec.warmup_epochs, spec.warmup_lr, spec.min_lr) == (
        "constant_warmup_cosine",
        "epoch",
        1.0,
        1e-5,
        0.0,
    )
    assert spec.groups == "all" and spec == COOP_OPTIM
    # a partial override keeps the rest of the paper's block
    assert CoOp(CLIP, optim={"lr": 0.01}).optim.weight_decay == 5e-4


def test_init_from_a_photo_of_a_is_zero_shot_with_that_template(tok):
    model = CoOp(CLIP, ctx_init="a photo of a").eval()
    model.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    learner = model.head.learner
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 64)
    tokens = tok([TEMPLATE.format(c) for c in _clean(CLASSNAMES)])
    length = learner.length
    assert length == 9 and (tokens[:, length:] == 0).all()  # kept up to the longest EOT
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(
            learner.prompts(), model.encoder.text.token_embedding(tokens[:, :length])
        )
        logits = model.logits(images)
        text = model.zeroshot_weights(_clean(CLASSNAMES), [TEMPLATE], tok)
        image = F.normalize(model.encoder.encode_image(images), dim=-1)
        zero_shot = model.logit_scale * image @ text.T
    torch.testing.assert_close(logits, zero_shot, rtol=1e-6, atol=1e-5)
    # a random context of the same length is not zero-shot: the check above can fail
    random = CoOp(CLIP, n_ctx=4).eval()
    random.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    with torch.no_grad():
        assert (random.logits(images) - zero_shot).abs().max() > 1e-3


def test_one_sgd_step_through_lightning_changes_only_the_context(tmp_path):
    data = Prompted(n=4, batch_size=4)
    model = CoOp(CLIP, n_ctx=4)
    model.configure_classes(data.classnames, data.templates, data.tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx0 = before["head.learner.ctx"]
    batch = next(iter(data.train_dataloader()))
    model.train()
    loss = F.cross_entropy(model.logits(batch["image"]), batch["label"])
    (grad,) = torch.autograd.grad(loss, model.head.learner.ctx)
    assert grad.abs().sum() > 0

    check = FrozenTowerCheck()  # raises at fit end if a tower changed
    fitted = trainer(tmp_path, [check], max_steps=1, max_epochs=1)
    fitted.fit(model, datamodule=data)
    params = [p for group in fitted.optimizers[0].param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is model.head.learner.ctx
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.learner.ctx"}
    token_table = "clip.module.text.model.embeddings.token_embedding.weight"
    assert torch.equal(after[token_table], before[token_table])
    assert {k.split(".")[2] for k in after if k.startswith("clip.module.")} >= {"visual", "text"}
    # SGD's first step (momentum buffer = d_p): ctx − lr·(g + wd·ctx), lr the warm-up 1e-5
    torch.testing.assert_close(
        after["head.learner.ctx"], ctx0 - 1e-5 * (grad + 5e-4 * ctx0), rtol=0, atol=1e-10
    )


# Prompt positions by hand, with M = 4 (official PromptLearner.forward; SOS at 0):
# (class-name tokens, context vectors 1..4, ".", EOT)
HAND_LAYOUT = {
    "end": {"dog": ([5], [1, 2, 3, 4], 6, 7), "golden retriever": ([5, 6], [1, 2, 3, 4], 7, 8)},
    "middle": {"dog": ([3], [1, 2, 4, 5], 6, 7), "golden retriever": ([3, 4], [1, 2, 5, 6], 7, 8)},
    "front": {"dog": ([1], [2, 3, 4, 5], 6, 7), "golden retriever": ([1, 2], [3, 4, 5, 6], 7, 8)},
}


@pytest.mark.parametrize("class_specific", [False, True], ids=["unified", "csc"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_layout_matches_the_hand_layout(tok, loaded_clip, position, class_specific):
    encoder = loaded_clip.encoder
    names = ["dog", "golden retriever"]
    for name in names:  # the vocabulary the hand layout is written in
        assert tok(name)[1 : 1 + len(NAME_IDS[name])].tolist() == NAME_IDS[name]
    torch.manual_seed(0)
    learner = PromptLearner(
        names,
        tok,
        encoder,
        n_ctx=4,
        class_specific=class_specific,
        class_token_position=position,
    )
    assert learner.ctx.shape == ((2, 4, 64) if class_specific else (4, 64))
    table = encoder.text.token_embedding.weight
    with torch.no_grad():
        prompts = learner.prompts()
    for c, name in enumerate(names):
        name_pos, ctx_pos, dot, eot = HAND_LAYOUT[position][name]
        ctx = learner.ctx[c] if class_specific else learner.ctx
        assert torch.equal(prompts[c, name_pos], table[NAME_IDS[name]])
        assert torch.equal(prompts[c, ctx_pos], ctx.detach())
        assert torch.equal(prompts[c, [0, dot, eot]], table[[SOS, DOT, EOT]])
        assert int(learner.eot_index[c]) == eot
    if class_specific:  # each class its own context
        assert not torch.equal(prompts[0, HAND_LAYOUT[position]["dog"][1]], learner.ctx[1])


def test_new_class_names_get_prompts_from_the_unified_context_only(tok):
    model = CoOp(CLIP, n_ctx=4).eval()
    model.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    encoder, ctx = model.encoder, model.head.learner.ctx.detach()
    with torch.no_grad():
        own = model.class_weights(CLASSNAMES, [TEMPLATE], tokenizer=tok)
        new = model.class_weights(["cat", "zebra"], [TEMPLATE], tokenizer=tok)
        # "zebra" by hand: [SOS] V_1..V_4 zebra . [EOS], pooled at EOT (position 7)
        table = encoder.text.token_embedding.weight
        zebra = torch.cat([table[[SOS]], ctx, table[NAME_IDS["zebra"] + [DOT, EOT]]])
        hand = encoder.encode_text_embeddings(zebra[None], torch.tensor([7]), normalize=True)
    torch.testing.assert_close(new[0], own[2], rtol=0, atol=1e-6)  # "cat" as trained
    torch.testing.assert_close(new[1], hand[0], rtol=0, atol=1e-6)
    with pytest.raises(ProtocolUnavailable, match="tokenizer"):
        model.class_weights(["zebra"], [TEMPLATE], tokenizer=None)
    csc = CoOp(CLIP, n_ctx=4, class_specific=True)
    csc.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    with pytest.raises(ProtocolUnavailable, match="class-specific"):
        csc.class_weights(["zebra"], [TEMPLATE], tokenizer=tok)


def test_a_loaded_context_meets_the_current_class_names(tok):
    trained = CoOp(CLIP, n_ctx=4).eval()
    trained.configure_classes(CLASSNAMES, [TEMPLATE], tok)
    with torch.no_grad():
        trained.head.learner.ctx.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    others = ["zebra", "cat", "horse", "golden retriever"]  # as many classes, other names
    new = CoOp(CLIP, n_ctx=4).eval()
    new.configure_classes(others, [TEMPLATE], tok)
    new.load_state_dict(trained.state_dict())  # strict: the same keys
    assert torch.equal(new.head.learner.ctx, trained.head.learner.ctx)
    with torch.no_grad():
        assert torch.equal(
            new.class_weights(others, [TEMPLATE], tokenizer=tok),
            trained.class_weights(others, [TEMPLATE], tokenizer=tok),
        )
        assert not torch.equal(
            new.class_weights(others, [TEMPLATE]), trained.class_weights(CLASSNAMES, [TEMPLATE])
        )


def test_names_ending_in_punctuation_keep_the_prompts_tokens(tok, loaded_clip):
    # CLIP's BPE merges ")" and "." into one token: the prompt is still the tokenised text
    name = "kite (bird of prey)"
    tokens = tok([f"X X X X {name}."])
    learner = PromptLearner([name], tok, loaded_clip.encoder, n_ctx=4)
    length = learner.length
    assert int(learner.eot_index[0]) == int(tokens.argmax()) == length - 1
    with torch.no_grad():
        prompts = learner.prompts()
    table = loaded_clip.encoder.text.token_embedding.weight
    keep = [0, *range(5, length)]  # SOS, the name, ")." and EOT
    assert torch.equal(prompts[0, keep], table[tokens[0, keep]])


def test_bad_prompts_fail_naming_the_problem(tok, loaded_clip):
    # M = 16 context tokens cannot fit CLIP's context of 16 with a class name
    with pytest.raises(ValueError, match=r"'golden retriever'.*context length 16"):
        PromptLearner(["golden retriever"], tok, loaded_clip.encoder, n_ctx=16)
    # an init phrase whose words are several BPE tokens each
    with pytest.raises(ValueError, match="one token per word"):
        PromptLearner(["dog"], tok, loaded_clip.encoder, ctx_init="a zyxwvutsrq of")
    with pytest.raises(ValueError, match="class_token_position"):
        PromptLearner(["dog"], tok, loaded_clip.encoder, n_ctx=4, class_token_position="back")


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_constant_warmup_epoch_then_cosine_per_epoch(tmp_path):
    record = _LearningRates()
    data = Prompted(n=8, batch_size=4)  # 2 optimiser steps per epoch
    trainer(tmp_path, [record], max_epochs=4).fit(CoOp(CLIP, n_ctx=4), datamodule=data)
    # Dassl: ConstantWarmupScheduler (1 epoch at 1e-5) around CosineAnnealingLR(T_max=4),
    # whose epoch 0 is the run's epoch 1
    cosine = [0.001 * (1 + math.cos(math.pi * i / 4)) for i in range(3)]
    assert cosine[0] == 0.002
    expected = [1e-5, 1e-5, *[lr for lr in cosine for _ in range(2)]]
    assert record.lrs == pytest.approx(expected, rel=1e-12, abs=0)


def test_trained_checkpoint_exports_and_loads_with_the_same_logits(tmp_path):
    data = Prompted(n=8, batch_size=4)
    model = CoOp(CLIP, n_ctx=4, class_token_position="middle")
    model.configure_classes(data.classnames, data.templates, data.tokenizer)
    ctx0 = model.head.learner.ctx.detach().clone()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [ckpt], max_epochs=2, enable_checkpointing=True).fit(model, datamodule=data)
    model.eval()
    assert not torch.equal(model.head.learner.ctx, ctx0)  # it trained

    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "ckpt" / "last.ckpt"), "--name", "coop-test"]
    argv += ["--out", str(out), "--trust-pickle", "--class-path", "lightning_modules.coop.CoOp"]
    assert main(argv) == 0
    loaded = zoo.load(f"local-dir:{out}")
    arch = loaded.config["architecture"]
    assert arch["type"] == "clip_head" and arch["head"]["type"] == "coop"
    head_config = arch["head"]["config"]
    assert head_config["classnames"] == CLASSNAMES
    assert (head_config["n_ctx"], head_config["class_token_position"]) == (4, "middle")
    with torch.no_grad():
        assert torch.equal(loaded.logits(data.images), model.logits(data.images))
        assert torch.equal(loaded.class_weights(), model.head.class_weights(model.encoder))
