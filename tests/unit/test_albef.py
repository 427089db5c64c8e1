"""ALBEF's objectives: ITA targets and their CLIP limit, BERT masking statistics, hard negatives
that follow the ITC softmax, ITM / MLM losses by hand, the EMA rule and the fusion encoder's
attention pattern."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.heads.albef import (
    AlbefObjectives,
    AlbefSpec,
    FeatureQueue,
    FusionEncoder,
    MomentumCopy,
    clamp_albef_logit_scale_,
)
from zoo.losses import clip_infonce
from zoo.losses.albef import (
    ita_loss,
    ita_targets,
    itm_loss,
    mask_tokens,
    mlm_loss,
    sample_hard_negatives,
)

PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 40
IMAGE_W, TEXT_W = 24, 16


def tiny_objectives(**spec) -> AlbefObjectives:
    torch.manual_seed(0)
    spec = AlbefSpec(fusion_layers=2, heads=4, dropout=0.0, **spec)
    return AlbefObjectives(spec, IMAGE_W, TEXT_W, VOCAB, PAD, MASK, [CLS]).eval()


# ---------------------------------------------------------------- ITA


def test_ita_targets_match_the_hand_value_and_rows_sum_to_one():
    sim_m = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    e, e2 = math.e, math.e**2
    expected = torch.tensor(
        [
            [0.4 * e / (e + 1) + 0.6, 0.4 / (e + 1)],
            [0.4 / (1 + e2), 0.4 * e2 / (1 + e2) + 0.6],
        ]
    )
    torch.testing.assert_close(ita_targets(sim_m, 0.4), expected)
    with_queue = ita_targets(torch.randn(5, 13) * 5, 0.4)  # batch + queue columns
    torch.testing.assert_close(with_queue.sum(1), torch.ones(5))
    assert torch.all(with_queue[:, 5:] < 0.4 + 1e-6)  # the queue columns carry no identity part


def test_ita_loss_by_hand_and_alpha_zero_is_the_clip_loss():
    torch.manual_seed(1)
    z_i, z_t, scale = torch.randn(6, 8), torch.randn(6, 8), 1 / 0.07
    sim = scale * F.normalize(z_i, dim=-1) @ F.normalize(z_t, dim=-1).T
    noise = torch.randn(6, 6) * 10  # any momentum logits: α = 0 ignores them
    torch.testing.assert_close(
        ita_loss(sim, sim.T, noise, noise.T, 0.0), clip_infonce(z_i, z_t, scale)
    )

    s = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # online logits; momentum logits = 0 → uniform
    q = [[0.4 * 0.5 + 0.6, 0.2], [0.2, 0.8]]
    log_p_i2t = [[2 - math.log(math.e**2 + 1), -math.log(math.e**2 + 1)], [-math.log(2)] * 2]
    log_p_t2i = [
        [2 - math.log(math.e**2 + math.e), 1 - math.log(math.e**2 + math.e)],
        [-math.log(1 + math.e), 1 - math.log(1 + math.e)],
    ]
    by_hand = 0.5 * sum(
        -sum(q[r][c] * lp[r][c] for r in range(2) for c in range(2)) / 2
        for lp in (log_p_i2t, log_p_t2i)
    )
    zeros = torch.zeros(2, 2)
    assert ita_loss(s, s.T, zeros, zeros, 0.4).item() == pytest.approx(by_hand, rel=1e-6)


def test_logit_scale_clamp_is_albefs_temperature_range():
    t = torch.tensor([math.log(1 / 1e-4), math.log(1 / 0.9), math.log(1 / 0.07)])
    clamp_albef_logit_scale_(t)
    torch.testing.assert_close(t, torch.tensor([math.log(1000), math.log(2), math.log(1 / 0.07)]))


# ---------------------------------------------------------------- MLM masking


def test_mask_tokens_statistics_and_exclusions():
    g = torch.Generator().manual_seed(0)
    b, length = 400, 120
    ids = torch.randint(4, VOCAB * 100, (b, length), generator=g)
    lengths = torch.randint(10, length + 1, (b,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids[:, 0], ids[mask == 0] = CLS, PAD
    ids[torch.arange(b), lengths - 1] = SEP
    masked, labels = mask_tokens(ids, mask, 0.15, VOCAB * 100, MASK, [PAD, CLS, SEP], g)

    chosen = labels != -100
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP)
    assert not chosen[~eligible].any()  # never padding or special tokens
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.006)
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    n = chosen.sum()
    to_mask = (masked[chosen] == MASK).sum() / n
    to_random = ((masked[chosen] != MASK) & (masked[chosen] != ids[chosen])).sum() / n
    kept = (masked[chosen] == ids[chosen]).sum() / n
    assert (to_mask.item(), to_random.item(), kept.item()) == pytest.approx(
        (0.8, 0.1, 0.1), abs=0.015
    )

    again = mask_tokens(
        ids, mask, 0.15, VOCAB * 100, MASK, [PAD, CLS, SEP], torch.Generator().manual_seed(7)
    )
    same = mask_tokens(
        ids, mask, 0.15, VOCAB * 100, MASK, [PAD, CLS, SEP], torch.Generator().manual_seed(7)
    )
    assert torch.equal(again[0], same[0]) and torch.equal(again[1], same[1])
    assert not torch.equal(again[1], labels)


# ---------------------------------------------------------------- hard negatives


def test_hard_negatives_never_pick_the_positive_and_follow_the_softmax():
    g = torch.Generator().manual_seed(0)
    dominant = torch.zeros(5, 5)
    dominant.fill_diagonal_(30.0)  # the positive dominates, yet is never drawn
    dominant[torch.arange(5), (torch.arange(5) + 2) % 5] = 15.0
    draws = torch.stack([sample_hard_negatives(dominant, g) for _ in range(20)])
    assert torch.equal(draws, ((torch.arange(5) + 2) % 5).expand(20, 5))

    # one draw per row of a large batch: row i puts log 3 on i+1, 0 on i+2, −1e9 elsewhere
    b, rows = 1500, torch.arange(1500)
    sim = torch.full((b, b), -1e9)
    sim[rows, rows] = 9.0  # the positive
    sim[rows, (rows + 1) % b] = math.log(3.0)
    sim[rows, (rows + 2) % b] = 0.0
    draws = sample_hard_negatives(sim, g)
    assert set(((draws - rows) % b).tolist()) == {1, 2}  # never the positive, never a −1e9
    assert (draws == (rows + 1) % b).float().mean().item() == pytest.approx(0.75, abs=0.04)

    # off-diagonal softmax underflows to 0: a uniform draw over the other samples instead
    underflow = torch.full((200, 200), -1e4).fill_diagonal_(0.0)
    draws = sample_hard_negatives(underflow, g)
    assert not (draws == torch.arange(200)).any() and len(set(draws.tolist())) > 100


# ---------------------------------------------------------------- ITM


def test_itm_loss_is_the_hand_cross_entropy():
    pos = torch.tensor([[0.0, 1.0]])
    neg = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    by_hand = (-(1 - math.log(1 + math.e)) - (2 - math.log(math.e**2 + 1)) - (0 - math.log(2))) / 3
    assert itm_loss(pos, neg).item() == pytest.approx(by_hand, rel=1e-6)


def test_objectives_itm_pairs_each_sample_with_its_only_negative():
    model = tiny_objectives(mlm=False)
    torch.manual_seed(2)
    image, text = torch.randn(2, 5, IMAGE_W), torch.randn(2, 6, TEXT_W)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    sim = torch.randn(2, 2)
    out = model(
        image_tokens=image,
        text_tokens=text,
        text_ids=torch.zeros(2, 6, dtype=torch.long),
        text_mask=mask,
        sim_i2t=sim,
        sim_t2i=sim.T,
        encode_text_tokens=None,
    )
    assert set(out) == {"itm"}

    def logit_rows(img, txt, msk):
        cls = model.fusion(txt, msk, img)[:, 0]
        return (cls @ model.itm_head.weight.T + model.itm_head.bias).log_softmax(-1)

    swap = torch.tensor([1, 0])  # with two pairs the hard negative is forced
    pos = logit_rows(image, text, mask)[:, 1]
    neg_image = logit_rows(image[swap], text, mask)[:, 0]
    neg_text = logit_rows(image, text[swap], mask[swap])[:, 0]
    torch.testing.assert_close(out["itm"], -torch.cat([pos, neg_image, neg_text]).mean())


# ---------------------------------------------------------------- MLM


def test_mlm_loss_by_hand_and_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(3)
    logits, soft = torch.randn(2, 4, 7), torch.randn(2, 4, 7).softmax(-1)
    labels = torch.tensor([[-100, 3, -100, 6], [0, -100, -100, -100]])
    plain = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mlm_loss(logits, labels, soft, alpha=0.0), plain)
    torch.testing.assert_close(mlm_loss(logits, labels), plain)
    chosen = labels != -100
    distill = -(soft[chosen] * logits[chosen].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(
        mlm_loss(logits, labels, soft, alpha=0.4), 0.6 * plain + 0.4 * distill
    )
    empty = mlm_loss(logits, torch.full_like(labels, -100), soft, 0.4)
    assert empty.item() == 0.0


def test_objectives_mlm_distillation_and_its_alpha_zero_limit():
    model = tiny_objectives(itm=False)
    emb = nn.Embedding(VOCAB, TEXT_W)
    torch.manual_seed(4)
    image = torch.randn(3, 5, IMAGE_W)
    ids = torch.randint(4, VOCAB, (3, 8))
    ids[:, 0] = CLS
    mask = torch.ones(3, 8, dtype=torch.long)
    masked = model.mask(ids, mask, torch.Generator().manual_seed(0))
    teacher = torch.randn(3, 8, VOCAB)
    common = dict(
        image_tokens=image,
        text_tokens=emb(ids),
        text_ids=ids,
        text_mask=mask,
        sim_i2t=torch.zeros(3, 3),
        sim_t2i=torch.zeros(3, 3),
        encode_text_tokens=lambda i, m: emb(i),
        masked=masked,
    )
    plain = model(**common)["mlm"]
    logits = model.mlm_logits(image, emb(masked[0]), mask)
    hand = F.cross_entropy(logits.reshape(-1, VOCAB), masked[1].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(plain, hand)
    torch.testing.assert_close(
        model(**common, momentum_logits_mlm=teacher, alpha=0.0)["mlm"], plain
    )
    distilled = model(**common, momentum_logits_mlm=teacher)["mlm"]  # spec α = 0.4
    chosen = masked[1] != -100
    soft_ce = -(teacher.softmax(-1)[chosen] * logits[chosen].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(distilled, 0.6 * hand + 0.4 * soft_ce)
    with pytest.raises(ValueError, match="same masked ids"):
        model(**{**common, "masked": None}, momentum_logits_mlm=teacher)


# ---------------------------------------------------------------- momentum, fusion, queue


def test_momentum_copy_follows_the_ema_rule_by_hand():
    torch.manual_seed(5)
    online = {"proj": nn.Linear(4, 3), "fusion": FusionEncoder(8, 8, 1, 2, dropout=0.0)}
    copy = MomentumCopy(online, momentum=0.995)
    assert not any(p.requires_grad for p in copy.parameters())
    before = {k: v.clone() for k, v in copy.ema.module.state_dict().items()}
    with torch.no_grad():
        for p in online["proj"].parameters():
            p.add_(torch.randn_like(p))
    copy.update(online)
    w_m, w = before["proj.weight"], online["proj"].weight
    torch.testing.assert_close(copy["proj"].weight, 0.995 * w_m + (1 - 0.995) * w)
    torch.testing.assert_close(
        copy["fusion"].layers[0].output.dense.weight, before["fusion.layers.0.output.dense.weight"]
    )


def test_fusion_attends_to_image_tokens_and_ignores_padded_text():
    torch.manual_seed(6)
    fusion = FusionEncoder(TEXT_W, IMAGE_W, 2, 4, dropout=0.0).eval()
    text, image = torch.randn(2, 6, TEXT_W), torch.randn(2, 5, IMAGE_W)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = fusion(text, mask, image)

    image2 = image.clone()
    image2[0, 3] += 1.0
    changed = fusion(text, mask, image2)
    assert not torch.allclose(changed[0, :4], out[0, :4], atol=1e-4)
    torch.testing.assert_close(changed[1], out[1])

    text2 = text.clone()
    text2[0, 5] += 5.0  # a padded position
    torch.testing.assert_close(fusion(text2, mask, image)[0, :4], out[0, :4])

    text3 = text.clone()
    text3[0, 3] += 5.0  # the last real token reaches [CLS]: self-attention is bidirectional
    assert not torch.allclose(fusion(text3, mask, image)[0, 0], out[0, 0], atol=1e-4)


def test_feature_queue_wraps_and_bad_specs_name_the_key():
    queue = FeatureQueue(3, 4)
    feats = torch.eye(3)[:2]
    queue.enqueue(feats, -feats)
    queue.enqueue(2 * feats, -2 * feats)
    queue.enqueue(3 * feats, -3 * feats)  # wraps to columns 0–1
    torch.testing.assert_close(queue.image, torch.cat([3 * feats, 2 * feats]).T)
    assert int(queue.ptr) == 2
    with pytest.raises(ValueError, match="queue_size"):
        queue.enqueue(torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="distill_alpha"):
        AlbefSpec(distill_alpha=1.5)
    with pytest.raises(ValueError, match="AlbefSpec.heads"):
        AlbefObjectives(AlbefSpec(heads=12), IMAGE_W, TEXT_W, VOCAB, PAD, MASK, [CLS])
