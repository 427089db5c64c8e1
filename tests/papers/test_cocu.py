"""CoCu faithfulness tests (card: hand curation scores, tokenizer wrapper rows, multi-label
loss, sampling mode) plus batched / blocked curation, segmentation and a 2-step fit."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.cocu.curation import (
    ConceptTable,
    CurationConfig,
    NeighbourIndex,
    build_gallery,
    cluster_archive,
    curate,
    extract_concepts,
    faiss_available,
    parse_rewritten,
    pluralize,
    rewrite_caption,
    sample_concepts,
)
from zoo.eval.segmentation import groupvit_class_map, mean_iou
from zoo.losses.cocu import multi_label_contrastive

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])

# --- 1. the card's hand example ---------------------------------------------------------


def _hand_example():
    names = ["dog", "grass", "ball"]
    table = ConceptTable.from_lists([["dog"], ["grass"], ["dog", "ball"]], names)
    index = np.array([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    concepts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    anchor = np.array([[1.0, 0.0]], dtype=np.float32)
    return names, table, index, concepts, anchor


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_curation_scores(backend):
    names, table, index, concepts, anchor = _hand_example()
    ((scored, kmeans),) = curate(
        anchor,
        NeighbourIndex(index, backend),
        table,
        concepts,
        CurationConfig(size=3, backend=backend),
    )
    # dog: S = {0.8 (v1), 0.6 (v3), 1.0 (anchor)}: local 1/0.8, global 1/M; M = 1.0 (t_dog·v_a,
    # t_grass·v2 and t_ball·v3 are all 1.0)
    # ball: S = {1.0 (v3), 0.6 (anchor)}: local 0.6/0.8 = 0.75, global 0.6
    # grass: S = {1.0 (v2), 0.0 (anchor)}: 0 + 0
    assert list(scored) == ["dog", "ball", "grass"]
    assert scored["dog"] == pytest.approx(1.0 + 1.25)
    assert scored["ball"] == pytest.approx(0.6 + 0.75)
    assert scored["grass"] == pytest.approx(0.0)
    assert kmeans == {}


def test_substring_membership_flag():
    # anchor (1, 0); neighbours: v1 with {hotdog}, v2 with {dog}; t_dog = (1, 0)
    names = ["dog", "hotdog"]
    table = ConceptTable.from_lists([["hotdog"], ["dog"]], names)
    index = np.array([[0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    concepts = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    anchor = np.array([[1.0, 0.0]], dtype=np.float32)
    exact = next(
        curate(
            anchor,
            NeighbourIndex(index, "torch"),
            table,
            concepts,
            CurationConfig(size=2, membership="exact", backend="torch"),
        )
    )[0]
    substring = next(
        curate(
            anchor,
            NeighbourIndex(index, "torch"),
            table,
            concepts,
            CurationConfig(size=2, membership="substring", backend="torch"),
        )
    )[0]
    # exact: R_dog = {v2}: S = {0.8, 1.0}; M = max(1.0, t_hotdog·v1 = 0.8) = 1.0
    assert exact["dog"] == pytest.approx(1.0 + 1.0 / 0.9)
    # substring ("dog" in "hotdog"): R_dog = {v1, v2}: S = {0.6, 0.8, 1.0}
    assert substring["dog"] == pytest.approx(1.0 + 1.0 / 0.8)
    # "hotdog" is never a substring of "dog": equal in both modes, 0 / mean(0.8, 0) = 0
    assert exact["hotdog"] == pytest.approx(0.0) and substring["hotdog"] == pytest.approx(0.0)


# --- batched / blocked curation equals a per-anchor reference ----------------------------


def _reference_cocu(anchor_id, size, emb, concepts_of, names, concept_emb):
    """The official per-anchor algorithm (rewrite/curation.py ``cocu``), exact membership."""
    v_a = emb[anchor_id]
    sims = emb @ v_a
    nbrs = np.argsort(-sims, kind="stable")[:size]
    archive = sorted({c for n in nbrs for c in concepts_of[n]})
    if not archive:
        return {}
    glob, loc, max_prob = [], [], 0.0
    for c in archive:
        t = concept_emb[names.index(c)]
        ref = [emb[n] for n in nbrs if c in concepts_of[n]] + [v_a]
        sim = np.stack(ref) @ t
        glob.append(sim[-1])
        loc.append(sim[-1] / sim.mean())
        max_prob = max(max_prob, sim.max())
    scores = np.array(glob) / max_prob + np.array(loc)
    return dict(sorted(zip(archive, scores.tolist()), key=lambda kv: -kv[1]))


def _random_data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    # non-negative embeddings: every similarity is positive, as between CLIP image and text
    # embeddings, so M and mean(S_c) are positive
    emb = np.abs(rng.normal(size=(n, d))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    names = [f"c{i}" for i in range(40)]
    concepts_of = [
        [str(c) for c in rng.choice(names, size=rng.integers(0, 4), replace=False)]
        for _ in range(n)
    ]
    concept_emb = np.abs(rng.normal(size=(len(names), d))).astype(np.float32)
    concept_emb /= np.linalg.norm(concept_emb, axis=1, keepdims=True)
    return emb, names, concepts_of, concept_emb


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_blocked_curation_equals_per_anchor_reference(backend):
    emb, names, concepts_of, concept_emb = _random_data()
    table = ConceptTable.from_lists(concepts_of, names)
    # block_size 37 < N = 300: the torch search never holds a (B, N) score matrix
    config = CurationConfig(size=8, batch_size=64, block_size=37, backend=backend)
    got = list(curate(emb, NeighbourIndex(emb, backend, block_size=37), table, concept_emb, config))
    for i in range(len(emb)):
        want = _reference_cocu(i, 8, emb, concepts_of, names, concept_emb)
        assert list(got[i][0]) == list(want), i
        np.testing.assert_allclose(list(got[i][0].values()), list(want.values()), rtol=1e-4)


def test_block_size_and_batch_size_do_not_change_results():
    emb, names, concepts_of, concept_emb = _random_data(n=200, seed=1)
    table = ConceptTable.from_lists(concepts_of, names)
    big = list(
        curate(
            emb,
            NeighbourIndex(emb, "torch", block_size=10_000),
            table,
            concept_emb,
            CurationConfig(batch_size=200, backend="torch"),
        )
    )
    small = list(
        curate(
            emb,
            NeighbourIndex(emb, "torch", block_size=7),
            table,
            concept_emb,
            CurationConfig(batch_size=3, backend="torch"),
        )
    )
    assert [list(a) for a, _ in big] == [list(a) for a, _ in small]


def test_curation_never_allocates_an_n_by_n_tensor(monkeypatch):
    """Every matmul during a torch-backend curation of N = 400 images, in batches of 50
    anchors over blocks of 64 index rows, has fewer than N·N / 8 outputs."""
    emb, names, concepts_of, concept_emb = _random_data(n=400, seed=2)
    table = ConceptTable.from_lists(concepts_of, names)
    sizes = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_matmul(a, b)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    list(
        curate(
            emb,
            NeighbourIndex(emb, "torch", block_size=64),
            table,
            concept_emb,
            CurationConfig(batch_size=50, backend="torch"),
        )
    )
    assert sizes and max(sizes) <= 50 * 64 < 400 * 400 // 8


def test_exclude_self_drops_the_anchor():
    emb, names, concepts_of, concept_emb = _random_data(n=50, seed=3)
    index = NeighbourIndex(emb, "torch")
    _, with_self = index.search(emb[:5], 3)
    assert with_self[:, 0].tolist() == list(range(5))  # an image is its own nearest neighbour
    table = ConceptTable.from_lists(concepts_of, names)
    # with concepts only on the anchors themselves, exclude_self leaves only neighbours' concepts
    config = CurationConfig(size=3, exclude_self=True, backend="torch")
    got = list(curate(emb[:5], index, table, concept_emb, config, anchor_ids=np.arange(5)))
    for i, (scored, _) in enumerate(got):
        nbrs = index.search(emb[i : i + 1], 4)[1][0, 1:].tolist()
        assert set(scored) == {c for n in nbrs for c in concepts_of[n]}


def test_gallery_plurals_and_ngram_extraction():
    assert [pluralize(w) for w in ["dog", "six", "baby", "boy", "man", "sheep", "box"]] == [
        "dogs",
        "sixes",
        "babies",
        "boys",
        "men",
        "sheep",
        "boxes",
    ]
    gallery = build_gallery(["Hot dog", "dog", "traffic light"])
    assert gallery == ["hot dog", "dog", "traffic light", "hot dogs", "dogs", "traffic lights"]
    caption = "Two dogs near a hot dog stand, under the traffic lights."
    assert extract_concepts(caption, set(gallery)) == ["dogs", "hot dog", "dog", "traffic lights"]


def test_rewritten_caption_round_trip():
    text = rewrite_caption("a dog\non grass", {"dog": 2.25, "ball": 1.35}, {})
    assert text.split("\n")[0] == "a dog on grass"
    assert parse_rewritten(text) == ("a dog on grass", {"dog": 2.25, "ball": 1.35}, {})
    with pytest.raises(ValueError, match="3 lines"):
        parse_rewritten("just a caption")


def test_concept_precision_by_hand():
    from zoo.cocu.curation import concept_precision

    archives = [{"sevens": 3.0, "two": 2.0, "one": 1.0}, {"four": 0.5, "nine": 0.9}]
    present = [{"seven", "one"}, {"four"}]
    # top-1: "sevens" (a plural of a present digit) hit, "nine" miss -> 1 of 2
    assert concept_precision(archives, present, 1) == 50.0
    # top-3: sevens, two, one (2 hits) + nine, four (1 hit) -> 3 of 5
    assert concept_precision(archives, present, 3) == 60.0
    with pytest.raises(ValueError, match="2 archives for 1 images"):
        concept_precision(archives, present[:1], 1)


# --- 4. sampling mode ---------------------------------------------------------------------


def test_top3_keys_without_kmeans_and_kmeans_sampling_draws_from_clusters():
    scored = {"dog": 2.2, "ball": 1.3, "grass": 0.9, "sky": 0.2}
    assert sample_concepts(scored, {}, k=3, kmeans_sampling=False) == ["dog", "ball", "grass"]
    emb = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]], dtype=np.float32)
    clusters = cluster_archive(scored, emb)
    assert sorted(len(c) for c in clusters.values()) == [2, 2]  # ⌈4/2⌉ = 2 clusters
    picked = sample_concepts(
        scored, clusters, k=3, kmeans_sampling=True, rng=np.random.default_rng(0)
    )
    assert len(picked) == 3 and all(isinstance(p, str) and p in scored for p in picked)


def test_word_aug_tokenizer_rows():
    from datamodules.cocu import WordAugTokenizer
    from zoo.data import TextTokenizer

    tok = TextTokenizer("clip-bpe", 77)
    caption = "a dog on the grass"
    one = rewrite_caption(caption, {"dog": 2.0}, {})
    wrapper = WordAugTokenizer(tok, ["a photo of a {}."], "curated", num_prompts=3)
    rows = wrapper(one)
    assert rows.shape == (4, 77)
    assert torch.equal(rows[0], tok(caption)) and torch.equal(rows[1], tok("a photo of a dog."))
    assert torch.equal(rows[2], tok(caption)) and torch.equal(rows[3], tok(caption))
    # top-3 keys of the archive, in score order
    three = rewrite_caption(caption, {"dog": 2.0, "grass": 1.0, "ball": 0.5, "sky": 0.1}, {})
    assert wrapper.texts(three)[1:] == [
        "a photo of a dog.",
        "a photo of a grass.",
        "a photo of a ball.",
    ]
    # the GroupViT baseline: gallery words of the caption itself
    base = WordAugTokenizer(tok, ["a photo of a {}."], "caption", gallery=["dog", "grass"])
    assert base.texts(caption) == [caption, "a photo of a dog.", "a photo of a grass.", caption]
    # random template among the 80: seeded by Python's random (the readers seed it per sample)
    full = WordAugTokenizer(tok, [f"t{i} {{}}" for i in range(80)], "curated")
    random.seed(0)
    first = full.texts(three)
    random.seed(0)
    assert full.texts(three) == first


def test_word_aug_tokenizer_cache_tokenizes_each_string_once():
    import pickle

    from datamodules.cocu import WordAugTokenizer
    from zoo.data import TextTokenizer

    tok = TextTokenizer("clip-bpe", 16)
    seen: list[str] = []

    def counting(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return tok(texts)

    wrapper = WordAugTokenizer(counting, ["a photo of a {}."], "curated", num_prompts=3)
    text = rewrite_caption("a dog", {"dog": 2.0}, {})
    first, again = wrapper(text), wrapper(text)
    # rows 0, 2 and 3 are the caption: two distinct strings, each tokenised once, ever
    assert seen == ["a dog", "a photo of a dog."]
    assert torch.equal(first, again)
    assert torch.equal(first, tok(["a dog", "a photo of a dog.", "a dog", "a dog"]))
    # a DataLoader worker gets an empty cache (pickled without it) and the same rows
    wrapper.tokenizer = tok  # the local counter does not pickle
    clone = pickle.loads(pickle.dumps(wrapper))
    assert clone._cache == {} and torch.equal(clone(text), first)


# --- 3. the multi-label loss --------------------------------------------------------------


def test_multi_label_loss_matches_hand_soft_targets():
    torch.manual_seed(0)
    z_i = F.normalize(torch.randn(2, 5), dim=-1)
    z_p = F.normalize(torch.randn(2, 2, 5), dim=-1)
    s = 7.0
    prompts = z_p.reshape(4, 5)  # rows: (img0, p0), (img0, p1), (img1, p0), (img1, p1)
    y_it = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    y_ti = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    logp_it = torch.log_softmax(s * z_i @ prompts.T, dim=1)
    logp_ti = torch.log_softmax(s * prompts @ z_i.T, dim=1)
    hand = 0.5 * (-(y_it * logp_it).sum(1).mean() + -(y_ti * logp_ti).sum(1).mean())
    assert torch.allclose(multi_label_contrastive(z_i, z_p, s), hand, atol=1e-6)


def test_multi_label_loss_decreases_with_scale_on_a_separable_toy():
    z_i = torch.eye(3)[:, :3]
    z_p = torch.eye(3).unsqueeze(1).repeat(1, 2, 1)  # both prompts equal their image
    losses = [float(multi_label_contrastive(z_i, z_p, s)) for s in (0.5, 1, 2, 5, 10, 20)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    # the floor is the image→text half's entropy of the 1/2-1/2 target: log 2 / 2 (the
    # text→image half goes to 0)
    assert float(multi_label_contrastive(z_i, z_p, 100.0)) == pytest.approx(
        0.5 * math.log(2), abs=1e-6
    )


# --- zero-shot segmentation ---------------------------------------------------------------


def test_segmentation_hand_assignment_and_miou():
    # 1 image, 2x2 pixels, 2 groups: left column → group 0, right column → group 1
    pixels = torch.tensor([[[[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.4, 0.6]]]])
    groups = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # group 0 ≈ class 0, group 1 ≈ class 1
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1)
    pred = groupvit_class_map(pixels, groups, image, classes, 100.0, bg_thresh=0.5)
    assert pred.tolist() == [[[1, 2], [1, 2]]]  # class c → c + 1, no background
    no_bg = groupvit_class_map(pixels, groups, image, classes, 100.0, with_background=False)
    assert no_bg.tolist() == [[[0, 1], [0, 1]]]
    # mIoU over {bg, class0, class1}: target has class 0 on the left, class 1 top right and
    # an ignored pixel bottom right; bg absent everywhere → left out of the mean
    target = torch.tensor([[[1, 2], [1, 255]]])
    miou, per_class = mean_iou([pred], [target], 3)
    assert miou == pytest.approx(100.0) and per_class[1:].tolist() == [1.0, 1.0]
    wrong = torch.tensor([[[1, 1], [1, 255]]])
    miou, _ = mean_iou([pred], [wrong], 3)
    assert miou == pytest.approx(100 * (2 / 3 + 0) / 2)  # class0: 2/3, class1: 0/1


def test_background_threshold():
    pixels = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # 1x2 image: pixel 0 → g0, pixel 1 → g1
    # g0 confidently class 0; g1 equally close to both classes
    groups = F.normalize(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), dim=-1)
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1)
    s = 10.0
    # g1's best score: softmax over the two classes (0.5) times itself (0.5) = 0.25
    pred = groupvit_class_map(pixels, groups, image, classes, s, bg_thresh=0.5)
    assert pred.tolist() == [[[1, 0]]]
    pred = groupvit_class_map(pixels, groups, image, classes, s, bg_thresh=0.2)
    assert pred[0, 0, 1].item() in (1, 2) and pred[0, 0, 0].item() == 1
    # the threshold never exceeds the image's best group score: nothing is all background
    pred = groupvit_class_map(pixels, groups, image, classes, s, bg_thresh=1.0)
    assert pred[0, 0, 0].item() == 1


# --- GroupViT ------------------------------------------------------------------------------


def _tiny_model():
    from lightning_modules.cocu import CoCu

    return CoCu(
        vision=dict(
            img_size=16,
            patch_size=4,
            embed_dim=32,
            depths=[1, 1],
            num_heads=2,
            num_group_tokens=[4, 0],
            num_output_groups=[4],
            drop_path_rate=0.0,
        ),
        text=dict(width=32, layers=1, heads=2, context_length=16),
        projector=dict(hidden_dims=[64], out_dim=32),
        optim=dict(lr=1e-3, warmup_epochs=0),
    )


def test_hard_assignment_is_one_hot_with_straight_through_gradient():
    from zoo.backbones.group_vit import gumbel_hard_assign

    logits = torch.randn(2, 4, 6, requires_grad=True)
    hard = gumbel_hard_assign(logits, dim=1, gumbel=False)
    assert torch.equal(hard.detach().sum(1), torch.ones(2, 6))
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    (hard * torch.randn_like(hard)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # gradient of the softmax


def test_one_stage_groupvit_labels_each_patch_as_its_own_group():
    """A GroupViT without a grouping stage (a plain ViT): every pixel belongs to the patch it
    lies in, so the 2x2-patch grid upsampled to 4x4 pixels is four 2x2 blocks."""
    from zoo.backbones.group_vit import GroupViT, GroupViTSpec, group_pixel_assignment

    pixels = group_pixel_assignment([], (2, 2), (4, 4), batch=3)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert pixels.shape == (3, 4, 4, 4)
    assert torch.equal(pixels.argmax(-1), expected.expand(3, 4, 4))
    spec = GroupViTSpec(
        img_size=8, patch_size=4, embed_dim=16, depths=[1], num_heads=2,
        num_group_tokens=[0], num_output_groups=[], drop_path_rate=0.0,
    )  # fmt: skip
    tokens, assignments, grid = GroupViT(spec).eval().forward_groups(torch.randn(2, 3, 8, 8))
    assert assignments == [] and grid == (2, 2) and tokens.shape == (2, 4, 16)


def test_itc_and_multi_label_scales_are_separate_and_clamped():
    model = _tiny_model()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.itc_scale().item() == pytest.approx(100.0)
    assert model.multi_label_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_two_step_fit(tmp_path):
    import lightning as L

    from datamodules.cocu import CoCuDataModule
    from zoo.eval.segmentation import ZeroShotSegmentationEval

    dm = CoCuDataModule(
        source="mosaics",
        mosaics={
            "root": str(tmp_path / "mosaics"),
            "splits": {"train": 16, "test": 4},
            "tile_size": 8,
        },
        concepts="caption",
        image_size=16,
        context_length=16,
        batch_size=8,
    )
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = ZeroShotSegmentationEval(split="test")
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[callback],
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert not torch.equal(before["multi_label_logit_scale"], model.multi_label_logit_scale)
    assert "eval/zeroshot_seg_miou" in callback.results
    assert 0.0 <= callback.results["eval/zeroshot_seg_miou"] <= 100.0


def test_background_threshold_is_chosen_on_the_held_out_split_not_the_evaluated_one(monkeypatch):
    from types import SimpleNamespace

    from zoo.eval.segmentation import ZeroShotSegmentationEval

    # mIoU per (split, threshold): val prefers 0.2, test would prefer 0.0
    table = {("val", 0.0): 5.0, ("val", 0.2): 9.0, ("val", 0.5): 3.0}
    table |= {("test", 0.0): 12.0, ("test", 0.2): 8.0, ("test", 0.5): 2.0}
    seen = []

    def fake_miou(self, trainer, module, dm, weights, split, thresh):
        seen.append((split, thresh))
        return table[(split, thresh)], 7

    monkeypatch.setattr(ZeroShotSegmentationEval, "_miou", fake_miou)
    callback = ZeroShotSegmentationEval(split="test", bg_thresh=[0.0, 0.2, 0.5], select_split="val")
    dm = SimpleNamespace(segmentation_classnames=["one", "two"], templates=["a {}."])
    module = SimpleNamespace(class_weights=lambda names, templates, tokenizer: torch.ones(2, 4))
    metrics, summary = callback.evaluate(None, module, dm)
    assert metrics == {"zeroshot_seg_bg_thresh": 0.2, "zeroshot_seg_miou": 8.0}
    assert [s for s in seen if s[0] == "test"] == [("test", 0.2)]  # test scored once
    assert "chosen on val" in summary
    with pytest.raises(ValueError, match="needs select_split"):
        ZeroShotSegmentationEval(bg_thresh=[0.1, 0.5])
    with pytest.raises(ValueError, match="must differ"):
        ZeroShotSegmentationEval(split="test", bg_thresh=[0.1], select_split="test")


def test_a_missing_threshold_split_fails_before_training(tmp_path):
    import lightning as L

    from datamodules.cocu import CoCuDataModule
    from zoo.eval.segmentation import ZeroShotSegmentationEval

    dm = CoCuDataModule(
        source="mosaics",
        mosaics={
            "root": str(tmp_path / "mosaics"),
            "splits": {"train": 16, "test": 4},
            "tile_size": 8,
        },
        concepts="caption",
        image_size=16,
        context_length=16,
        batch_size=8,
    )
    callback = ZeroShotSegmentationEval(split="test", bg_thresh=[0.0, 0.5], select_split="val")
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with pytest.raises(FileNotFoundError, match="masks/val"):
        trainer.fit(_tiny_model(), dm)
    assert trainer.global_step == 0  # the mosaics have no val split: refused at fit start


def test_curated_mosaics_prepare_data(tmp_path, monkeypatch):
    """prepare_data curates the mosaics with a teacher checkpoint and setup trains on it."""
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    from datamodules.cocu import CoCuDataModule
    from lightning_modules.clip import CLIP
    from zoo.preprocess import PreprocessSpec

    teacher = CLIP(encoder={"preset": "vit-tiny-digits"})
    ckpt = tmp_path / "teacher.ckpt"
    # what `zoo fit` saves, less the trainer state: weights, init args, preprocessing
    torch.save(
        {
            "state_dict": teacher.state_dict(),
            "hyper_parameters": {
                **dict(teacher.hparams),
                "_class_path": "lightning_modules.clip.CLIP",
            },
            "preprocess": PreprocessSpec(image_size=16, context_length=16).to_config(),
        },
        ckpt,
    )
    dm = CoCuDataModule(
        source="mosaics",
        mosaics={
            "root": str(tmp_path / "mosaics"),
            "splits": {"train": 24, "test": 4},
            "tile_size": 8,
        },
        curation={"teacher": str(ckpt), "size": 4, "backend": "torch"},
        image_size=16,
        context_length=16,
        batch_size=8,
    )
    dm.prepare_data()
    dm.setup("fit")
    rows = [json.loads(line) for line in Path(dm.splits["train"].path).read_text().splitlines()]
    assert len(rows) == 24
    caption, scored, _ = parse_rewritten(rows[0]["caption"])
    assert caption.startswith("a ") and scored and set(scored) <= set(dm.gallery)
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape == (8, 4, 16)
    # the curation's precision against the mosaics' true digits, next to the curated file
    quality = json.loads((Path(dm.splits["train"].path).parent / "quality.json").read_text())
    coco = json.loads(Path(dm.mosaics.files().instances("train")).read_text())
    per_image = {(a["image_id"], a["category_id"]) for a in coco["annotations"]}
    assert quality["chance"] == pytest.approx(100 * len(per_image) / (24 * 10))
    # the wiring: the recorded precision is that of the written captions against each
    # mosaic's digits (concept_precision itself is checked by hand above)
    from zoo.cocu.curation import concept_precision
    from zoo.data.digit_mosaics import DIGIT_NAMES

    by_file = {img["file_name"]: img["id"] for img in coco["images"]}
    truth = [
        {DIGIT_NAMES[c - 1] for i, c in per_image if i == by_file[Path(r["image"]).name]}
        for r in rows
    ]
    archives = [parse_rewritten(r["caption"])[1] for r in rows]
    assert quality["top3_precision"] == concept_precision(archives, truth, 3)


def test_zoo_curate_names_every_missing_input_before_loading_anything(tmp_path, capsys):
    from zoo.cocu.rewrite import curate_command

    gallery = tmp_path / "gallery.json"
    gallery.write_text('["seven", "two"]')
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exit_info:
        curate_command(
            [
                str(tmp_path / "pairs.csv"),
                str(tmp_path / "shard-{000..001}.tar"),
                "--output",
                str(out),
                "--teacher",
                str(tmp_path / "teacher.ckpt"),
                "--gallery",
                str(gallery),
                "--image-root",
                str(tmp_path / "images"),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for name in ("pairs.csv", "shard-000.tar", "shard-001.tar", "teacher.ckpt", "images"):
        assert name in err
    assert "gallery" not in err.split("not found:")[1]  # the gallery exists
    assert not out.exists()
