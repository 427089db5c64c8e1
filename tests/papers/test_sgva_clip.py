"""SgVA-CLIP's defining properties (the card's faithfulness tests), on tiny models.

The "CLIP" is the random tiny digits dual encoder (``vit-tiny-digits`` preset: ViT width 64,
bias-free projection 64 → 64, 2-layer text tower with the CLIP BPE vocabulary), built once
and copied per module. The RN50 case, a projection *with* bias of full row rank, is checked
on the card's hand-set ``Linear(16 → 8)`` with bias through the same functions and head.

1. frozen CLIP bit-identical after one step of both optimisers, while ctx, W₁, W₂ and α
   moved; the step equals the official sequence (prompt SGD on L_prompt, then adapter SGD on
   the un-detached L_adapter); the un-detached variant moves ctx differently;
2. pre-projection round trip ``((f − b)·pinv(Wᵀ))Wᵀ + b = f`` (1e-5) and, with an identity
   adapter, the re-projection gives the CLIP embedding back; l^{vt} is ``s⟨x̂Wᵀ + b, t⟩``
   un-normalised, by hand;
3. L_KD at equality is the teacher's entropy with zero gradient; a hand value (no T²);
4. prototypes on a 3-way 2-shot toy are the hand means; the module's are the K-shot set's;
5. fusion λ = 1 / 0 / 0.5 by hand, and ZeroShotEval scores the fused classifier;
6. the episode sampler's counts and determinism, and the episodic datamodule;
7. both schedules stepped per epoch under manual optimisation; export → load round trip.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader, default_collate

import zoo
import zoo.fewshot.module as fewshot_module
from lightning_modules.sgva_clip import SGVA_ADAPTER_OPTIM, SGVA_PROMPT_OPTIM, SgVACLIP
from zoo.cli import main
from zoo.data import TextTokenizer
from zoo.eval import ZeroShotEval
from zoo.fewshot.clip_source import load_clip
from zoo.fewshot.episodes import (
    EpisodeCollate,
    EpisodeSampler,
    EpisodicBatchSampler,
    EpisodicFewShotDataModule,
)
from zoo.fewshot.prompts import PromptLearner
from zoo.fewshot.sgva import (
    SgVAAdapter,
    SgVAHead,
    class_prototypes,
    kd_loss,
    projection_pinv,
    recover_pre_projection,
)
from zoo.freeze import FrozenTowerCheck
from zoo.preprocess import PreprocessSpec

CLIP = {"encoder": {"preset": "vit-tiny-digits"}, "seed": 0}  # width 64, context 16
CONTEXT = 16
CLASSNAMES = ["dog", "cat", "bird"]
TEMPLATE = "a photo of a {}."
CONSTANT = {"schedule": "constant", "warmup_epochs": 0}


@pytest.fixture(scope="module", name="loaded_clip")
def loaded_clip_fixture():
    return load_clip(CLIP)


@pytest.fixture(autouse=True)
def _one_clip(loaded_clip, monkeypatch):
    """Every module adapts the CLIP ``load_clip(CLIP)`` builds, built once and copied."""
    monkeypatch.setattr(fewshot_module, "load_clip", lambda source: copy.deepcopy(loaded_clip))


@functools.cache
def _tokenizer() -> TextTokenizer:
    return TextTokenizer("clip-bpe", CONTEXT)


class Episodes(L.LightningDataModule):
    """Class names, template, tokenizer and fixed random 16 px images (``per_class`` per
    class), trained in episodes of :class:`EpisodicBatchSampler`; every evaluation split is
    the training images in order."""

    def __init__(self, per_class: int = 4, way: int = 3, shots: int = 4, episodes: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n = per_class * len(CLASSNAMES)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        self.labels = torch.arange(n) % len(CLASSNAMES)
        self.classnames, self.templates = list(CLASSNAMES), [TEMPLATE]
        self.preprocess = PreprocessSpec(image_size=16, context_length=CONTEXT)
        self.tokenizer = _tokenizer()
        self.way, self.shots, self.episodes = way, shots, episodes

    def rows(self) -> list[dict]:
        return [{"image": x, "label": y} for x, y in zip(self.images, self.labels)]

    def train_dataloader(self) -> DataLoader:
        sampler = EpisodicBatchSampler(self.labels, self.way, self.shots, episodes=self.episodes)
        collate = EpisodeCollate(default_collate, sampler.sampler.support_size)
        return DataLoader(self.rows(), batch_sampler=sampler, collate_fn=collate)

    def eval_dataloader(self, split: str) -> DataLoader:
        return DataLoader(self.rows(), batch_size=5, shuffle=False)


class Batches(Callback):
    """The training batches, as the module received them."""

    def __init__(self):
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({k: v.clone() for k, v in batch.items()})


class LearningRates(Callback):
    def __init__(self):
        self.lrs: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        prompt, adapter = trainer.optimizers
        self.lrs.append((prompt.param_groups[0]["lr"], adapter.param_groups[0]["lr"]))


def trainer(root: Path, callbacks=(), **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kwargs,
    )


def sgva(data: Episodes, **kwargs) -> SgVACLIP:
    kwargs.setdefault("ctx_init", "a photo of a")
    model = SgVACLIP(CLIP, **kwargs)
    model.configure_classes(data.classnames, data.templates, data.tokenizer)
    return model


def hand_adapted(head: SgVAHead, f: torch.Tensor) -> torch.Tensor:
    """x̂ by hand from the head's weights: x = (f − b)·pinv(Wᵀ) (torch.linalg), x̃ =
    ReLU(α W₂ ReLU(W₁ x) + (1 − α) x), x̂ = x̃/‖x̃‖."""
    w, b = head.proj_weight.double(), head.proj_bias.double()
    x = ((f.double() - b) @ torch.linalg.pinv(w.t())).float()
    a = head.adapter
    alpha = a.alpha.detach()
    hidden = torch.relu(x @ a.linear1.weight.detach().t()) @ a.linear2.weight.detach().t()
    out = torch.relu(alpha * hidden + (1 - alpha) * x)
    return out / out.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------ 2. pre-projection
def test_pseudo_inverse_round_trip_gives_the_embedding_back():
    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 8)  # the card's RN50-like projection: W (8, 16), with bias
    x = torch.randn(5, 16)
    f = proj(x).detach().requires_grad_()
    w, b = proj.weight.detach(), proj.bias.detach()
    recovered = recover_pre_projection(f, projection_pinv(w), b)
    assert not recovered.requires_grad  # no gradient into CLIP
    assert torch.allclose(recovered @ w.t() + b, f.detach(), atol=1e-5, rtol=0)
    # 16 → 8 forgets: x itself is not recovered, its minimum-norm preimage is
    assert not torch.allclose(recovered, x, atol=1e-2)

    # the head does the same with the frozen projection it copies, and with an identity
    # adapter (no final ReLU) the re-projection through that projection is f itself
    learner = PromptLearner(["a", "b"], None, None, n_ctx=2, width=4, length=6)
    head = SgVAHead(learner, embed_dim=8, trunk_dim=16)
    head.set_projection(w, b)
    assert torch.allclose(head.reproject(head.pre_projection(f)), f.detach(), atol=1e-5, rtol=0)


def test_l_vt_is_the_unnormalised_reprojection_against_the_prompts(loaded_clip):
    data = Episodes(per_class=2, shots=2)
    model = sgva(data)
    head = model.head
    with torch.no_grad():  # a bias, so that the re-projection's "+ b" is exercised
        head.proj_bias.normal_()
    batch = {"image": data.images, "label": data.labels}
    logits = model.episode_logits(batch)
    with torch.no_grad():
        f = model.encoder.encode_image(data.images)
        text = head.class_weights(model.encoder)
        s = model.encoder.logit_scale.exp()
        x_hat = hand_adapted(head, f)
        reprojected = x_hat @ head.proj_weight.t() + head.proj_bias
        expected = s * reprojected @ text.t()
        normalised = s * F.normalize(reprojected, dim=-1) @ text.t()
        text_logits = s * F.normalize(f, dim=-1) @ text.t()
    assert torch.allclose(logits["vt"], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits["vt"], normalised, atol=1e-2)  # the code does not normalise
    assert torch.allclose(logits["it"], text_logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- 3. KD
def test_kd_at_equality_is_the_teacher_entropy_with_zero_gradient():
    torch.manual_seed(0)
    teacher = torch.randn(4, 7) * 10
    student = teacher.clone().requires_grad_()
    loss = kd_loss(student, teacher, temperature=5.0)
    p = F.softmax(teacher / 5.0, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(student.grad, torch.zeros_like(student), atol=1e-8)


def test_kd_by_hand_has_no_t_squared_factor():
    # teacher/T = [0, ln 3] → softmax [1/4, 3/4]; student uniform → −Σ q log ½ = ln 2
    teacher = torch.tensor([[0.0, 5.0 * math.log(3.0)]])
    student = torch.zeros(1, 2)
    assert kd_loss(student, teacher, temperature=5.0).item() == pytest.approx(math.log(2), rel=1e-6)


# ------------------------------------------------------------------ 4. prototypes
def test_prototypes_are_the_hand_means_of_a_3_way_2_shot_toy():
    features = torch.tensor(
        [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0], [-1.0, 4.0], [2.0, 2.0]]
    )
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    expected = torch.tensor([[0.5, 1.5], [2.5, 1.5], [0.0, 2.0]])  # classes 0, 1, 2
    assert torch.equal(class_prototypes(features, labels, 3), expected)


def test_adapter_by_hand_and_its_official_shape():
    adapter = SgVAAdapter(dim=2, hidden=4)
    assert adapter.alpha.item() == 0.5  # α initialised to 0.5
    assert adapter.linear1.bias is None and adapter.linear2.bias is None
    with torch.no_grad():
        adapter.linear1.weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
        )
        adapter.linear2.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, -2.0, 0.0, 1.0]]))
    x = torch.tensor([[2.0, -1.0]])
    # ReLU(W₁x) = [2, 0, 0, 0]; W₂· = [2, 0]; ½·[2, 0] + ½·[2, −1] = [2, −½]; ReLU → [2, 0]
    assert torch.equal(adapter(x), torch.tensor([[2.0, 0.0]]))


# ------------------------------------------------------------------------ 5. fusion
def test_fusion_weight_selects_the_branch():
    learner = PromptLearner(CLASSNAMES, None, None, n_ctx=2, width=4, length=6)
    head = SgVAHead(learner, embed_dim=2, trunk_dim=2, fusion_weight=1.0)
    head.set_projection(torch.eye(2))
    with torch.no_grad():  # an identity-like adapter on the positive quadrant
        head.adapter.alpha.zero_()
    head.set_prototypes(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), step=0)
    f = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    s = torch.tensor([10.0])
    vision = s * F.normalize(f, dim=-1) @ head.prototypes.t()
    textual = s * F.normalize(f, dim=-1) @ text.t()
    assert not torch.equal(vision.argmax(-1), textual.argmax(-1))  # the branches disagree
    assert torch.allclose(head.fused_logits(f, text, s), vision)
    assert torch.equal(head.fused_logits(f, text, s).argmax(-1), vision.argmax(-1))
    head.fusion_weight = 0.0
    assert torch.equal(head.fused_logits(f, text, s).argmax(-1), textual.argmax(-1))
    head.fusion_weight = 0.5
    assert torch.allclose(head.fused_logits(f, text, s), 0.5 * vision + 0.5 * textual)


def test_a_head_without_prototypes_refuses_to_classify():
    learner = PromptLearner(CLASSNAMES, None, None, n_ctx=2, width=4, length=6)
    head = SgVAHead(learner, embed_dim=2, trunk_dim=2)
    with pytest.raises(RuntimeError, match="no class prototypes"):
        head.fused_logits(torch.ones(1, 2), torch.ones(3, 2), torch.tensor([1.0]))


# ---------------------------------------------- 1. one step of both optimisers
def _official_step(head0, encoder, batch, prompt_lr, adapter_lr, temperature=5.0):
    """The official ``main.py`` sequence on a copy of the initial head: prompt SGD on
    CE(l^{it}), ``backward(retain_graph=True)``, step; adapter SGD on CE(l^{vv}) + L_KD
    with the teacher *not* detached, backward, step."""
    head = copy.deepcopy(head0)
    sgd = {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    prompt_opt = torch.optim.SGD(head.learner.parameters(), lr=prompt_lr, **sgd)
    adapter_opt = torch.optim.SGD(head.adapter.parameters(), lr=adapter_lr, **sgd)
    f = encoder.encode_image(batch["image"]).detach()
    s = encoder.logit_scale.exp().detach()
    y = batch["label"]
    text = head.learner.text_features(encoder)
    l_it = s * F.normalize(f, dim=-1) @ text.t()
    x_hat = head.adapt(f)
    classes, epi = torch.unique(y, sorted=True, return_inverse=True)
    one_hot = F.one_hot(epi, len(classes)).float()
    prototypes = (one_hot.t() @ x_hat) / one_hot.sum(0)[:, None]
    l_vv = s * x_hat @ prototypes.t()
    l_vt = s * (x_hat @ head.proj_weight.t() + head.proj_bias) @ text.t()
    prompt_opt.zero_grad()
    F.cross_entropy(l_it, y).backward(retain_graph=True)
    prompt_opt.step()
    adapter_opt.zero_grad()
    kd = -(F.softmax(l_it / temperature, -1) * F.log_softmax(l_vt / temperature, -1)).sum(-1)
    (F.cross_entropy(l_vv, epi) + kd.mean()).backward()
    adapter_opt.step()
    return head


@pytest.fixture(scope="module", name="one_step")
def one_step_fixture(loaded_clip, tmp_path_factory):
    """One episode (all 3 classes × 4 shots, support = query) through Lightning, constant
    learning rates 0.1 (prompt) and 0.2 (adapter)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fewshot_module, "load_clip", lambda source: copy.deepcopy(loaded_clip))
        data = Episodes()
        model = sgva(
            data, prompt_optim={**CONSTANT, "lr": 0.1}, adapter_optim={**CONSTANT, "lr": 0.2}
        )
        encoder0 = copy.deepcopy(model.encoder.state_dict())
        head0 = copy.deepcopy(model.head)
        seen = Batches()
        fit = trainer(tmp_path_factory.mktemp("one_step"), [seen, FrozenTowerCheck()], max_epochs=1)
        fit.fit(model, datamodule=data)
    return {
        "data": data,
        "model": model,
        "encoder0": encoder0,
        "head0": head0,
        "batches": seen.batches,
        "steps": fit.global_step,
    }


