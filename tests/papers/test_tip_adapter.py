"""Tip-Adapter / Tip-Adapter-F: the cache model's logits by hand, α = 0 is zero-shot CLIP, a
matching key dominates the cache, the α/β search picks what the official loop
(``utils.search_hp``) picks, Tip-Adapter-F starts as Tip-Adapter, and a Tip-Adapter-F step
trains the cache keys only (frozen CLIP bit-identical)."""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import zoo
from lightning_modules.tip_adapter import TIP_ADAPTER_F_OPTIM, TipAdapter
from zoo.cli import main
from zoo.eval import ZeroShotEval
from zoo.eval.zeroshot import zeroshot_logits
from zoo.fewshot.cache_model import (
    TipAdapterHead,
    cache_logits,
    search_alpha_beta,
    search_grid,
)
from zoo.fewshot.clip_source import load_clip
from zoo.fewshot.feature_cache import fewshot_features
from zoo.freeze import FrozenTowerCheck

from ._fewshot_layout import PACKAGE, digits_datamodule, write_digits_layout

CLASSES = ["zero", "one", "two", "three"]
SMALL_GRID = dict(search_scale=(7.0, 3.0), search_step=(20, 5))


# --------------------------------------------------------------------------- references
def official_search(features, keys, key_labels, clip_weights, labels, betas, alphas):
    """``utils.search_hp`` as written: a loop over β then α, the affinity recomputed at every
    point, one-hot values, ``100. * features @ clip_weights``, top-1 by ``topk``, strict ``>``.
    Returns (best β, best α, correct counts per grid point)."""
    values = F.one_hot(key_labels, clip_weights.shape[1]).float()
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    counts = torch.zeros(len(betas), len(alphas), dtype=torch.long)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            affinity = features @ keys.t()
            cache = ((-1) * (beta - beta * affinity)).exp() @ values
            clip = 100.0 * features @ clip_weights
            tip = clip + cache * alpha
            correct = int((tip.topk(1, 1, True, True)[1][:, 0] == labels).sum())
            counts[i, j] = correct
            acc = 100 * correct / len(labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, counts


def _head(embed_dim: int, keys: torch.Tensor, labels: torch.Tensor, text: torch.Tensor):
    head = TipAdapterHead(embed_dim, CLASSES[: text.shape[0]], keys.shape[0])
    head.set_cache(keys, labels)
    head.text_weights.copy_(text)
    return head


# ------------------------------------------------------------------------------ the math
def test_two_class_hand_calculation():
    """Keys e₁, e₂ (one shot per class), f = (0.8, 0.6), β = 1, α = 1: the cache logits are
    [e^{−0.2}, e^{−0.4}]; with W = I the CLIP term is 100·f = [80, 60]."""
    head = _head(2, torch.eye(2), torch.tensor([0, 1]), torch.eye(2))
    head.set_hyperparameters(alpha=1.0, beta=1.0)
    f = torch.tensor([[0.8, 0.6]])
    cache = cache_logits(head.keys(f), head.key_labels, 2, head.beta)
    torch.testing.assert_close(cache, torch.tensor([[math.exp(-0.2), math.exp(-0.4)]]))
    logits = head.logits(encoder=None, image_features=3 * f)  # normalised first
    expected = torch.tensor([[80 + math.exp(-0.2), 60 + math.exp(-0.4)]])
    torch.testing.assert_close(logits, expected, rtol=0, atol=2e-5)


def test_a_matching_key_dominates_the_cache():
    """f equal to key i, the other keys orthogonal, β = 50: the cache's class distribution
    (A L normalised to sum 1, i.e. the softmax over keys of −β(1 − f·F_j) summed per class)
    puts more than 1 − 1e-6 on label(i). (The raw cache logits lie in [0, 1], so their own
    softmax cannot be that peaked.)"""
    keys = torch.eye(8)  # 8 orthonormal keys, 2 per class
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    head = _head(8, keys, labels, F.normalize(torch.ones(4, 8), dim=-1))
    head.set_hyperparameters(alpha=1.0, beta=50.0)
    for i in range(8):
        cache = cache_logits(head.keys(keys[i : i + 1]), head.key_labels, 4, head.beta)[0]
        p = cache / cache.sum()
        assert int(p.argmax()) == int(labels[i])
        assert float(p[labels[i]]) > 1 - 1e-6


def test_alpha_zero_is_zero_shot_clip_exactly():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(4, 16), dim=-1)
    head = _head(16, F.normalize(torch.randn(12, 16), dim=-1), torch.arange(4).repeat(3), text)
    head.set_hyperparameters(alpha=0.0, beta=5.5)
    f = torch.randn(7, 16)
    assert torch.equal(head.logits(None, f), zeroshot_logits(f, text))  # 100·f̂ Wᵀ
    head.set_hyperparameters(alpha=1.17, beta=5.5)
    assert not torch.equal(head.logits(None, f), zeroshot_logits(f, text))


