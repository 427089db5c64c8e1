"""CLIP-rocket faithfulness tests (CLIP-rocket card, "Faithfulness tests"): the reduction to
CLIP at K = 0, the K = 2 hand computation, label smoothing on the local terms only, the
separate heads and logit scales, the text augmentations, the non-contrastive variants
against their definitions, and the BYOLIP momentum update."""

import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.clip_rocket import CLIPRocketBuilder, CLIPRocketDataModule
from lightning_modules.clip_rocket import CLIPRocket
from zoo.data import TextTokenizer
from zoo.data.samples import SampleKey
from zoo.data.text_augment import (
    TextAugmenter,
    TextAugmentSpec,
    load_stopwords,
    random_deletion,
    random_swap,
    remove_stopwords,
)
from zoo.heads import MLPSpec
from zoo.losses import clip_infonce
from zoo.losses.clip_rocket import (
    barlip_loss,
    cl2l_local_terms,
    cl2l_loss,
    siamlip_loss,
    swalip_loss,
)
from zoo.optim import param_groups

from ._tiny import CONTEXT, tiny_batch, tiny_encoder_spec

ROOT = Path(__file__).resolve().parents[2]


def _smoothed_ce(rows: list[list[float]], eps: float) -> float:
    """Mean over rows of the label-smoothed cross-entropy with the diagonal as targets,
    written out: q = (1 − ε)·onehot + ε/C, CE = lse(x) − (1 − ε)·x_y − ε·mean(x)."""
    total = 0.0
    for y, x in enumerate(rows):
        lse = math.log(sum(math.exp(v) for v in x))
        total += lse - (1 - eps) * x[y] - eps * sum(x) / len(x)
    return total / len(rows)


def _scaled(rows: list[list[float]], s: float) -> list[list[float]]:
    return [[s * v for v in row] for row in rows]


# --- 1. the reduction to CLIP ----------------------------------------------------------------
def test_no_strong_views_is_exactly_the_clip_loss():
    g = torch.Generator().manual_seed(0)
    z_i, z_t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    clip = clip_infonce(z_i, z_t, 14.0)
    empty = torch.empty(0, 4, 8)
    for u in (None, empty):
        avg = cl2l_loss(z_i, z_t, u, u, 14.0, 10.0, label_smoothing=0.1, reduction="avg")
        total = cl2l_loss(z_i, z_t, u, u, 14.0, 10.0, label_smoothing=0.1, reduction="sum")
        assert torch.equal(avg["loss"], clip)
        assert torch.equal(total["loss"], 2 * clip)
        assert "clip_loss_image_local" not in avg


def test_module_without_views_is_the_clip_loss_of_its_encoder():
    torch.manual_seed(0)
    model = CLIPRocket(encoder=tiny_encoder_spec(), local_head=MLPSpec([32], 16))
    batch = tiny_batch(n=4, views=0)
    terms = model.loss_terms(batch)
    z_i, z_t, scale = model.encoder(batch["image"], batch["text"])
    torch.testing.assert_close(terms["loss"], clip_infonce(z_i, z_t, scale), rtol=1e-6, atol=1e-6)


# --- 2. K = 2 by hand ------------------------------------------------------------------------
# Three samples, unit embeddings. Global: ẑ_I = ẑ_T = I₃. Local views: û_I⁰ = û_T⁰ = I₃,
# û_I¹ = rows (0.6, 0.8, 0), e₂, e₃ and û_T¹ = rows e₁, (0, 0.6, 0.8), e₃. The cosine matrix of
# each (anchor view, candidate view) pair, rows = anchors, columns = candidates:
EYE = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
IMAGE_TO_TEXT = [  # (image view j, text view k) for j, k = 00, 01, 10, 11
    EYE,
    [[1.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.8, 1.0]],
    [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    [[0.6, 0.48, 0.0], [0.0, 0.6, 0.0], [0.0, 0.8, 1.0]],
]
TEXT_TO_IMAGE = [  # (text view k, image view j)
    EYE,
    [[0.6, 0.0, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]],
    [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]],
    [[0.6, 0.0, 0.0], [0.48, 0.6, 0.8], [0.0, 0.0, 1.0]],
]