def test_one_step_moves_only_the_prompt_and_adapter_as_the_official_code(one_step, tmp_path):
    model, head0, batches = one_step["model"], one_step["head0"], one_step["batches"]
    assert len(batches) == 1 and bool(batches[0]["support"].all())
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, one_step["encoder0"][name]), name  # frozen, bit-identical
    head = model.head
    for name in (
        "learner.ctx",
        "adapter.linear1.weight",
        "adapter.linear2.weight",
        "adapter.alpha",
    ):
        before, after = head0.get_parameter(name), head.get_parameter(name)
        assert not torch.equal(before, after), f"{name} did not move"

    official = _official_step(head0, model.encoder, batches[0], 0.1, 0.2)
    for name, param in official.named_parameters():
        assert torch.allclose(head.get_parameter(name), param, atol=1e-6, rtol=1e-5), name

    # not detached: L_KD also trains the context; the adapter's step is the same
    data = one_step["data"]
    literal = sgva(data, detach_teacher=False)
    literal.prompt_optim, literal.adapter_optim = model.prompt_optim, model.adapter_optim
    literal.head.load_state_dict(head0.state_dict())
    trainer(tmp_path, max_epochs=1).fit(literal, datamodule=data)
    assert not torch.allclose(literal.head.learner.ctx, head.learner.ctx, atol=1e-6)
    for name, param in head.adapter.named_parameters():
        assert torch.allclose(literal.head.adapter.get_parameter(name), param, atol=1e-6), name


