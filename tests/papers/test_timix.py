"""TiMix faithfulness tests (TiMix card, "Faithfulness tests" 1-5), the vectorised mixing
against a per-sample reference written after the official ``TPMix.tpmix``, the two flags, the
order and reach of the three optimiser steps, the region data, and a short fit of tiny.yaml."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_modules.timix import TiMix
from zoo.data.regions import RegionPhraseBuilder, RegionPhrases
from zoo.data.samples import BadSample
from zoo.data.window_mix import draw_side, mix_windows, side_range
from zoo.heads.patch_predictor import TextAwarePatchPredictor, box_patch_labels
from zoo.losses import clip_infonce
from zoo.losses.timix import (
    mix_weight,
    mixed_itc,
    mixed_soft_labels,
    mixing_active,
    patch_saliency,
    pta_loss,
)

from ._tiny import tiny_batch, tiny_encoder_spec


# ------------------------------------------------------------------ 1. exact pixel mixing
def test_exact_pixel_mixing_on_a_hand_set_saliency():
    """B = 2 images of 16×16, patch 4 (S = 4): the target's least salient 2×2 window is the
    top-left, the source's most salient the bottom-right. Target 0's top-left 8×8 pixels
    become source 1's bottom-right 8×8 pixels, nothing else changes, λ = (16 − 4)/16."""
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    saliency = torch.zeros(2, 4, 4)
    saliency[:, :2, :2] = -3.0  # least salient window of every image: top-left
    saliency[:, 2:, 2:] = 3.0  # most salient: bottom-right
    out = mix_windows(images, saliency, patch_size=4, side=2)
    assert out.lam == (16 - 4) / 16 == 0.75
    for target, source in ((0, 1), (1, 0)):
        assert torch.equal(out.images[target, :, :8, :8], images[source, :, 8:, 8:])
        keep = torch.ones(16, 16, dtype=torch.bool)
        keep[:8, :8] = False
        assert torch.equal(out.images[target][:, keep], images[target][:, keep])
    assert out.target_pos.tolist() == [[0, 0], [0, 0]]
    assert out.source_pos.tolist() == [[2, 2], [2, 2]]
    assert out.pasted[0].flatten().tolist() == [1, 1, 0, 0, 1, 1, 0, 0] + [0] * 8


def test_window_side_range_is_the_configs_and_uniform():
    """S = 16 (256 px / 16): sides ⌊0.35·16⌋ = 5 … ⌊0.75·16⌋ = 12, each about 1/8 of draws."""
    assert list(side_range(16, 0.35, 0.75)) == list(range(5, 13))
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([draw_side(16, 0.35, 0.75, g) for _ in range(4000)])
    counts = torch.bincount(draws, minlength=13)[5:]
    assert set(draws.tolist()) == set(range(5, 13))
    assert (counts - 500).abs().max() < 80  # 4000/8 each, ±3.6 sd


def _reference_tpmix(images: torch.Tensor, saliency: torch.Tensor, patch: int, side: int):
    """The official ``TPMix.tpmix``, with the window search written per sample: unfold the
    images into patches, sum every side×side window of each image's saliency, take the argmin
    window of target i and the argmax window of source B−1−i, copy the source's patches
    (row-major within the window) onto the target's, fold back."""
    batch, _, size, _ = images.shape
    grid = size // patch
    patches = F.unfold(images, patch, stride=patch).transpose(1, 2).clone()  # (B, N, C·p²)
    source = patches.flip(0)
    index = torch.arange(grid * grid, dtype=torch.float).reshape(1, 1, grid, grid)
    windows = F.unfold(index, side, stride=1)[0].T.long()  # (L, side²) patch indices
    for i in range(batch):
        sums_i = F.unfold(saliency[i].reshape(1, 1, grid, grid), side, stride=1)[0].sum(0)
        j = batch - 1 - i
        sums_j = F.unfold(saliency[j].reshape(1, 1, grid, grid), side, stride=1)[0].sum(0)
        patches[i, windows[int(sums_i.argmin())]] = source[i, windows[int(sums_j.argmax())]]
    return F.fold(patches.transpose(1, 2), size, patch, stride=patch)


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_vectorised_mixing_equals_the_per_sample_reference(side):
    g = torch.Generator().manual_seed(side)
    images = torch.randn(6, 3, 24, 24, generator=g)
    saliency = torch.randn(6, 6, 6, generator=g)
    ours = mix_windows(images, saliency.flatten(1), patch_size=4, side=side)
    assert torch.equal(ours.images, _reference_tpmix(images, saliency, 4, side))
    assert ours.lam == (36 - side * side) / 36