def _hand_views() -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(3)
    u_i = torch.stack([eye, torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])])
    u_t = torch.stack([eye, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])])
    return u_i, u_t


@pytest.mark.parametrize("reduction", ["avg", "sum"])
def test_k2_loss_matches_the_hand_computation(reduction):
    s, s_local, eps = 2.0, 10.0, 0.1
    u_i, u_t = _hand_views()
    terms = cl2l_loss(torch.eye(3), torch.eye(3), u_i, u_t, s, s_local, eps, reduction)
    # global: every row is [2, 0, 0] up to order, no smoothing, both directions alike
    g = math.log(math.exp(2.0) + 2.0) - 2.0
    l_it = sum(_smoothed_ce(_scaled(m, s_local), eps) for m in IMAGE_TO_TEXT) / 4
    l_ti = sum(_smoothed_ce(_scaled(m, s_local), eps) for m in TEXT_TO_IMAGE) / 4
    loss = ((g + 2 * l_it) / 3 + (g + 2 * l_ti) / 3) / 2 * (2 if reduction == "sum" else 1)
    assert terms["clip_loss_global"].item() == pytest.approx(g, rel=1e-6)
    assert terms["clip_loss_image_local"].item() == pytest.approx(l_it, rel=1e-6)
    assert terms["clip_loss_text_local"].item() == pytest.approx(l_ti, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(loss, rel=1e-6)


def test_hand_smoothing_formula_is_torch_label_smoothing():
    """The hand formula above is what ``F.cross_entropy(label_smoothing=0.1)`` computes."""
    rows = _scaled(IMAGE_TO_TEXT[3], 10.0)
    torch_value = nn.functional.cross_entropy(
        torch.tensor(rows), torch.arange(3), label_smoothing=0.1
    )
    assert torch_value.item() == pytest.approx(_smoothed_ce(rows, 0.1), rel=1e-6)


def test_label_smoothing_changes_only_the_local_terms():
    u_i, u_t = _hand_views()
    plain = cl2l_loss(torch.eye(3), torch.eye(3), u_i, u_t, 2.0, 10.0, label_smoothing=0.0)
    smooth = cl2l_loss(torch.eye(3), torch.eye(3), u_i, u_t, 2.0, 10.0, label_smoothing=0.1)
    assert torch.equal(plain["clip_loss_global"], smooth["clip_loss_global"])
    for key in ("clip_loss_image_local", "clip_loss_text_local"):
        assert not torch.allclose(plain[key], smooth[key])
    # ε = 0 is the plain cross-entropy by hand
    l_it = sum(_smoothed_ce(_scaled(m, 10.0), 0.0) for m in IMAGE_TO_TEXT) / 4
    assert plain["clip_loss_image_local"].item() == pytest.approx(l_it, rel=1e-6)


def test_batched_k_squared_pairing_equals_the_official_pair_loop():
    """One batched matmul over the K² pairs equals the official loop of per-pair
    cross-entropies (each pair's symmetric InfoNCE with smoothing), K = 3; gradients too."""
    g = torch.Generator().manual_seed(1)
    u_i = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    u_t = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    image_local, text_local = cl2l_local_terms(u_i, u_t, 7.0, 0.1)
    batched = (image_local + text_local) / 2
    loop = torch.stack(
        [clip_infonce(u_i[j], u_t[k], 7.0, 0.1) for j in range(3) for k in range(3)]
    ).mean()
    torch.testing.assert_close(batched, loop, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(batched, (u_i, u_t))
    reference = torch.autograd.grad(loop, (u_i, u_t))
    for a, b in zip(grads, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- 3. heads and scales ---------------------------------------------------------------------
def _model(**kwargs) -> CLIPRocket:
    torch.manual_seed(0)
    kwargs.setdefault("local_head", MLPSpec([32, 32], 16))
    return CLIPRocket(encoder=tiny_encoder_spec(), **kwargs)


def _rocket_batch(n: int = 6, k: int = 2) -> dict:
    batch = tiny_batch(n=n, views=k)
    batch["text_views"] = [batch["text"].roll(i + 1, 0) for i in range(k)]
    return batch


def test_local_heads_are_separate_and_scales_start_at_the_paper_values():
    model = _model()
    local = {id(p) for m in (model.local_image_head, model.local_text_head) for p in m.parameters()}
    assert not local & {id(p) for p in model.encoder.parameters()}
    assert model.local_logit_scale.item() == pytest.approx(math.log(10))
    assert model.encoder.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    default = CLIPRocket(encoder=tiny_encoder_spec())  # the paper's 3-linear-layer projector
    assert [default.local_image_head[i].out_features for i in (0, 3, 6)] == [4096, 4096, 16]
    shared = _model(separate_proj=False)
    assert not hasattr(shared, "local_logit_scale") and not hasattr(shared, "local_image_head")
    feats = torch.randn(4, 32)
    torch.testing.assert_close(shared.local_image(feats), feats @ shared.encoder.image_projection)
    assert torch.equal(shared.local_scale, shared.encoder.logit_scale.exp())


def test_each_logit_scale_drives_only_its_own_terms():
    model = _model().eval()
    batch = _rocket_batch()
    with torch.no_grad():
        base = model.loss_terms(batch)
        model.encoder.logit_scale.add_(0.5)
        global_moved = model.loss_terms(batch)
        model.local_logit_scale.add_(0.5)
        both_moved = model.loss_terms(batch)
    local_keys = ("clip_loss_image_local", "clip_loss_text_local")
    assert not torch.allclose(base["clip_loss_global"], global_moved["clip_loss_global"])
    assert all(torch.equal(base[k], global_moved[k]) for k in local_keys)
    assert torch.equal(global_moved["clip_loss_global"], both_moved["clip_loss_global"])
    assert all(not torch.allclose(global_moved[k], both_moved[k]) for k in local_keys)


def test_both_logit_scales_are_clamped_after_a_step():
    model = _model()
    with torch.no_grad():
        model.encoder.logit_scale.fill_(9.0)
        model.local_logit_scale.fill_(-1.0)
    model.after_optimizer_step()
    assert model.encoder.logit_scale.item() == pytest.approx(4.6052)
    assert model.local_logit_scale.item() == 0.0


def test_weight_decay_groups_of_the_local_heads_and_scale():
    model = _model()
    decay, no_decay = param_groups(model, model.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    for head in ("local_image_head", "local_text_head"):
        assert {f"{head}.layer{i}.weight" for i in (1, 2, 3)} <= decayed
        assert {f"{head}.layer{i}.bias" for i in (1, 2, 3)} <= undecayed
        assert {f"{head}.bn{i}.{w}" for i in (1, 2) for w in ("weight", "bias")} <= undecayed
    assert "local_logit_scale" in undecayed and "encoder.logit_scale" in undecayed
    assert model.optim.lr == 3e-3 and decay["weight_decay"] == 0.1


def test_strong_captions_use_the_local_text_mode_only():
    """Text dropout / drop-path act on the strong captions (official "local" mode), never
    on the weak caption, and not in eval mode."""
    model = _model(text_dropout=0.5, text_drop_path=0.3)
    batch = _rocket_batch()
    torch.manual_seed(1)
    weak_a, strong_a = model.text_trunks(model.encoder, batch["text"], batch["text_views"])
    torch.manual_seed(2)
    weak_b, strong_b = model.text_trunks(model.encoder, batch["text"], batch["text_views"])
    assert torch.equal(weak_a, weak_b)
    assert not torch.allclose(strong_a[0], strong_b[0])
    plain = model.encoder.text(batch["text_views"][0])
    model.eval()
    _, strong_eval = model.text_trunks(model.encoder, batch["text"], batch["text_views"])
    torch.testing.assert_close(strong_eval[0], model.encoder.text(batch["text_views"][0]))
    torch.testing.assert_close(plain, strong_eval[0])  # outside the local mode: no dropout


def test_batchnorm_towers_run_each_view_alone():
    """A ResNet's batch statistics are per view (official per-view passes): the weak view's
    features do not depend on the strong views."""
    from zoo.backbones import VisionSpec, build_vision_tower

    tiny_resnet = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
    encoder = SimpleNamespace(visual=build_vision_tower(VisionSpec("resnet50", kwargs=tiny_resnet)))
    encoder.image_trunk = encoder.visual
    g = torch.Generator().manual_seed(0)
    image, views = torch.randn(4, 3, 32, 32, generator=g), [torch.randn(4, 3, 32, 32, generator=g)]
    weak, strong = CLIPRocket.image_trunks(encoder, image, views)
    torch.testing.assert_close(weak, encoder.visual(image))
    torch.testing.assert_close(strong, encoder.visual(views[0]))


def test_zeroshot_ensemble_head_is_the_weighted_similarity_sum():
    """``zh``: cos(features, class weights) = w·cos_z + (1 − w)·cos_h (official ensemble)."""
    model = _model(zeroshot_head="zh", zeroshot_weight=0.3).eval()
    batch = tiny_batch(n=5)
    tokenizer = lambda texts: tiny_batch(n=len(texts), seed=len(texts))["text"]  # noqa: E731
    with torch.no_grad():
        weights = model.class_weights(["a", "b"], ["{}", "x {}"], tokenizer=tokenizer)
        x = nn.functional.normalize(model.features(batch["image"]), dim=-1)
        trunk = model.encoder.image_trunk(batch["image"])
        z = nn.functional.normalize(trunk @ model.encoder.image_projection, dim=-1)
        h = nn.functional.normalize(model.local_image(trunk), dim=-1)
        d = z.shape[1]
        z_c, h_c = weights[:, :d] / math.sqrt(0.3), weights[:, d:] / math.sqrt(0.7)
    torch.testing.assert_close(x @ weights.T, 0.3 * z @ z_c.T + 0.7 * h @ h_c.T)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))


# --- 4. text augmentations -------------------------------------------------------------------
CAPTION = "a photo of the number seven written by hand on the old paper"


def test_shipped_stopword_list_is_package_data():
    words = load_stopwords()
    assert len(words) == 179 and {"a", "the", "of", "don't", "wouldn't"} <= words
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"zoo\.data"\s*=\s*\[[^\]]*"stopwords_en\.txt"', pyproject)


def test_weak_caption_has_no_stop_words_when_removal_is_certain():
    augmenter = TextAugmenter(TextAugmentSpec(remove_stopwords_prob=1.0, eda=False))
    weak, strong = augmenter.views(CAPTION, 1, random.Random(0))
    assert weak == "photo number seven written hand old paper"
    assert strong == weak  # eda off: the strong view is only stop-word removed
    assert not set(weak.split()) & load_stopwords()
    # a caption made only of stop words is kept as it is
    assert augmenter.weak("it is the", random.Random(0)) == "it is the"
    assert remove_stopwords("Don't stop, a test.", load_stopwords()) == "stop , test ."


def test_random_swap_permutes_the_words():
    words = CAPTION.split()
    changed = 0
    for seed in range(200):
        out = random_swap(CAPTION, random.Random(seed)).split()
        assert Counter(out) == Counter(words)
        diff = [i for i, (a, b) in enumerate(zip(out, words)) if a != b]
        assert len(diff) in (0, 2)  # one swap; equal words may swap invisibly
        changed += bool(diff)
    assert changed > 150
    assert random_swap("alone", random.Random(0)) == "alone"


def test_random_deletion_keeps_an_ordered_non_empty_subsequence():
    words = CAPTION.split()
    for p in (0.1, 0.9, 1.0):
        for seed in range(100):
            out = random_deletion(CAPTION, random.Random(seed), p).split()
            assert 1 <= len(out) <= len(words)
            it = iter(words)
            assert all(w in it for w in out)  # a sub-sequence, in order
            if p == 1.0:
                assert len(out) == 1
    # each word is dropped with probability p
    long = " ".join(f"w{i}" for i in range(4000))
    kept = len(random_deletion(long, random.Random(0), 0.1).split())
    assert abs(1 - kept / 4000 - 0.1) < 0.015


def test_strong_views_with_deletion_only_are_subsequences():
    spec = TextAugmentSpec(
        remove_stopwords_prob=0.0,
        synonym_replacement_prob=0.0,
        random_swap_prob=0.0,
        random_deletion_prob=1.0,
        deletion_p=0.5,
    )
    augmenter = TextAugmenter(spec)
    words = CAPTION.split()
    for seed in range(50):
        weak, *strong = augmenter.views(CAPTION, 2, random.Random(seed))
        assert weak == CAPTION
        for view in strong:
            it = iter(words)
            assert view and all(w in it for w in view.split())


def test_augmentation_is_seeded_per_sample():
    augmenter = TextAugmenter(TextAugmentSpec(synonym_replacement_prob=0.0))
    first = [augmenter.views(CAPTION, 2, random.Random(seed)) for seed in range(20)]
    again = [augmenter.views(CAPTION, 2, random.Random(seed)) for seed in range(20)]
    assert first == again
    assert len({tuple(v) for v in first}) > 10


def test_synonym_replacement_reads_a_thesaurus_file(tmp_path):
    thesaurus = tmp_path / "synonyms.json"
    thesaurus.write_text(json.dumps({"photo": ["picture"], "seven": ["7"]}))
    only_synonyms = dict(
        remove_stopwords_prob=0.0,
        synonym_replacement_prob=1.0,
        random_swap_prob=0.0,
        random_deletion_prob=0.0,
    )
    augmenter = TextAugmenter(TextAugmentSpec(**only_synonyms, synonyms_file=str(thesaurus)))
    outs = {augmenter.strong("a photo of seven", random.Random(s)) for s in range(30)}
    assert outs == {"a picture of seven", "a photo of 7"}  # n = 1 word replaced
    no_thesaurus = TextAugmenter(TextAugmentSpec(**only_synonyms))
    assert no_thesaurus.strong("a photo of seven", random.Random(0)) == "a photo of seven"
    with pytest.raises(ValueError, match="synonyms.json"):
        thesaurus.write_text("[1, 2]")
        TextAugmenter(TextAugmentSpec(synonyms_file=str(thesaurus)))
    with pytest.raises(ValueError, match="EDA weights"):
        TextAugmentSpec(
            synonym_replacement_prob=0.0, random_swap_prob=0.0, random_deletion_prob=0.0
        )


def test_builder_tokenises_one_weak_and_k_strong_captions():
    tokenizer = TextTokenizer(context_length=CONTEXT * 2)
    spec = TextAugmentSpec(remove_stopwords_prob=1.0, eda=False)
    builder = CLIPRocketBuilder(
        None, tokenizer, [lambda im: torch.zeros(1)] * 2, TextAugmenter(spec)
    )
    image = Image.new("L", (8, 8))
    sample = builder({"image": image, "caption": "a photo of the number seven", "label": 7})
    expected = tokenizer("photo number seven")
    assert torch.equal(sample["text"], expected)
    assert len(sample["text_views"]) == 2 and all(
        torch.equal(t, expected) for t in sample["text_views"]
    )
    assert sample["caption"] == "a photo of the number seven" and sample["label"] == 7


def test_datamodule_batches_carry_k_strong_views_and_captions():
    data = CLIPRocketDataModule(
        source="digits",
        image_size=16,
        context_length=CONTEXT * 2,
        num_views=2,
        multicrop_size=12,
        batch_size=4,
    )
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["text"].shape == (4, CONTEXT * 2)
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 3, 12, 12)] * 2
    assert [tuple(t.shape) for t in batch["text_views"]] == [(4, CONTEXT * 2)] * 2
    # a sample is a function of (seed, epoch, index)
    dataset = data.train_set
    a, b = dataset[SampleKey(3, seed=0, epoch=1)], dataset[SampleKey(3, seed=0, epoch=1)]
    assert all(torch.equal(x, y) for x, y in zip(a["text_views"], b["text_views"]))
    assert torch.equal(a["views"][0], b["views"][0])