def test_prompt_loss_is_the_cross_entropy_of_the_unique_query_rows():
    """The official "unique" arrangement: K rows of N queries of distinct classes, every
    query once; its mean cross-entropy is the module's L_prompt."""
    data = Episodes(per_class=4, shots=4)
    model = sgva(data)
    batch = {"image": data.images, "label": data.labels}
    logits = model.episode_logits(batch)
    terms = model.episode_terms(batch)
    rng = np.random.default_rng(0)
    per_class = [rng.permutation(np.flatnonzero(data.labels.numpy() == c)) for c in range(3)]
    rows = [rng.permutation([ids[r] for ids in per_class]) for r in range(4)]  # (K, N)
    order = torch.tensor(np.concatenate(rows))
    unique = F.cross_entropy(logits["it"][order], data.labels[order])
    assert terms["prompt_loss"].item() == pytest.approx(unique.item(), rel=1e-6)


# ------------------------------------------- 4 (module). prototypes of the K-shot set
def test_prototypes_after_a_fit_are_the_train_set_class_means(one_step):
    data, model = one_step["data"], one_step["model"]
    with torch.no_grad():
        x_hat = hand_adapted(model.head, model.encoder.encode_image(data.images))
    expected = torch.stack([x_hat[data.labels == c].mean(0) for c in range(3)])
    assert torch.allclose(model.head.prototypes, expected, atol=1e-5)
    # refreshed after the step (two optimiser steps: Lightning counts both)
    assert int(model.head.prototype_step) == one_step["steps"] == 2