def test_random_placement_pastes_the_drawn_source_window():
    """The CutMix-style ablation: windows drawn at random, same paste rule and λ."""
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = mix_windows(images, None, 4, 2, "random", torch.Generator().manual_seed(3))
    again = mix_windows(images, None, 4, 2, "random", torch.Generator().manual_seed(3))
    assert torch.equal(out.images, again.images) and out.lam == 0.75
    for i in range(4):
        (ty, tx), (sy, sx) = (out.target_pos[i] * 4).tolist(), (out.source_pos[i] * 4).tolist()
        assert torch.equal(
            out.images[i, :, ty : ty + 8, tx : tx + 8], images[3 - i, :, sy : sy + 8, sx : sx + 8]
        )
        assert int(out.pasted[i].sum()) == 4


# ---------------------------------------------------- 2. soft labels, 3. reduction to ITC
P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])


def test_soft_labels_by_hand_and_rows_sum_to_one():
    y = mixed_soft_labels(P, 0.75)
    # row 0 keeps 0.75 of P[0] and takes 0.25 of P[2] (its source, B−1−0 = 2)
    assert torch.allclose(y[0], torch.tensor([0.6, 0.225, 0.175]))
    assert torch.allclose(y[1], torch.tensor([0.1, 0.8, 0.1]))  # the middle row is its own source
    assert torch.allclose(y[2], torch.tensor([0.4, 0.275, 0.325]))
    assert torch.allclose(y.sum(1), torch.ones(3))


def test_lambda_one_gives_the_soft_target_itc_with_targets_p():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    tau = 0.07
    logits = F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T / tau
    i2t = -sum(float((P[i] * logits[i].log_softmax(0)).sum()) for i in range(3)) / 3
    t2i = -sum(float((P[i] * logits.T[i].log_softmax(0)).sum()) for i in range(3)) / 3
    loss = mixed_itc(v, t, mixed_soft_labels(P, 1.0), tau)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    # the paper-equation alternative reads the columns of Y for text→image
    t2i_t = -sum(float((P.T[i] * logits.T[i].log_softmax(0)).sum()) for i in range(3)) / 3
    transposed = mixed_itc(v, t, P, tau, text_targets="transposed")
    assert transposed.item() == pytest.approx((i2t + t2i_t) / 2, rel=1e-5)
    assert not math.isclose(transposed.item(), loss.item(), rel_tol=1e-4)


def test_identity_targets_reduce_to_clip_infonce_at_one_over_tau():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    for flag in ("same", "transposed"):
        loss = mixed_itc(v, t, torch.eye(4), 0.05, text_targets=flag)
        torch.testing.assert_close(loss, clip_infonce(v, t, 1 / 0.05))