# --- 5. non-contrastive variants -------------------------------------------------------------
def test_barlip_matches_the_hand_formula():
    v_i = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    v_t = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 1], [0, 0, 1]])
    # C = v_Iᵀ v_T / 4 = [[.25, 0, .25], [0, .5, .25], [0, 0, .5]]
    on_diagonal = (0.25 - 1) ** 2 + (0.5 - 1) ** 2 + (0.5 - 1) ** 2
    off_diagonal = 0.25**2 + 0.25**2
    expected = 0.025 * (on_diagonal + 5e-3 * off_diagonal)
    assert barlip_loss(v_i, v_t).item() == pytest.approx(expected, rel=1e-6)
    # standardised, identical, decorrelated projections: C = I, loss 0
    v = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert barlip_loss(v, v).item() == 0.0
    # with K = 2 local views: the mean over the 1 + K² pairs
    local_i, local_t = torch.stack([v_i, v]), torch.stack([v_t, v])
    pairs = [(v_i, v_t), (v_i, v_t), (v_i, v), (v, v_t), (v, v)]
    mean = sum(barlip_loss(a, b) for a, b in pairs) / 5
    torch.testing.assert_close(barlip_loss(v_i, v_t, local_i, local_t), mean)


def test_siamlip_matches_two_minus_two_cosine_with_stopped_targets():
    p_i, v_t = torch.tensor([[1.0, 0], [1, 1]]), torch.tensor([[0.0, 1], [1, 1]])  # cos 0, 1
    p_t, v_i = torch.tensor([[2.0, 0], [0, 3]]), torch.tensor([[1.0, 0], [1, 0]])  # cos 1, 0
    assert siamlip_loss(p_i, p_t, v_i, v_t).item() == pytest.approx(1.0)  # (1 + 1) / 2
    # K = 1: local terms (1 and 0 by hand) join the average of 2 + 2K² = 4 terms
    p_il, v_tl = torch.tensor([[[3.0, 4], [1, 0]]]), torch.tensor([[[3.0, 4], [0, 1]]])
    p_tl, v_il = torch.tensor([[[1.0, 0], [0, 1]]]), torch.tensor([[[1.0, 0], [0, 1]]])
    value = siamlip_loss(p_i, p_t, v_i, v_t, p_il, p_tl, v_il, v_tl)
    assert value.item() == pytest.approx(0.75, abs=1e-6)
    v_t.requires_grad_(True)
    p_i.requires_grad_(True)
    siamlip_loss(p_i, p_t, v_i, v_t).backward()
    assert v_t.grad is None and p_i.grad is not None  # stop-gradient on the targets