def test_zero_shot_eval_scores_the_fused_classifier(tmp_path):
    data = Episodes()
    model = sgva(data, fusion_weight=1.0)  # λ = 1: the prototype branch alone
    callback = ZeroShotEval(split="test", name="fewshot", log_images=False)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=data)
    with torch.no_grad():
        f = model.encoder.encode_image(data.images)
        s = model.encoder.logit_scale.exp()
        prototype = (s * hand_adapted(model.head, f) @ model.head.prototypes.t()).argmax(-1)
        text = model.head.class_weights(model.encoder)
        cosine = (F.normalize(f, dim=-1) @ text.t()).argmax(-1)
    fused_acc = (prototype == data.labels).float().mean().item() * 100
    cosine_acc = (cosine == data.labels).float().mean().item() * 100
    assert fused_acc != cosine_acc  # a plain cosine score would give another number
    assert callback.results["eval/fewshot_top1"] == pytest.approx(fused_acc, abs=1e-4)


# ------------------------------------------------------- 7. schedules and export
def test_both_schedules_warm_up_one_epoch_then_cosine_per_epoch(tmp_path):
    data = Episodes()
    model = sgva(data, prompt_optim={"lr": 0.02}, adapter_optim={"lr": 0.04})
    assert (model.prompt_optim.optimizer, model.prompt_optim.nesterov) == ("sgd", True)
    assert (SGVA_PROMPT_OPTIM.momentum, SGVA_PROMPT_OPTIM.weight_decay) == (0.9, 5e-4)
    assert SGVA_ADAPTER_OPTIM.warmup_lr == 1e-5 and SGVA_ADAPTER_OPTIM.interval == "epoch"
    record = LearningRates()
    trainer(tmp_path, [record], max_epochs=3).fit(model, datamodule=data)
    # epoch 0: the constant warm-up; epochs 1, 2: ½·lr·(1 + cos(π i / 3)), i = 0, 1
    cosine = [0.5 * (1 + math.cos(math.pi * i / 3)) for i in range(2)]
    expected = [(1e-5, 1e-5)] + [(0.02 * c, 0.04 * c) for c in cosine]
    assert record.lrs == [pytest.approx(e, rel=1e-12) for e in expected]