# ------------------------------------------------------------------------- 4. PTA head
def test_pta_loss_is_the_hand_cross_entropy_of_three_patches():
    p = torch.tensor([[[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]])
    labels = torch.tensor([[1, 0, 0]])
    hand = -(math.log(0.1) + math.log(0.3) + math.log(0.6)) / 3
    assert pta_loss(p.log(), labels).item() == pytest.approx(hand, rel=1e-6)


def test_patch_predictor_is_predictor_lg():
    """(B, N, 2) log-probabilities from x′ = GELU(W₀ LN(x)), [x′_local, mean x′_global, t]
    → GELU(W₁·) → GELU(W₂·) → log_softmax(W₃·), written out with the predictor's weights."""
    torch.manual_seed(0)
    head = TextAwarePatchPredictor(8, text_dim=6)
    x, t = torch.randn(2, 5, 8), torch.randn(2, 6)
    out = head(x, t)
    assert out.shape == (2, 5, 2)
    ln, l0 = head.in_conv[0], head.in_conv[1]
    xp = F.gelu(F.layer_norm(x, (8,), ln.weight, ln.bias, ln.eps) @ l0.weight.T + l0.bias)
    glob = xp[..., 4:].mean(1, keepdim=True).expand(2, 5, 4)
    h = torch.cat([xp[..., :4], glob, t[:, None].expand(2, 5, 6)], -1)
    l1, l2 = head.out_conv[0], head.out_conv[2]
    h = F.gelu(F.gelu(h @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    torch.testing.assert_close(out, (h @ head.head.weight.T + head.head.bias).log_softmax(-1))
    assert [l1.in_features, l1.out_features, l2.out_features] == [14, 4, 2]  # C+D_t → C/2 → C/4
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 5))


def test_saliency_is_the_unbiased_z_score_of_log_p1():
    lp1 = torch.tensor([[-1.0, -2.0, -3.0, -6.0]])
    log_probs = torch.stack([torch.zeros_like(lp1), lp1], dim=-1)
    mean, std = -3.0, math.sqrt((4 + 1 + 0 + 9) / 3)  # torch.std: n − 1
    expected = torch.tensor([[(v - mean) / std for v in (-1.0, -2.0, -3.0, -6.0)]])
    torch.testing.assert_close(patch_saliency(log_probs), expected)


def test_box_patch_labels_official_overlap_rule_and_centre_rule():
    box = torch.tensor([[5.0, 0.0, 13.0, 4.0]])  # 16 px, patch 4 (S = 4)
    # official get_image_attns: columns ⌊5/4⌋ = 1 … ⌈13/4⌉ − 1 = 3, rows 0 … ⌈4/4⌉ − 1 = 0
    assert box_patch_labels(box, 16, 4).view(4, 4)[0].tolist() == [0, 1, 1, 1]
    assert int(box_patch_labels(box, 16, 4).sum()) == 3
    # centres 2, 6, 10, 14: inside [5, 13) are 6 and 10
    assert box_patch_labels(box, 16, 4, "centre").view(4, 4)[0].tolist() == [0, 1, 1, 0]
    # a box smaller than a patch still marks the patch it lies in (official: at least one)
    tiny = box_patch_labels(torch.tensor([[9.0, 9.0, 10.0, 10.0]]), 16, 4)
    assert tiny.view(4, 4)[2].tolist() == [0, 0, 1, 0] and int(tiny.sum()) == 1


# --------------------------------------------------------------------------- 5. schedule
def test_gamma_ramps_over_epoch_zero_and_mixing_stops_at_mix_until_epoch():
    assert [mix_weight(0, i, 8) for i in (0, 2, 4, 8)] == [0.0, 0.25, 0.5, 1.0]
    assert mix_weight(1, 0, 8) == mix_weight(5, 3, 8) == 1.0
    assert mixing_active(19, 20) and not mixing_active(20, 20) and not mixing_active(25, 20)


# ----------------------------------------------------------- the module's optimiser steps
def _regions(batch: dict, n: int) -> dict:
    g = torch.Generator().manual_seed(5)
    batch["region_image"] = torch.randn(n, 3, 16, 16, generator=g)
    batch["region_text"] = batch["text"].clone()
    batch["region_labels"] = torch.randint(0, 2, (n, 16), generator=g)
    return batch


class _Grads:
    """Records, at every optimiser step, the parameters whose gradient is non-zero."""

    def __init__(self):
        import lightning as L

        record = self

        class Callback(L.Callback):
            def on_before_optimizer_step(self, trainer, module, optimizer):
                record.steps.append(
                    {
                        n
                        for n, p in module.named_parameters()
                        if p.grad is not None and bool(p.grad.abs().sum() > 0)
                    }
                )

        self.steps: list[set[str]] = []
        self.callback = Callback()


def _fit(model: TiMix, batches: list[dict], tmp_path: Path, epochs: int = 1) -> _Grads:
    import lightning as L

    grads = _Grads()

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None)

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[grads.callback],
    )
    trainer.fit(model, datamodule=Data())
    return grads