def test_bfloat16_affinity_is_within_bfloat16_rounding_and_reaches_the_search():
    """``affinity_dtype="bfloat16"``: affinities within bfloat16 rounding of the float32
    ones (|ΔA| ≤ 2⁻⁷ for unit vectors: operands and result each rounded to 8 bits), not
    equal to them (the flag acts), and the search counts with that same affinity."""
    from zoo.fewshot.cache_model import affinity_product

    torch.manual_seed(0)
    text = F.normalize(torch.randn(4, 16), dim=-1)
    keys = F.normalize(torch.randn(12, 16), dim=-1)
    labels = torch.arange(4).repeat(3)
    f = F.normalize(torch.randn(7, 16), dim=-1)
    exact, rounded = f @ keys.t(), affinity_product(f, keys, "bfloat16")
    assert rounded.dtype == torch.float32
    assert float((rounded - exact).abs().max()) <= 2**-7 and not torch.equal(rounded, exact)
    with pytest.raises(ValueError, match="affinity dtype"):
        affinity_product(f, keys, "float16")

    fast = TipAdapterHead(16, CLASSES, 12, affinity_dtype="bfloat16")
    fast.set_cache(keys, labels)
    fast.text_weights.copy_(text)
    fast.set_hyperparameters(alpha=1.17, beta=5.5)
    stored = affinity_product(f, fast.keys.weight, "bfloat16")  # the head's key order
    one_hot = F.one_hot(fast.key_labels, 4).float()
    by_hand = 100.0 * f @ text.t() + 1.17 * (torch.exp(-5.5 * (1 - stored)) @ one_hot)
    torch.testing.assert_close(fast.tip_logits(f, text), by_hand, rtol=0, atol=1e-4)
    assert fast.to_config()["affinity_dtype"] == "bfloat16"

    y = torch.randint(0, 4, (7,))
    clip = 100.0 * f @ text.t()
    betas, alphas = search_grid(7.0, 5), search_grid(3.0, 4)
    searched = search_alpha_beta(f, keys, labels, clip, y, betas, alphas, affinity_dtype="bfloat16")
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):  # the official loop on the bfloat16 affinity
            weights = ((-1) * (beta - beta * rounded)).exp()
            logits = clip + weights @ F.one_hot(labels, 4).float() * alpha
            assert int(searched.correct[i, j]) == int((logits.argmax(1) == y).sum())


def test_clip_scale_none_uses_the_clip_logit_scale():
    encoder = load_clip({"encoder": {"preset": "vit-tiny-digits"}}).encoder
    with torch.no_grad():
        encoder.logit_scale.fill_(math.log(20.0))
    text = F.normalize(torch.randn(4, 64), dim=-1)
    head = TipAdapterHead(64, CLASSES, 4, clip_scale=None)
    head.set_cache(F.normalize(torch.randn(4, 64), dim=-1), torch.arange(4))
    head.text_weights.copy_(text)
    head.set_hyperparameters(alpha=0.0, beta=1.0)
    f = torch.randn(3, 64)
    torch.testing.assert_close(head.logits(encoder, f), zeroshot_logits(f, text, 20.0))


