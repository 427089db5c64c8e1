"""DETR head, Hungarian matcher and set criterion against hand computations (ViSFT card,
faithfulness tests 5 and 6: the DETR weight dict, Hungarian matching and GIoU on hand cases)."""

import copy
import math

import pytest
import torch

from zoo.heads.detr import DETRHead, DETRHeadSpec
from zoo.losses.detr import HungarianMatcher, SetCriterion, detr_weight_dict
from zoo.specs import to_spec

# Boxes in normalised (cx, cy, w, h), all 0.2 × 0.2 on the same row y ∈ [0.4, 0.6], so every
# GIoU below is 1-D arithmetic on x intervals (areas = 0.2 · length).
A = [0.2, 0.5, 0.2, 0.2]  # x ∈ [0.1, 0.3]
B = [0.8, 0.5, 0.2, 0.2]  # x ∈ [0.7, 0.9]
Q_MID = [0.45, 0.5, 0.2, 0.2]  # x ∈ [0.35, 0.55]: nearer A than B, overlapping neither
Q_NEAR_B = [0.55, 0.5, 0.2, 0.2]  # x ∈ [0.45, 0.65]: disjoint from B, 0.25 L1 from it


def _outputs(logits, boxes):
    return {
        "pred_logits": torch.tensor(logits, dtype=torch.float32),
        "pred_boxes": torch.tensor(boxes, dtype=torch.float32),
    }


def _target(labels, boxes):
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    }


# ----------------------------------------------------------------------------- matcher


def test_matcher_cost_and_assignment_on_a_hand_2x2_case():
    # q0's nearest target is t0, but q1 sits exactly on t0: the optimum sends q0 to t1.
    outputs = _outputs([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], [[Q_MID, A]])
    targets = [_target([0, 1], [A, B])]
    e2 = math.exp(2.0)
    p_q0 = [e2 / (e2 + 2), 1 / (e2 + 2)]  # softmax([2, 0, 0]) at classes 0 and 1
    # GIoU = IoU − (enclosing − union) / enclosing; disjoint pairs have IoU 0, union 0.08
    giou_q0_t0 = -(0.09 - 0.08) / 0.09  # enclosing x ∈ [0.1, 0.55]
    giou_q0_t1 = -(0.11 - 0.08) / 0.11  # enclosing x ∈ [0.35, 0.9]
    giou_q1_t1 = -(0.16 - 0.08) / 0.16  # enclosing x ∈ [0.1, 0.9]
    expected = [
        [-p_q0[0] + 5 * 0.25 - 2 * giou_q0_t0, -p_q0[1] + 5 * 0.35 - 2 * giou_q0_t1],
        [-1 / 3 + 5 * 0.0 - 2 * 1.0, -1 / 3 + 5 * 0.6 - 2 * giou_q1_t1],
    ]
    matcher = HungarianMatcher()
    cost, sizes = matcher.cost(outputs, targets)
    assert sizes == [2]
    torch.testing.assert_close(cost[0], torch.tensor(expected), atol=1e-5, rtol=0)
    # row-greedy would give q0 → t0 (0.69 < 2.19); the minimum total is the anti-diagonal
    assert expected[0][0] < expected[0][1]
    ((rows, cols),) = matcher(outputs, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matcher_batch_with_an_empty_image_gives_local_indices():
    logits = torch.zeros(2, 2, 3)
    boxes = torch.tensor([[A, B], [Q_MID, A]])
    targets = [_target([], []), _target([0, 1], [A, B])]
    matches = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert [m[0].tolist() for m in matches] == [[], [0, 1]]
    assert [m[1].tolist() for m in matches] == [[], [1, 0]]


# ----------------------------------------------------------------------------- losses


def test_loss_bbox_and_giou_by_hand():
    # q0 = t0 exactly (contributes 0); q1 is 0.25 in cx from t1 and disjoint from it
    # (GIoU −1/9); q2 is a far, small box left unmatched. N = 2 target boxes.
    outputs = _outputs([[[0.0] * 3] * 3], [[A, Q_NEAR_B, [0.5, 0.5, 0.1, 0.1]]])
    targets = [_target([0, 1], [A, B])]
    losses = SetCriterion(num_classes=2)(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx((0.0 + 0.25) / 2, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx((0.0 + (1 + 1 / 9)) / 2, abs=1e-6)


def test_identical_boxes_give_zero_box_losses():
    outputs = _outputs([[[0.0] * 3] * 2], [[B, A]])
    losses = SetCriterion(num_classes=2)(outputs, [_target([1, 0], [A, B])])
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)


def _ce(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[label]


@pytest.mark.parametrize("eos_coef", [0.1, 1.0])
def test_loss_ce_downweights_no_object_by_eos_coef(eos_coef):
    logits = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.2], [0.0, 1.0, 0.4]]
    # one target of class 0, exactly at q1's box: q1 → class 0, q0 and q2 → no-object (2)
    outputs = _outputs([logits], [[B, A, [0.5, 0.5, 0.1, 0.1]]])
    losses = SetCriterion(num_classes=2, eos_coef=eos_coef)(outputs, [_target([0], [A])])
    terms = [(eos_coef, _ce(logits[0], 2)), (1.0, _ce(logits[1], 0)), (eos_coef, _ce(logits[2], 2))]
    expected = sum(w * ce for w, ce in terms) / sum(w for w, _ in terms)
    assert losses["loss_ce"].item() == pytest.approx(expected, abs=1e-6)


def test_image_without_targets_gives_only_the_no_object_ce():
    logits = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]
    outputs = _outputs([logits], [[A, B]])
    outputs["pred_logits"].requires_grad_(True)
    outputs["pred_boxes"].requires_grad_(True)
    losses = SetCriterion(num_classes=2)(outputs, [_target([], [])])
    # every query's target is no-object, all with weight eos_coef: the weighted mean is the mean
    expected_ce = (_ce(logits[0], 2) + _ce(logits[1], 2)) / 2
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, abs=1e-6)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss"].item() == pytest.approx(expected_ce, abs=1e-6)
    assert losses["cardinality_error"].item() == 1.0  # q0 predicts no-object, q1 class 0
    losses["loss"].backward()
    assert outputs["pred_boxes"].grad.abs().sum().item() == 0.0
    assert outputs["pred_logits"].grad.abs().sum().item() > 0.0