def _model(**kwargs) -> TiMix:
    torch.manual_seed(0)
    spec = tiny_encoder_spec()
    spec.vision.depth = 2
    return TiMix(encoder=spec, pruning_loc=0, optim={"warmup_steps": 1}, **kwargs)


def test_three_steps_pta_then_itc_then_mix_each_reaching_its_own_parameters(tmp_path):
    model = _model(mix_until_epoch=1)
    batches = [_regions(tiny_batch(n=4, seed=s), 4) for s in (0, 1)]
    grads = _fit(model, batches, tmp_path, epochs=2)
    # epoch 0: PTA, ITC, mix per batch; epoch 1 (mixing off from mix_until_epoch): PTA, ITC
    assert len(grads.steps) == 2 * 3 + 2 * 2
    assert grads.steps[2] == set()  # γ = 0/2 at the first iteration: the mixed step moves nothing
    pta, itc, mix = grads.steps[3:6]  # second iteration, γ = 1/2
    late = {"encoder.visual.blocks.1.attn.qkv.weight", "encoder.visual.norm.weight"}
    heads = {"encoder.image_projection", "encoder.text_projection", "temperature"}
    # PTA: the predictor, the text tower and the vision blocks up to pruning_loc only
    assert "predictor.head.weight" in pta and "encoder.visual.blocks.0.attn.qkv.weight" in pta
    assert "encoder.text.model.encoder.layers.0.mlp.fc1.weight" in pta
    assert not (late | heads) & pta
    # ITC and the mixed ITC: the whole dual encoder and τ, never the predictor
    for step in (itc, mix):
        assert late | heads <= step and not any(n.startswith("predictor") for n in step)
    assert grads.steps[6:] == [pta, itc, pta, itc]
    assert model.trainer.global_step == 10  # Lightning counts optimiser steps
    assert "encoder.logit_scale" not in set().union(*grads.steps)  # frozen mirror of log(1/τ)
    assert model.encoder.logit_scale.item() == pytest.approx(-math.log(model.temperature.item()))


def test_joint_steps_take_one_step_and_the_itc_baseline_needs_no_regions(tmp_path):
    joint = _model(steps="joint")
    grads = _fit(joint, [_regions(tiny_batch(n=4), 4)], tmp_path)
    assert len(grads.steps) == 1 and "predictor.head.weight" in grads.steps[0]
    baseline = _model(timix=False)
    assert not hasattr(baseline, "predictor")
    grads = _fit(baseline, [tiny_batch(n=4)], tmp_path)
    assert len(grads.steps) == 1


def test_temperature_is_learnable_and_clamped_to_albefs_range(tmp_path):
    model = _model()
    assert model.temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        model.temperature.fill_(2.0)
    model.clamp_temperature()
    assert model.temperature.item() == 0.5
    assert model.encoder.logit_scale.item() == pytest.approx(math.log(2.0))


def test_split_forward_gives_the_towers_own_features():
    model = _model().eval()
    images = tiny_batch(n=3)["image"]
    z, patches = model.encode_image_parts(images)
    torch.testing.assert_close(z, model.encoder.encode_image(images), atol=1e-5, rtol=1e-5)
    assert patches.shape == (3, 16, 32)


def test_bad_flags_and_a_non_vit_tower_are_refused():
    with pytest.raises(ValueError, match="text_targets"):
        _model(text_targets="columns")
    with pytest.raises(ValueError, match="pruning_loc 2"):
        TiMix(encoder=tiny_encoder_spec(), pruning_loc=2)


# ------------------------------------------------------------------------------- regions
def _region_files(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(images / "7.jpg")

    def region(rid: int, image: int, phrase: str, x: int, y: int, side: int) -> dict:
        keys = ("region_id", "image_id", "phrase", "x", "y", "width", "height")
        return dict(zip(keys, (rid, image, phrase, x, y, side, side)))

    regions = [
        {
            "id": 7,
            "regions": [
                region(1, 7, "a seven", 16, 0, 16),
                region(2, 7, "nothing", 40, 40, 5),  # outside the 32×32 image
                region(3, 8, "lost", 0, 0, 5),  # its image 8.jpg does not exist
            ],
        }
    ]
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps(regions))
    return path, images