def test_unbalanced_cache_sums_per_class():
    """Classes with different numbers of keys (a class with fewer than K images): each
    class's cache logit is the sum over its own keys, whatever the storage order."""
    torch.manual_seed(1)
    keys = F.normalize(torch.randn(7, 16), dim=-1)
    labels = torch.tensor([2, 0, 0, 1, 3, 0, 2])
    head = _head(16, keys, labels, F.normalize(torch.randn(4, 16), dim=-1))
    f = F.normalize(torch.randn(5, 16), dim=-1)
    got = cache_logits(head.keys(f), head.key_labels, 4, 2.0)
    weights = torch.exp(-2.0 * (1 - f @ keys.t()))
    expected = torch.stack([weights[:, labels == c].sum(1) for c in range(4)], 1)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------- the search
def _hand_built():
    """Two samples, two classes, one key each (e₀, e₁), both samples at f = e₀, so the
    cache margin of class 0 is h = α(1 − e^{−β}). Sample A (class 0) trails class 1 by 0.64
    in CLIP logits, sample B (class 1) leads by 0.66: both are right only where
    0.64 < h < 0.66. On β ∈ {0.1, 0.3, 0.5, 0.7, 0.9} × α ∈ {0.1, 0.5, 0.9, 1.3, 1.7}
    (``search_grid(1.1, 5)``, ``search_grid(2.1, 5)``) that is only β = 0.7, α = 1.3
    (h = 0.6544; the nearest others: 0.6689 and 0.5115)."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    keys, key_labels = torch.eye(2), torch.tensor([0, 1])
    labels = torch.tensor([0, 1])
    return features, keys, key_labels, labels


def test_search_finds_the_only_grid_point_that_classifies_all():
    features, keys, key_labels, labels = _hand_built()
    clip = torch.tensor([[0.0, 0.64], [0.0, 0.66]])
    betas, alphas = search_grid(1.1, 5), search_grid(2.1, 5)
    assert betas == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert alphas == pytest.approx([0.1, 0.5, 0.9, 1.3, 1.7])
    for prune in (True, False):
        result = search_alpha_beta(
            features, keys, key_labels, clip, labels, betas, alphas, prune=prune
        )
        assert (result.beta, result.alpha) == (betas[3], alphas[3])
        assert result.accuracy == 100.0
        assert int(result.correct[3, 3]) == 2 and int((result.correct == 2).sum()) == 1


def test_search_ties_go_to_the_first_point_in_beta_then_alpha_order():
    """0.5 < h < 0.66 holds at (β 0.5, α 1.3), (β 0.7, α 1.3) and (β 0.9, α 0.9): the
    official strict ``>`` keeps the first, β = 0.5, α = 1.3."""
    features, keys, key_labels, labels = _hand_built()
    clip = torch.tensor([[0.0, 0.5], [0.0, 0.66]])
    betas, alphas = search_grid(1.1, 5), search_grid(2.1, 5)
    result = search_alpha_beta(features, keys, key_labels, clip, labels, betas, alphas)
    assert (result.beta, result.alpha) == (betas[2], alphas[3])
    assert int((result.correct == 2).sum()) == 3


def test_search_with_no_correct_point_returns_zeros_as_the_code():
    features, keys, key_labels, labels = _hand_built()
    clip = torch.tensor([[0.0, 50.0], [50.0, 0.0]])  # no α ≤ 1.7 overturns a margin of 50
    result = search_alpha_beta(
        features, keys, key_labels, clip, labels, search_grid(1.1, 5), search_grid(2.1, 5)
    )
    assert (result.alpha, result.beta, result.accuracy) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("unbalanced", [False, True])
def test_search_counts_equal_the_official_loop_on_random_data(unbalanced):
    """Every grid point's number of correct samples, pruned and unpruned, equals the
    official loop's, and so does the chosen point."""
    g = torch.Generator().manual_seed(3)
    classes, shots, dim = 12, 4, 24
    proto = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    key_labels = torch.arange(classes).repeat(shots)
    keys = F.normalize(
        proto[key_labels] + 0.8 * torch.randn(len(key_labels), dim, generator=g), dim=-1
    )
    if unbalanced:
        keep = torch.rand(len(key_labels), generator=g) > 0.4
        keep[:classes] = True
        keys, key_labels = keys[keep], key_labels[keep]
    labels = torch.randint(0, classes, (150,), generator=g)
    features = F.normalize(proto[labels] + 0.8 * torch.randn(150, dim, generator=g), dim=-1)
    text = F.normalize(proto + 0.9 * torch.randn(classes, dim, generator=g), dim=-1)
    betas, alphas = search_grid(7, 30), search_grid(3, 8)
    beta, alpha, counts = official_search(
        features, keys, key_labels, text.t(), labels, betas, alphas
    )
    clip = 100.0 * features @ text.t()
    for prune in (True, False):
        result = search_alpha_beta(
            features, keys, key_labels, clip, labels, betas, alphas, chunk_size=64, prune=prune
        )
        assert torch.equal(result.correct, counts)
        assert (result.beta, result.alpha) == (beta, alpha)