class StopAfter(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True


def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """The schedulers are stepped by the module (manual optimisation) before the epoch-end
    checkpoint: a fit stopped after its warm-up epoch and resumed ends where the whole fit
    ends (a scheduler stepped after the save would train epoch 1 at the warm-up lr)."""
    data = Episodes()

    def fit(root: Path, callbacks=(), resume: str | None = None) -> SgVACLIP:
        L.seed_everything(0)
        model = sgva(data, prompt_optim={"lr": 0.05}, adapter_optim={"lr": 0.05})
        ckpt = ModelCheckpoint(dirpath=root, save_last=True)
        run = trainer(tmp_path, [ckpt, *callbacks], max_epochs=2, enable_checkpointing=True)
        run.fit(model, datamodule=data, ckpt_path=resume, weights_only=False)
        return model

    whole = fit(tmp_path / "whole")
    fit(tmp_path / "first", [StopAfter(1)])
    resumed = fit(tmp_path / "again", resume=str(tmp_path / "first" / "last.ckpt"))
    for name, tensor in whole.head.state_dict().items():
        assert torch.equal(resumed.head.state_dict()[name], tensor), name


def test_trained_checkpoint_exports_and_loads_with_the_same_logits(tmp_path):
    data = Episodes()
    model = sgva(data, ctx_init="ensemble", prompt_optim={**CONSTANT, "lr": 0.1})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [ckpt], max_epochs=2, enable_checkpointing=True).fit(model, datamodule=data)
    model.eval()
    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "ckpt" / "last.ckpt"), "--name", "sgva-test", "--out"]
    argv += [str(out), "--trust-pickle", "--class-path", "lightning_modules.sgva_clip.SgVACLIP"]
    assert main(argv) == 0
    loaded = zoo.load(f"local-dir:{out}")
    head = loaded.config["architecture"]["head"]
    assert head["type"] == "sgva" and head["config"]["classnames"] == CLASSNAMES
    assert (head["config"]["n_ctx"], head["config"]["fusion_weight"]) == (4, 0.5)
    with torch.no_grad():
        assert torch.equal(loaded.logits(data.images), model.logits(data.images))