def test_region_reader_gives_patch_labels_and_clear_errors(tmp_path):
    path, images = _region_files(tmp_path)
    builder = RegionPhraseBuilder(image_size=32, patch_size=8, hflip=0.0)
    data = RegionPhrases(path, images, builder)
    data.on_bad = "drop"
    sample = data[0]
    # top-right tile of a 32 px image, patch 8: patch columns 2, 3 of rows 0, 1
    assert sample["region_labels"].nonzero().flatten().tolist() == [2, 3, 6, 7]
    assert sample["region_text"].shape == (77,)
    with pytest.raises(BadSample, match="region 2 .* lies outside the 32x32 image"):
        data._build(1, 0)
    with pytest.raises(BadSample, match="8.jpg: file not found"):
        data._build(2, 0)
    flipped = RegionPhraseBuilder(image_size=32, patch_size=8, hflip=1.0)(data.read(0))
    assert flipped["region_labels"].nonzero().flatten().tolist() == [0, 1, 4, 5]
    with pytest.raises(FileNotFoundError, match="region image folder not found"):
        RegionPhrases(path, tmp_path / "missing")


# ------------------------------------------------------------------------ tiny.yaml fit
@pytest.mark.slow  # a `zoo fit` of the recipe (~8 s); tests/recipes also fast_dev_runs it
def test_tiny_recipe_fits_two_steps_and_prints_retrieval(tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    main(
        [
            "fit",
            "--config",
            "recipes/timix/tiny.yaml",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.mosaics.splits={train: 64, test: 16}",
            "--data.init_args.batch_size=16",
        ]
    )
    out = capsys.readouterr().out
    assert "text→image" in out and "on 16 test images" in out
    # retrieval by match counts the caption's own mosaic as a hit and other fitting ones
    # too, so it is never below pair retrieval
    line = next(s for s in out.splitlines() if "by match" in s)
    pair, match = line.split("; by match: ")
    numbers = [[float(x) for x in re.findall(r"\d+\.\d+", part)] for part in (pair, match)]
    assert len(numbers[1]) == 4 and all(m >= p for m, p in zip(numbers[1], numbers[0]))


# ------------------------------------------------------------------ ALBEF / mPLUG option
def _albef_model(**kwargs) -> TiMix:
    albef = {"fusion_layers": 1, "heads": 2, "dropout": 0.0}
    return _model(albef=albef, mlm_mask_id=47, **kwargs)  # _tiny: ids 1-47, BOS 48, EOT 49


def test_albef_option_base_step_is_ita_itm_mlm_with_momentum_copies(tmp_path):
    model = _albef_model()
    batch = _regions(tiny_batch(n=4), 4)
    terms = model.base_terms(batch, alpha=0.0)
    assert {"ita", "itm", "mlm"} <= terms.keys()
    # α = 0: ITA is the hard-target ITC at s = 1/τ
    z_i, z_t = model.encoder.encode_image(batch["image"]), model.encoder.encode_text(batch["text"])
    expected = clip_infonce(z_i, z_t, 1 / model.temperature)
    torch.testing.assert_close(terms["ita"], expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["itc"], terms["ita"] + terms["itm"] + terms["mlm"])
    # the momentum copies are EMA only: out of the optimiser, moved by the base step
    assert not any(p.requires_grad for p in model.momentum.parameters())
    before = model.momentum["encoder"].image_projection.detach().clone()
    grads = _fit(model, [batch, _regions(tiny_batch(n=4, seed=1), 4)], tmp_path)
    trained = {n for step in grads.steps for n in step}
    assert not any(n.startswith("momentum.") for n in trained)
    assert any(n.startswith("albef.fusion.") for n in grads.steps[1])  # the ITC/ITA + ITM step
    assert any(n.startswith("albef.mlm_head.") for n in grads.steps[1])
    assert not torch.equal(before, model.momentum["encoder"].image_projection)


def test_albef_mlm_needs_a_mask_id():
    with pytest.raises(ValueError, match="mlm_mask_id"):
        _model(albef={"fusion_layers": 1, "heads": 2})