def test_search_grid_is_the_official_one():
    """``[i (scale − 0.1) / steps + 0.1 for i in range(steps)]``: from 0.1, one step short."""
    betas = search_grid(7, 200)
    assert len(betas) == 200 and betas[0] == 0.1
    assert betas[1] == pytest.approx(0.1 + 6.9 / 200) and betas[-1] == pytest.approx(7 - 6.9 / 200)
    assert search_grid(3, 20)[-1] == pytest.approx(2.855)


# ----------------------------------------------------------------------------- the module
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The digits layout (train 2, val 2, test 3 per class) and a feature cache shared by
    this module's fits."""
    root = tmp_path_factory.mktemp("tip")
    write_digits_layout(root, {"train": 2, "val": 2, "test": 3})
    old = os.environ.get("VL_ZOO_CACHE")
    os.environ["VL_ZOO_CACHE"] = str(root / "zoo-cache")
    yield root
    if old is None:
        os.environ.pop("VL_ZOO_CACHE")
    else:
        os.environ["VL_ZOO_CACHE"] = old


def _trainer(tmp_path: Path, callbacks=(), **kwargs) -> L.Trainer:
    args = dict(
        max_epochs=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    return L.Trainer(**(args | kwargs))


def _tip(**kwargs) -> TipAdapter:
    return TipAdapter(clip={"path": str(PACKAGE)}, augment_epochs=2, **(SMALL_GRID | kwargs))


def _normalised(module, dm, split, transform="eval", aug_pass=0):
    features, labels = fewshot_features(module, dm, split, transform, aug_pass)
    return F.normalize(features, dim=-1), labels


def test_training_free_fit_builds_the_cache_searches_on_val_and_is_scored(data_root, tmp_path):
    dm = digits_datamodule(data_root, tmp_path / "splits")
    module = _tip()
    callback = ZeroShotEval(split="test", name="fewshot", log_images=False)
    _trainer(tmp_path, [callback, FrozenTowerCheck()]).fit(module, datamodule=dm)
    head = module.tip_head
    assert not any(p.requires_grad for p in module.parameters())

    # keys: the normalised mean of the 2 augmentation passes, stored shot-major
    passes = [fewshot_features(module, dm, "train", "tip", p) for p in range(2)]
    expected = F.normalize((passes[0][0] + passes[1][0]) / 2, dim=-1)
    labels = passes[0][1]
    assert torch.equal(head.key_labels, torch.arange(10).repeat(2))
    for c in range(10):
        assert torch.equal(head.keys.weight[head.key_labels == c], expected[labels == c])

    # α, β: what the official loop picks on the val features
    f_val, y_val = _normalised(module, dm, "val")
    betas, alphas = search_grid(7.0, 20), search_grid(3.0, 5)
    beta, alpha, _ = official_search(
        f_val, expected, labels, head.text_weights.t(), y_val, betas, alphas
    )
    assert (float(head.alpha), float(head.beta)) == pytest.approx((alpha, beta))

    # the callback scored the whole cache model on test
    f_test, y_test = _normalised(module, dm, "test")
    values = F.one_hot(labels, 10).float()
    logits = 100.0 * f_test @ head.text_weights.t()
    logits = logits + torch.exp(-beta * (1 - f_test @ expected.t())) @ values * alpha
    accuracy = (logits.argmax(1) == y_test).float().mean().item() * 100
    assert callback.results["eval/fewshot_top1"] == pytest.approx(accuracy, abs=1e-4)


def test_search_on_test_reproduces_the_imagenet_script(data_root, tmp_path):
    dm = digits_datamodule(data_root, tmp_path / "splits")
    module = _tip(search_on="test")
    _trainer(tmp_path).fit(module, datamodule=dm)
    f_test, y_test = _normalised(module, dm, "test")
    head = module.tip_head
    beta, alpha, _ = official_search(
        f_test,
        head.keys.weight.detach(),
        head.key_labels,
        head.text_weights.t(),
        y_test,
        search_grid(7.0, 20),
        search_grid(3.0, 5),
    )
    assert (float(head.alpha), float(head.beta)) == pytest.approx((alpha, beta))
    assert module.last_search is not None and module.last_search.num_samples == len(y_test)


def test_training_free_fit_saves_last_ckpt_that_restores_the_cache_model(data_root, tmp_path):
    """max_epochs 0 skips the training loop, so ModelCheckpoint never fires; the module saves
    last.ckpt itself, and that checkpoint restores the same cache, α and β."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = digits_datamodule(data_root, tmp_path / "splits")
    module = _tip()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    _trainer(tmp_path, [checkpoint], enable_checkpointing=True).fit(module, datamodule=dm)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["last.ckpt"]
    assert checkpoint.last_model_path == str(tmp_path / "ckpts" / "last.ckpt")
    restored = TipAdapter.load_from_checkpoint(tmp_path / "ckpts" / "last.ckpt", weights_only=False)
    assert torch.equal(restored.tip_head.keys.weight, module.tip_head.keys.weight)
    assert (float(restored.tip_head.alpha), float(restored.tip_head.beta)) == (
        float(module.tip_head.alpha),
        float(module.tip_head.beta),
    )
    images = next(iter(dm.eval_dataloader("test")))["image"]
    with torch.no_grad():
        assert torch.equal(restored.logits(images), module.logits(images))


def test_tip_adapter_f_starts_as_tip_adapter_then_trains_only_the_keys(data_root, tmp_path):
    dm = digits_datamodule(data_root, tmp_path / "splits", batch_size=10)
    free = _tip(search=False)
    _trainer(tmp_path).fit(free, datamodule=dm)
    tuned = _tip(finetune=True)
    frozen_before = {k: v.clone() for k, v in tuned.encoder.state_dict().items()}
    images = torch.stack([dm.build_dataset("test")[i]["image"] for i in range(6)])

    # at fit start (before any step), Tip-Adapter-F's logits are Tip-Adapter's, bit for bit
    class AtStart(L.Callback):
        def on_train_start(self, trainer, module):
            assert module.tip_head.keys.weight.requires_grad
            with torch.no_grad():
                assert torch.equal(module.logits(images), free.logits(images))
            self.keys = module.tip_head.keys.weight.detach().clone()
            self.other = {
                k: v.clone() for k, v in module.tip_head.state_dict().items() if k != "keys.weight"
            }

    start = AtStart()
    fitted = _trainer(tmp_path, [start, FrozenTowerCheck()], max_epochs=1)
    fitted.fit(tuned, datamodule=dm)

    # one epoch (2 AdamW steps): the keys moved, the frozen CLIP did not change a bit
    head = tuned.tip_head
    assert not torch.equal(head.keys.weight.detach(), start.keys)
    for name, tensor in tuned.encoder.state_dict().items():
        assert torch.equal(tensor, frozen_before[name]), name
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable == ["head.keys.weight"]
    state = head.state_dict()
    for name in ("text_weights", "key_labels", "ready"):
        assert torch.equal(state[name], start.other[name]), name

    # after the last epoch α, β were searched on val with the learned keys (the adapter)
    f_val, y_val = _normalised(tuned, dm, "val")
    beta, alpha, _ = official_search(
        f_val,
        head.keys.weight.detach(),
        head.key_labels,
        head.text_weights.t(),
        y_val,
        search_grid(7.0, 20),
        search_grid(3.0, 5),
    )
    assert (float(head.alpha), float(head.beta)) == pytest.approx((alpha, beta))

    # a checkpoint rebuilds the head (its size read from the state) with the same logits
    fitted.save_checkpoint(tmp_path / "tip_f.ckpt")
    keys = head.keys.weight.detach().clone()
    _trainer(tmp_path).fit(tuned, datamodule=dm)  # a built cache is kept, not rebuilt
    assert torch.equal(tuned.tip_head.keys.weight.detach(), keys)
    restored = TipAdapter.load_from_checkpoint(tmp_path / "tip_f.ckpt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(restored.logits(images), tuned.logits(images))

    # zoo export → zoo.load: a clip_head package with the cache, α and β
    out = tmp_path / "package"
    argv = ["export", str(tmp_path / "tip_f.ckpt"), "--name", "tip-test", "--out", str(out)]
    argv += ["--trust-pickle", "--class-path", "lightning_modules.tip_adapter.TipAdapter"]
    assert main(argv) == 0
    loaded = zoo.load(f"local-dir:{out}")
    head_entry = loaded.config["architecture"]["head"]
    assert head_entry["type"] == "tip_adapter" and head_entry["config"]["num_keys"] == 20
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), tuned.logits(images))


def test_tip_adapter_f_optimiser_is_the_official_one():
    spec = TIP_ADAPTER_F_OPTIM
    assert (spec.optimizer, spec.lr, spec.eps, spec.weight_decay) == ("adamw", 1e-3, 1e-4, 0.01)
    assert spec.betas == (0.9, 0.999) and spec.groups == "all"
    # CosineAnnealingLR(T_max = all steps) to 0, stepped per batch, no warm-up
    from zoo.optim import build_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=spec.lr, eps=spec.eps)
    schedule = build_schedule(optimizer, spec, total_steps=40, steps_per_epoch=2)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), T_max=40
    )
    for _ in range(40):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0])
        optimizer.step()
        schedule.step()
        reference.optimizer.step()
        reference.step()


def test_bad_input_is_refused_with_a_clear_error():
    features, keys, key_labels, labels = _hand_built()
    clip = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="non-finite cache weights"):
        search_alpha_beta(features, 1e3 * keys, key_labels, clip, labels, [50.0], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        search_alpha_beta(features, keys, key_labels, clip, labels, [1.0], [2.0, 1.0])
    head = TipAdapterHead(2, CLASSES[:2], num_keys=3)
    with pytest.raises(ValueError, match="the few-shot train split changed size"):
        head.set_cache(torch.eye(2), torch.tensor([0, 1]))
    for bad in ({"search_on": "train"}, {"search_scale": (0.05, 3.0)}, {"augment_epochs": 0}):
        with pytest.raises(ValueError, match="model\\."):
            TipAdapter(clip={"encoder": {"preset": "vit-tiny-digits"}}, **bad)