def test_variant_heads_follow_the_official_layouts():
    """BarLIP: w → 3000 → 3000 → 8192 with an affine BN at the end; SiamLIP: bias-free
    w → 2048 → 128 ending in a BN without affine, predictor 128 → 2048 → 128 (defaults)."""
    from zoo.heads.norm import GlobalBatchNorm1d

    barlip = CLIPRocket(encoder=tiny_encoder_spec(), variant="barlip").barlip["image"]
    assert [barlip[i].out_features for i in (0, 3, 6)] == [3000, 3000, 8192]
    assert isinstance(barlip[7], GlobalBatchNorm1d) and barlip[7].weight is not None
    siam = CLIPRocket(encoder=tiny_encoder_spec(), variant="siamlip").siamlip
    projector, predictor = siam["text"], siam["text_predictor"]
    assert [projector[0].in_features, projector[0].out_features, projector[3].out_features] == [
        32,
        2048,
        128,
    ]
    assert projector[0].bias is None and projector[3].bias is None
    assert isinstance(projector[4], GlobalBatchNorm1d) and projector[4].weight is None
    assert [predictor[0].in_features, predictor[3].out_features] == [128, 128]
    assert set(siam.keys()) == {"image", "text", "image_predictor", "text_predictor"}
    child = CLIPRocket(encoder=tiny_encoder_spec(), variant="siamlip", separate_proj_child=True)
    assert {"image_local", "text_local", "image_predictor_local"} <= set(child.siamlip.keys())