# -------------------------------------------------------------- 6. episodes
def test_episode_sampler_counts_and_support_query_split():
    labels = np.repeat(np.arange(6), 5)  # 6 classes × 5 images
    sampler = EpisodeSampler(labels, way=3, shots=2, queries=2, episodes=4, seed=7)
    assert len(sampler) == 4 * 3 * (2 + 2) and sampler.support_size == 6
    for _, episode in sampler.rank_episodes(epoch=0):
        support, query = episode[:6], episode[6:]
        assert len(set(episode.tolist())) == len(episode)  # no image twice in an episode
        classes = labels[support].reshape(3, 2)  # class-major, ascending classes
        assert (classes == classes[:, :1]).all() and (np.diff(classes[:, 0]) > 0).all()
        assert sorted(labels[query].tolist()) == sorted(labels[support].tolist())
    # one list per episode through the batch sampler
    batches = list(EpisodicBatchSampler(labels, 3, 2, 2, episodes=4, seed=7))
    assert [len(b) for b in batches] == [12] * 4


def test_episode_sampler_is_a_function_of_seed_and_epoch():
    labels = np.repeat(np.arange(10), 16)
    a = EpisodeSampler(labels, way=5, shots=16, seed=3)  # queries 0: the support only
    b = EpisodeSampler(labels, way=5, shots=16, seed=3)
    assert a.episodes == 2 and len(a) == 2 * 5 * 16  # C // way episodes
    a.set_epoch(4)
    b.set_epoch(4)
    keys = list(a)
    assert keys == list(b)
    assert [k.epoch for k in keys[:: 5 * 16]] == [8, 9]  # the global episode numbers
    b.set_epoch(5)
    assert keys != list(b)
    assert list(EpisodeSampler(labels, way=5, shots=16, seed=4)) != list(
        EpisodeSampler(labels, way=5, shots=16, seed=3)
    )
    # ranks take alternate episodes of the same plan
    plan = a.plan(4)
    ranks = [EpisodeSampler(labels, 5, 16, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    got = [r.rank_episodes(4)[0][1] for r in ranks]
    assert all(np.array_equal(g, p) for g, p in zip(got, plan))


def test_episode_sampler_refuses_what_the_pool_cannot_give():
    labels = np.repeat(np.arange(4), 16)
    with pytest.raises(ValueError, match="class 0 has only 16"):
        EpisodeSampler(labels, way=2, shots=16, queries=1)
    with pytest.raises(ValueError, match="exceeds the 4 classes"):
        EpisodeSampler(labels, way=5, shots=2)


def _coop_layout(root: Path, per_class: int = 6) -> None:
    """A tiny CoOp split file over 3 classes of 16 px PNGs."""
    rng = np.random.default_rng(0)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSNAMES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(per_class + 4):
            rel = f"{name}/{i}.png"
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / rel)
            part = "train" if i < per_class else ("val" if i < per_class + 2 else "test")
            split[part].append([rel, label, name])
    (root / "split.json").write_text(json.dumps(split))


def test_episodic_datamodule_yields_the_episodes_of_its_kshot_set(tmp_path):
    _coop_layout(tmp_path)

    def datamodule(**episode) -> EpisodicFewShotDataModule:
        return EpisodicFewShotDataModule(
            root=str(tmp_path),
            split_file="split.json",
            image_dir="images",
            shots=4,
            preprocess=PreprocessSpec(image_size=16, context_length=CONTEXT),
            split_cache=str(tmp_path / "cache"),
            **episode,
        )

    def batches(dm: EpisodicFewShotDataModule) -> list[dict]:
        dm.prepare_data()
        dm.setup("fit")
        return list(dm.train_dataloader())

    episode = {"episode_way": 2, "episode_shots": 3, "episode_queries": 1, "episodes_per_epoch": 3}
    got = batches(datamodule(**episode))
    train_labels = datamodule().build_dataset("train").labels
    assert len(got) == 3 and sorted(train_labels.tolist()) == sorted([0, 1, 2] * 4)
    for batch in got:
        assert batch["image"].shape == (8, 3, 16, 16)
        assert batch["support"].tolist() == [True] * 6 + [False] * 2
        support, query = batch["label"][:6].view(2, 3), batch["label"][6:]
        assert (support == support[:, :1]).all() and support[0, 0] < support[1, 0]
        assert query.tolist() == support[:, 0].tolist()
    again = batches(datamodule(**episode))  # the same seed and epoch: the same episodes
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, again))
    # a resumed run continues mid-epoch with the episodes it had not trained on yet
    first = datamodule(**episode)
    first.prepare_data()
    first.setup("fit")
    next(iter(first.train_dataloader()))
    resumed = datamodule(**episode)
    resumed.load_state_dict(first.state_dict())
    rest = batches(resumed)
    assert len(rest) == 2 and all(
        torch.equal(a["image"], b["image"]) for a, b in zip(got[1:], rest)
    )
    # the default: all classes, the whole K-shot pool as support, one episode per epoch
    (only,) = batches(datamodule())
    assert only["support"].all() and sorted(only["label"].tolist()) == sorted([0, 1, 2] * 4)
    with pytest.raises(ValueError, match="images per class"):
        batches(datamodule(episode_shots=4, episode_queries=1))