def test_empty_image_in_a_batch_adds_no_box_loss():
    criterion = SetCriterion(num_classes=2)
    alone = criterion(_outputs([[[0.0] * 3] * 2], [[A, Q_NEAR_B]]), [_target([0, 1], [A, B])])
    batch = _outputs([[[0.0] * 3] * 2] * 2, [[B, A], [A, Q_NEAR_B]])
    mixed = criterion(batch, [_target([], []), _target([0, 1], [A, B])])
    assert mixed["loss_bbox"].item() == pytest.approx(alone["loss_bbox"].item(), abs=1e-7)
    assert mixed["loss_giou"].item() == pytest.approx(alone["loss_giou"].item(), abs=1e-7)


def test_weight_dict_is_detr_plus_aux_copies():
    assert detr_weight_dict(1) == {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    assert detr_weight_dict(3) == {
        "loss_ce": 1,
        "loss_bbox": 5,
        "loss_giou": 2,
        "loss_ce_0": 1,
        "loss_bbox_0": 5,
        "loss_giou_0": 2,
        "loss_ce_1": 1,
        "loss_bbox_1": 5,
        "loss_giou_1": 2,
    }
    paper = detr_weight_dict(6)  # ViSFT: 6 decoder layers → 5 auxiliary copies
    assert len(paper) == 18 and paper["loss_giou_4"] == 2 and "loss_ce_5" not in paper


def test_aux_layers_are_matched_on_their_own_and_weighted():
    outputs = _outputs([[[0.0] * 3] * 2], [[A, Q_NEAR_B]])
    # the auxiliary layer predicts the exact boxes in the other query order
    outputs["aux_outputs"] = [_outputs([[[0.0] * 3] * 2], [[B, A]])]
    losses = SetCriterion(num_classes=2)(outputs, [_target([0, 1], [A, B])])
    assert losses["loss_bbox_0"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_giou_0"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.125, abs=1e-6)
    expected = sum(
        losses[f"loss_ce{s}"] + 5 * losses[f"loss_bbox{s}"] + 2 * losses[f"loss_giou{s}"]
        for s in ("", "_0")
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_loss_without_weight_is_an_error():
    outputs = _outputs([[[0.0] * 3]], [[A]])
    outputs["aux_outputs"] = [_outputs([[[0.0] * 3]], [[A]])]
    criterion = SetCriterion(num_classes=2, weight_dict=detr_weight_dict(1))
    with pytest.raises(KeyError, match="loss_bbox_0.*detr_weight_dict\\(2\\)"):
        criterion(outputs, [_target([0], [A])])


@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (
            [_target([0], [A]), {"labels": torch.tensor([1])}],
            KeyError,
            r"targets\[1\] has no 'boxes'",
        ),
        ([_target([0], [A]), _target([2], [B])], ValueError, r"targets\[1\]: label 2"),
        (
            [_target([0], [A]), {"labels": torch.tensor([1.0]), "boxes": torch.tensor([B])}],
            ValueError,
            r"targets\[1\]\['labels'\] must be int64",
        ),
        ([_target([0], [A]), _target([1], [[0.5, 0.5, 0.0, 0.2]])], ValueError, "w, h > 0"),
        ([_target([0], [A])], ValueError, "1 target dicts for a batch of 2"),
    ],
)
def test_bad_targets_name_the_image_and_key(targets, error, message):
    outputs = _outputs([[[0.0] * 3]] * 2, [[A], [B]])
    with pytest.raises(error, match=message):
        SetCriterion(num_classes=2)(outputs, targets)


def test_wrong_class_count_is_an_error():
    with pytest.raises(ValueError, match="num_classes \\+ 1 = 4"):
        SetCriterion(num_classes=3)(_outputs([[[0.0] * 3]], [[A]]), [_target([0], [A])])


# ----------------------------------------------------------------------------- head


def test_paper_spec_matches_the_official_visft_detection_head():
    spec = DETRHeadSpec()
    head = DETRHead(1408, spec)  # EVA-ViT-G width
    assert head.input_proj.weight.shape == (128, 1408, 1, 1)
    assert head.position.num_pos_feats == 64  # 2 · 64 = 128 channels
    assert len(head.encoder) == 6 and len(head.decoder) == 6
    enc, dec = head.encoder[0], head.decoder[0]
    assert (enc.self_attn.embed_dim, enc.self_attn.num_heads, enc.self_attn.dropout) == (
        128,
        8,
        0.1,
    )
    assert (dec.cross_attn.embed_dim, dec.cross_attn.num_heads) == (256, 8)
    assert enc.ffn[0].weight.shape == (1024, 128) and dec.ffn[0].weight.shape == (1024, 256)
    assert head.memory_proj.weight.shape == (256, 128) and head.pos_proj.weight.shape == (256, 128)
    assert head.task_token.shape == (1, 1, 128) and spec.residual_memory
    assert head.query_embed.weight.shape == (100, 256)
    assert head.class_embed.weight.shape == (92, 256)  # 91 COCO classes + no-object
    linears = [m for m in head.bbox_embed if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(256, 256), (256, 256), (4, 256)]


def test_tiny_preset_and_mapping_resolution():
    tiny = to_spec(DETRHeadSpec, {"preset": "tiny", "num_classes": 4})
    assert tiny == DETRHeadSpec.tiny(num_classes=4)
    assert (tiny.num_queries, tiny.num_encoder_layers, tiny.num_decoder_layers) == (8, 2, 2)
    assert to_spec(DETRHeadSpec, {"preset": "paper"}) == DETRHeadSpec()
    with pytest.raises(ValueError, match="unknown DETRHeadSpec preset 'huge'"):
        to_spec(DETRHeadSpec, {"preset": "huge"})
    with pytest.raises(ValueError, match="decoder_dim=60 is not divisible by num_heads=8"):
        DETRHeadSpec(decoder_dim=60)


def _tiny_head(seed: int = 0, **overrides) -> DETRHead:
    torch.manual_seed(seed)
    return DETRHead(16, DETRHeadSpec.tiny(num_classes=3, **overrides)).eval()


def _features(seed: int = 1, shape=(2, 16, 4, 4)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_permuting_queries_permutes_predictions():
    head, x = _tiny_head(), _features()
    out = head(x)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    head.query_embed.weight.copy_(head.query_embed.weight[perm])
    permuted = head(x)
    torch.testing.assert_close(permuted["pred_logits"], out["pred_logits"][:, perm])
    torch.testing.assert_close(permuted["pred_boxes"], out["pred_boxes"][:, perm])
    aux, aux_perm = out["aux_outputs"][0], permuted["aux_outputs"][0]
    torch.testing.assert_close(aux_perm["pred_boxes"], aux["pred_boxes"][:, perm])


@torch.no_grad()
def test_position_embedding_is_the_only_spatial_signal():
    head, x = _tiny_head(), _features()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    shuffled = x.flatten(2)[:, :, perm].reshape_as(x)
    # with the sine embedding, moving the pixels around changes the predictions ...
    assert not torch.allclose(head(shuffled)["pred_boxes"], head(x)["pred_boxes"], atol=1e-3)
    # ... and without it, attention is blind to where a pixel is
    head.position.forward = lambda fmap, mask=None: torch.zeros_like(fmap)
    torch.testing.assert_close(head(shuffled)["pred_boxes"], head(x)["pred_boxes"])


@torch.no_grad()
def test_padded_pixels_do_not_reach_the_predictions():
    head, x = _tiny_head(), _features()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :, 3] = True  # last column is padding
    changed = x.clone()
    changed[..., 3] = 100.0
    torch.testing.assert_close(head(changed, mask)["pred_logits"], head(x, mask)["pred_logits"])
    assert not torch.allclose(head(changed)["pred_logits"], head(x)["pred_logits"], atol=1e-3)


@torch.no_grad()
def test_aux_output_is_the_prediction_after_that_layer():
    head, x = _tiny_head(), _features()
    truncated = copy.deepcopy(head)
    truncated.decoder = torch.nn.ModuleList(truncated.decoder[:1])
    aux = head(x)["aux_outputs"]
    assert len(aux) == 1
    last = truncated(x)
    torch.testing.assert_close(aux[0]["pred_logits"], last["pred_logits"])
    torch.testing.assert_close(aux[0]["pred_boxes"], last["pred_boxes"])
    assert last["aux_outputs"] == []


@torch.no_grad()
def test_task_token_is_attended_to():
    head, x = _tiny_head(), _features()
    before = head(x)["pred_logits"]
    head.task_token.add_(1.0)
    assert not torch.allclose(head(x)["pred_logits"], before, atol=1e-3)
    assert _tiny_head(task_token=False).task_token is None


@torch.no_grad()
def test_residual_memory_adds_the_encoder_input():
    # no encoder layers and no input_proj bias: memory is 2·W·x with the ViSFT residual and
    # W·(2x) without it, so the two heads agree exactly on x and 2x
    residual = _tiny_head(num_encoder_layers=0, residual_memory=True)
    plain = copy.deepcopy(residual)
    plain.spec = DETRHeadSpec.tiny(num_classes=3, num_encoder_layers=0, residual_memory=False)
    for head in (residual, plain):
        head.input_proj.bias.zero_()
    x = _features()
    torch.testing.assert_close(residual(x)["pred_boxes"], plain(2 * x)["pred_boxes"])
    assert not torch.allclose(residual(x)["pred_boxes"], plain(x)["pred_boxes"], atol=1e-3)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on shared cores
    yield
    torch.set_num_threads(threads)


def test_tiny_head_fits_two_boxes_through_the_matching(one_thread):
    torch.manual_seed(0)
    head = DETRHead(16, DETRHeadSpec.tiny(num_classes=3, dropout=0.0))
    criterion = SetCriterion(num_classes=3, weight_dict=detr_weight_dict(2))
    x = _features(0, (1, 16, 4, 4))
    boxes = [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]
    targets = [_target([0, 2], boxes)]
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(100):
        loss = criterion(head(x), targets)["loss"]
        if step == 0:
            first = loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        out = head(x)
        final = criterion(out, targets)["loss"].item()
        ((queries, order),) = criterion.matcher(out, targets)
    assert final < first / 10, (first, final)
    matched = out["pred_boxes"][0, queries]
    torch.testing.assert_close(matched, torch.tensor(boxes)[order], atol=0.03, rtol=0)
    assert out["pred_logits"][0, queries].argmax(-1).tolist() == [[0, 2][j] for j in order]
    unmatched = torch.ones(8, dtype=torch.bool)
    unmatched[queries] = False
    assert (out["pred_logits"][0, unmatched].argmax(-1) == 3).all()  # the rest: no-object