def _official_sinkhorn(scores: torch.Tensor, iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """The official ``sinkhorn_knopp`` (one process), written out."""
    q = torch.exp(scores / eps).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_swalip_matches_the_official_swapped_prediction():
    g = torch.Generator().manual_seed(0)
    u_i, u_t = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    s = 10.0
    hi, ht = nn.functional.normalize(u_i, dim=-1), nn.functional.normalize(u_t, dim=-1)
    expected = 0.0
    for a in range(2):
        for b in range(2):  # official loop: pair (a, b) predicts the codes of (1 − a, 1 − b)
            qi = _official_sinkhorn(hi[1 - a] @ ht[1 - b].T)
            qt = _official_sinkhorn(ht[1 - a] @ hi[1 - b].T)
            ce_i = -(qi * torch.log_softmax(s * hi[a] @ ht[b].T, dim=1)).sum(1).mean()
            ce_t = -(qt * torch.log_softmax(s * ht[a] @ hi[b].T, dim=1)).sum(1).mean()
            expected += (ce_i + ce_t) / 2
    expected /= 4
    torch.testing.assert_close(swalip_loss(u_i, u_t, s), expected, rtol=1e-5, atol=1e-6)


def test_variant_losses_are_added_to_the_cl2l_loss():
    batch = _rocket_batch()
    small = dict(
        barlip_head=MLPSpec([32, 32], 24, last_norm=True),
        siamlip_head=MLPSpec([32], 8, bias=False, last_norm=True, last_norm_affine=False),
        siamlip_predictor=MLPSpec([32], 8),
    )
    for variant, key, weight in [
        ("barlip", "barlip_loss", 1.0),
        ("siamlip", "siamlip_loss", 1.0),
        ("swalip", "swalip_loss", 0.2),
    ]:
        extra = {"label_smoothing": 0.0} if variant == "swalip" else {}
        terms = _model(variant=variant, loss_reduction="sum", **small, **extra).loss_terms(batch)
        torch.testing.assert_close(terms["loss"], _cl2l(terms) + weight * terms[key])
    with pytest.raises(ValueError, match="label_smoothing: 0"):
        _model(variant="swalip", label_smoothing=0.1)


def _cl2l(terms: dict) -> torch.Tensor:
    """The CL2L part (reduction sum, K = 2) from the logged terms."""
    return 2 * (terms["clip_loss_global"] + 2 * terms["clip_loss_local"]) / 3


# --- 6. BYOLIP's momentum encoder ------------------------------------------------------------
def test_byolip_momentum_update_and_targets():
    small = dict(
        siamlip_head=MLPSpec([32], 8, bias=False, last_norm=True, last_norm_affine=False),
        siamlip_predictor=MLPSpec([32], 8),
    )
    byol, siam = _model(variant="byolip", **small), _model(variant="siamlip", **small)
    batch = _rocket_batch()
    # at the start the momentum copy equals the online network: BYOLIP = SiamLIP
    torch.testing.assert_close(
        byol.loss_terms(batch)["siamlip_loss"], siam.loss_terms(batch)["siamlip_loss"]
    )
    teacher = dict(byol.momentum_teacher.module.named_parameters())
    before = {n: p.detach().clone() for n, p in teacher.items()}
    with torch.no_grad():
        for p in byol._siam_net().parameters():
            p.add_(torch.randn_like(p))
    byol._trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=10)
    byol.after_optimizer_step()
    student = dict(byol._siam_net().named_parameters())
    for name, p_m in teacher.items():
        torch.testing.assert_close(p_m, 0.99 * before[name] + 0.01 * student[name])
    assert not any(p.requires_grad for p in teacher.values())
