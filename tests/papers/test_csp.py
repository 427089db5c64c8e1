"""CSP faithfulness tests (CSP card, "Faithfulness tests"): hand-computed pre-training and
geo-prior losses, the grid-cell encoder on hand inputs, the two negative-location samplers'
latitude statistics, the fusion with a uniform prior, what one step trains and freezes, the
two-stage schedule and determinism."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats

from datamodules.csp import CSPDataModule
from lightning_modules.csp import CSP
from zoo.backbones.location import (
    GridCellEncoding,
    LocationEncoder,
    LocationEncoderSpec,
    grid_cell_timescales,
)
from zoo.data.geo_world import SyntheticGeoWorld
from zoo.eval.geo import fuse_geo_prior
from zoo.losses.csp import (
    CSPLoss,
    geo_prior_loss,
    in_batch_loss,
    random_location_loss,
    sample_locations,
    simcse_loss,
)

# --- hand-computed pre-training losses ------------------------------------------------------
# B = 3 two-dimensional embeddings. After L2 normalisation the locations are
# e = [1, 0], [0, 1], [0.6, 0.8] and the images h = [1, 0], [0, -1], [0.8, 0.6], so the
# cosines cos(e_i, h_j) are the rows below; the random locations are already unit vectors,
# with cos(e(x⁻_i), h_i) = 0, 0, 0.8.
LOC = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]
IMG = [[2.0, 0.0], [0.0, -1.0], [4.0, 3.0]]
RAND = [[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]
COS = [[1.0, 0.0, 0.8], [0.0, -1.0, 0.6], [0.6, -0.8, 0.96]]
COS_RAND = [0.0, 0.0, 0.8]
GRAM = [[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.6, 0.8, 1.0]]  # cos(e_i, e_j)


def _ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_in_batch_loss_is_location_to_image_cross_entropy_over_cosines():
    hand = sum(_ce(COS[i], i) for i in range(3)) / 3
    assert in_batch_loss(_t(LOC), _t(IMG), 1.0).item() == pytest.approx(hand, rel=1e-12)
    # the temperature divides: τ_B = 20 (iNat2018 script) gives the soft logits cos / 20
    soft = sum(_ce([v / 20 for v in COS[i]], i) for i in range(3)) / 3
    assert in_batch_loss(_t(LOC), _t(IMG), 20.0).item() == pytest.approx(soft, rel=1e-12)
    # contsoftmaxsym adds image → location (columns), a sum of the two directions
    columns = sum(_ce([COS[j][i] for j in range(3)], i) for i in range(3)) / 3
    symmetric = in_batch_loss(_t(LOC), _t(IMG), 1.0, symmetric=True).item()
    assert symmetric == pytest.approx(hand + columns, rel=1e-12)


def test_random_location_loss_puts_the_true_location_first():
    hand = sum(_ce([COS[i][i], COS_RAND[i]], 0) for i in range(3)) / 3
    got = random_location_loss(_t(LOC), _t(RAND), _t(IMG), 1.0).item()
    assert got == pytest.approx(hand, rel=1e-12)
    # K = 2 negatives per sample, K-major as the code reshapes them: row [k, i]
    rand2 = torch.cat((_t(RAND), _t(RAND).flip(0)))  # second negatives: [1,0],[-1,0],[0,1]
    second = [1.0 * 1.0, 0.0, 0.6]  # cos with h_i: [1,0]·[1,0], [-1,0]·[0,-1], [0,1]·[.8,.6]
    hand2 = sum(_ce([COS[i][i], COS_RAND[i], second[i]], 0) for i in range(3)) / 3
    got2 = random_location_loss(_t(LOC), rand2, _t(IMG), 1.0).item()
    assert got2 == pytest.approx(hand2, rel=1e-12)


def test_simcse_loss_and_the_weighted_sum():
    hand_d = sum(_ce(GRAM[i], i) for i in range(3)) / 3
    assert simcse_loss(_t(LOC), _t(LOC), 1.0).item() == pytest.approx(hand_d, rel=1e-12)
    hand_b = sum(_ce(COS[i], i) for i in range(3)) / 3
    hand_l = sum(_ce([COS[i][i], COS_RAND[i]], 0) for i in range(3)) / 3
    loss = CSPLoss(1.0, 1.0, 1.0, location_weight=0.5, simcse_weight=2.0)
    terms = loss(_t(LOC), _t(IMG), _t(RAND), _t(LOC))
    assert terms["loss"].item() == pytest.approx(hand_b + 0.5 * hand_l + 2.0 * hand_d, rel=1e-12)
    assert set(terms) == {"loss", "batch_loss", "location_loss", "simcse_loss"}


def test_without_dropout_the_simcse_diagonal_is_one_over_tau():
    """Dropout 0: the second pass equals the first, so every diagonal logit is exactly
    1/τ_D and L_D is the cross-entropy over the embeddings' own cosine matrix / τ_D."""
    torch.manual_seed(0)
    model = CSP(num_classes=3, image_feature_dim=4, location=_small_encoder(dropout=0.0))
    model.train()
    loc = torch.tensor([[10.0, 20.0], [-120.0, -5.0], [33.0, 60.0], [170.0, -80.0]])
    emb = model.encoder(loc)
    view = model.encoder(loc)
    assert torch.equal(emb, view)
    tau = 0.5
    logits = (
        torch.nn.functional.normalize(emb, dim=-1)
        @ torch.nn.functional.normalize(view, dim=-1).T
        / tau
    )
    assert torch.allclose(logits.diagonal(), torch.full((4,), 1 / tau), atol=1e-6)
    gram = (emb / emb.norm(dim=1, keepdim=True)).double()
    gram = (gram @ gram.T / tau).tolist()
    hand = sum(_ce(gram[i], i) for i in range(4)) / 4
    assert simcse_loss(emb, view, tau).item() == pytest.approx(hand, rel=1e-5)


# --- the grid-cell encoder --------------------------------------------------------------------
def _small_encoder(dropout: float = 0.5, layers: int = 1) -> LocationEncoderSpec:
    return LocationEncoderSpec(
        frequency_num=3,
        min_radius=1.0,
        max_radius=100.0,
        hidden_dim=6,
        num_hidden_layers=layers,
        out_dim=5,
        dropout=dropout,
    )


def test_grid_cell_timescales_and_values_on_hand_inputs():
    assert grid_cell_timescales(3, 1.0, 100.0).tolist() == pytest.approx([1.0, 10.0, 100.0])
    pe = GridCellEncoding(3, 1.0, 100.0)
    assert pe.out_dim == 12
    assert pe(torch.zeros(1, 2)).tolist() == [[0.0, 1.0] * 6]
    lon, lat = 30.0, -45.0
    hand = []
    for coord in (lon, lat):  # lon's sin/cos pairs for λ = 1, 10, 100, then lat's
        for scale in (1.0, 10.0, 100.0):
            hand += [math.sin(coord / scale), math.cos(coord / scale)]
    got = pe(torch.tensor([[lon, lat]]))[0].tolist()
    assert got == pytest.approx(hand, abs=1e-6)
    # the card's configuration: S = 32 → 4S = 128 inputs to the network
    assert GridCellEncoding(32, 0.1, 360.0).out_dim == 128
    assert grid_cell_timescales(32, 0.1, 360.0)[[0, -1]].tolist() == pytest.approx([0.1, 360.0])


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.2 * x)


def _layer_norm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / np.sqrt(x.var() + 1e-5)


def test_location_network_is_linear_act_dropout_skip_layernorm_then_output_layer():
    """Hidden layers: LN(act(W x + b) [+ x when widths agree]); output: act(W h + b)."""
    torch.manual_seed(1)
    encoder = LocationEncoder(_small_encoder(dropout=0.0, layers=2)).eval()
    x = torch.tensor([[12.0, -7.5]])
    pe = encoder.encoding(x)[0].double().numpy()
    w = [
        (m.linear.weight.detach().double().numpy(), m.linear.bias.detach().double().numpy())
        for m in encoder.mlp
    ]
    h1 = _layer_norm(_leaky(w[0][0] @ pe + w[0][1]))  # 12 → 6: no residual
    h2 = _layer_norm(_leaky(w[1][0] @ h1 + w[1][1]) + h1)  # 6 → 6: residual
    out = _leaky(w[2][0] @ h2 + w[2][1])  # output layer: act, no LN, no residual
    assert encoder(x)[0].tolist() == pytest.approx(out.tolist(), abs=1e-5)
    # dropout makes two training-mode passes differ (the SimCSE views)
    train = LocationEncoder(_small_encoder(dropout=0.5)).train()
    assert not torch.equal(train(x.repeat(8, 1)), train(x.repeat(8, 1)))


# --- samplers ---------------------------------------------------------------------------------
N_SAMPLES = 100_000


def _draw(kind: str, seed: int = 0) -> torch.Tensor:
    return sample_locations(N_SAMPLES, kind, generator=torch.Generator().manual_seed(seed)).double()


def test_spherical_sampler_is_uniform_on_the_sphere():
    lonlat = _draw("spherical")
    sin_lat = torch.sin(torch.deg2rad(lonlat[:, 1]))
    assert sin_lat.abs().mean().item() == pytest.approx(0.5, abs=0.02)
    # sin(lat) ~ U[-1, 1] and lon ~ U[-180, 180]
    assert stats.kstest(sin_lat.numpy(), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(lonlat[:, 0].numpy(), stats.uniform(-180, 360).cdf).pvalue > 1e-3


def test_sphericalold_sampler_fills_an_ellipse_with_its_own_latitude_law():
    """(lon/180, lat/90) = √(1−a²)(cos θ, sin θ), a ~ U[-1, 1], θ ~ U[0, 2π): the squared
    radius ρ² = 1 − a², so P(ρ² ≤ t) = 1 − √(1 − t), and E[(lat/90)²] = (2/3)(1/2) = 1/3;
    uniform points have E[(lat/90)²] = (π²/4 − 2)/(π²/4) ≈ 0.189 and leave the ellipse."""
    old, uniform = _draw("sphericalold"), _draw("spherical")
    rho2 = (old[:, 0] / 180) ** 2 + (old[:, 1] / 90) ** 2
    assert rho2.max().item() <= 1.0 + 1e-6
    assert stats.kstest(rho2.numpy(), lambda t: 1 - np.sqrt(1 - np.clip(t, 0, 1))).pvalue > 1e-3
    assert ((old[:, 1] / 90) ** 2).mean().item() == pytest.approx(1 / 3, abs=0.005)
    expected_uniform = (math.pi**2 / 4 - 2) / (math.pi**2 / 4)
    assert ((uniform[:, 1] / 90) ** 2).mean().item() == pytest.approx(expected_uniform, abs=0.005)
    outside = ((uniform[:, 0] / 180) ** 2 + (uniform[:, 1] / 90) ** 2 > 1).double().mean()
    assert outside.item() > 0.1
    # the latitude histograms differ (two-sample KS)
    assert stats.ks_2samp(old[:, 1].numpy(), uniform[:, 1].numpy()).pvalue < 1e-6


def test_samplers_are_seeded():
    for kind in ("spherical", "sphericalold"):
        assert torch.equal(_draw(kind, 3), _draw(kind, 3))
        assert not torch.equal(_draw(kind, 3), _draw(kind, 4))
    with pytest.raises(ValueError, match="sphericalold"):
        sample_locations(4, "uniform")


# --- the geo-prior loss ------------------------------------------------------------------------
def test_geo_prior_loss_equals_the_presence_only_formula():
    """B = 2, C = 3: −log(1 − σ) off the label, −C·log σ at it (pos_weight = C = 3), averaged
    over B·C, plus w · the mean of −log(1 − σ) at the random locations."""
    s = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]]
    y = [2, 0]
    r = [[0.0, 1.0, -1.0], [2.0, -2.0, 0.5]]

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    presence = (
        sum(
            -3 * math.log(sig(s[b][c])) if c == y[b] else -math.log(1 - sig(s[b][c]))
            for b in range(2)
            for c in range(3)
        )
        / 6
    )
    background = sum(-math.log(1 - sig(v)) for row in r for v in row) / 6
    out = geo_prior_loss(_t(s), torch.tensor(y), _t(r), rand_weight=0.7)
    assert out["presence_loss"].item() == pytest.approx(presence, rel=1e-12)
    assert out["background_loss"].item() == pytest.approx(background, rel=1e-12)
    assert out["loss"].item() == pytest.approx(presence + 0.7 * background, rel=1e-12)
    # the official code's -log(p + 1e-5)
    eps = 1e-5
    coded = (
        sum(
            -3 * math.log(sig(s[b][c]) + eps) if c == y[b] else -math.log(1 - sig(s[b][c]) + eps)
            for b in range(2)
            for c in range(3)
        )
        / 6
    )
    official = geo_prior_loss(_t(s), torch.tensor(y), _t(r), log_eps=eps)
    assert official["presence_loss"].item() == pytest.approx(coded, rel=1e-12)
    with pytest.raises(ValueError, match="unlabelled"):
        geo_prior_loss(_t(s), torch.tensor([-1, 0]), _t(r))


# --- fusion -----------------------------------------------------------------------------------
def test_a_uniform_geo_prior_leaves_the_image_prediction():
    """W = 0: σ(e(x)·W_y) = 0.5 for every class, so P(y|I)·0.5 has the CNN's argmax."""
    torch.manual_seed(0)
    model = CSP(num_classes=5, image_feature_dim=4, location=_small_encoder()).eval()
    with torch.no_grad():
        model.class_head.weight.zero_()
    lonlat = sample_locations(64, generator=torch.Generator().manual_seed(0))
    cnn = torch.softmax(torch.randn(64, 5), dim=1)
    fused = fuse_geo_prior(cnn, model.geo_prior_logits(lonlat))
    assert torch.equal(fused.argmax(1), cnn.argmax(1))
    assert torch.allclose(fused, 0.5 * cnn)
    # a non-uniform prior re-ranks: P = [.6, .4] with σ = [.5, .9] → [.30, .36]
    fused = fuse_geo_prior(torch.tensor([[0.6, 0.4]]), torch.tensor([[0.0, math.log(9.0)]]))
    assert fused[0].tolist() == pytest.approx([0.30, 0.36])
    # a row without a location keeps the image probabilities
    kept = fuse_geo_prior(
        torch.tensor([[0.6, 0.4]]), torch.tensor([[0.0, 5.0]]), torch.tensor([False])
    )
    assert kept[0].tolist() == pytest.approx([0.6, 0.4])


# --- training: what changes, the stages, determinism --------------------------------------------
@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("geo-world")
    _world(str(root)).write()
    return str(root)


def _world(root: str) -> SyntheticGeoWorld:
    return SyntheticGeoWorld(
        num_pairs=2, feature_dim=8, train_samples=240, test_samples=40, seed=0, root=root
    )


def _fit(
    world_root: str, max_epochs: int, pretrain_epochs: int, seed: int = 0, max_steps: int = -1, **kw
):
    L.seed_everything(seed, verbose=False)
    data = CSPDataModule(
        synthetic=_world(world_root), labelled_fraction=0.25, batch_size=64, drop_last=False
    )
    model = CSP(
        num_classes=4,
        image_feature_dim=8,
        location=_small_encoder(),
        pretrain_epochs=pretrain_epochs,
        **kw,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        max_steps=max_steps,
        reload_dataloaders_every_n_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return model, data, trainer


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_one_pretraining_step_trains_encoder_and_img_dec_only(world_root):
    model, data, trainer = _fit(world_root, max_epochs=1, pretrain_epochs=1, max_steps=1)
    before = _params(model)
    data.prepare_data()
    data.setup("fit")
    features = data.train_records.features.copy()
    trainer.fit(model, datamodule=data)
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.") for k in changed)
    assert {"img_dec.weight", "img_dec.bias"} <= changed
    assert "class_head.weight" not in changed  # no gradient in pre-training
    assert np.array_equal(data.train_records.features, features)  # frozen image features
    stored = np.load(f"{world_root}/features/train_feats.npy")
    assert np.array_equal(stored, features)


def test_fine_tuning_trains_the_head_not_img_dec_on_the_labelled_subset(world_root):
    model, data, trainer = _fit(world_root, max_epochs=1, pretrain_epochs=0)
    before = _params(model)
    trainer.fit(model, datamodule=data)
    after = _params(model)
    assert not torch.equal(before["class_head.weight"], after["class_head.weight"])
    assert torch.equal(before["img_dec.weight"], after["img_dec.weight"])
    # the stage's data: round(n_c / 4) images of each class c (stratified), labels visible
    labelled = data.stage_dataset("finetune")
    counts = np.bincount(data.train_records.labels)
    assert len(labelled) == sum(max(1, round(n / 4)) for n in counts.tolist())
    assert np.array_equal(np.bincount(labelled.labels.numpy()), [round(n / 4) for n in counts])
    assert (labelled.labels >= 0).all() and labelled.show_labels
    assert not data.stage_dataset("pretrain").show_labels


def test_two_stage_schedule_and_learning_rates(world_root):
    model, _, _ = _fit(world_root, max_epochs=5, pretrain_epochs=2, pretrain_lr=5e-4)
    assert [model.training_stage(e) for e in range(4)] == [
        "pretrain",
        "pretrain",
        "finetune",
        "finetune",
    ]
    lr = model.optim.lr  # 1e-3
    got = [lr * model.lr_factor(e) for e in range(5)]
    assert got == pytest.approx([5e-4, 5e-4, 1e-3, 1e-3 * 0.98, 1e-3 * 0.98**2])


def test_both_stages_run_in_one_fit_and_need_loader_reloads(world_root):
    model, data, trainer = _fit(world_root, max_epochs=2, pretrain_epochs=1)
    lrs = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            stage = "pretrain" if len(lrs) == 1 else "finetune"
            assert len(trainer.train_dataloader.dataset) == len(data.stage_dataset(stage))

    trainer.callbacks.append(Spy())
    trainer.fit(model, datamodule=data)
    assert lrs == pytest.approx([5e-4, 1e-3])
    model, data, _ = _fit(world_root, max_epochs=2, pretrain_epochs=1)
    no_reload = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs"):
        no_reload.fit(model, datamodule=data)


def test_a_fit_is_deterministic(world_root):
    states = []
    for _ in range(2):
        model, data, trainer = _fit(world_root, max_epochs=2, pretrain_epochs=1)
        trainer.fit(model, datamodule=data)
        states.append(_params(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model, data, trainer = _fit(world_root, max_epochs=2, pretrain_epochs=1, seed=1)
    trainer.fit(model, datamodule=data)
    assert not torch.equal(_params(model)["class_head.weight"], states[0]["class_head.weight"])


def test_module_checks_the_data_dimensions(world_root):
    model = CSP(num_classes=4, image_feature_dim=16, location=_small_encoder(), pretrain_epochs=0)
    data = CSPDataModule(synthetic=_world(world_root), batch_size=64)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="8-dimensional but model.image_feature_dim is 16"):
        trainer.fit(model, datamodule=data)


@pytest.mark.slow  # three `zoo fit` runs (~10 s)
def test_a_resumed_fit_crosses_the_stage_switch_exactly(tmp_path, monkeypatch, caplog):
    """``zoo fit`` for 2 epochs (pre-train, fine-tune), resumed with ``--ckpt_path last`` to
    3, ends with the weights of an uninterrupted 3-epoch fit: the resumed epoch gets the
    fine-tuning loader and learning rate, and every random draw (negatives, dropout) the
    uninterrupted run made."""
    from zoo.cli import main

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))

    def fit(root: Path, epochs: int, *extra: str) -> dict[str, torch.Tensor]:
        main(
            [
                "fit",
                "--config",
                "recipes/csp/tiny.yaml",
                f"--trainer.max_epochs={epochs}",
                f"--trainer.default_root_dir={root}",
                f"--trainer.logger.init_args.save_dir={root}",
                "--trainer.enable_progress_bar=false",
                "--model.init_args.pretrain_epochs=1",
                "--model.init_args.location.hidden_dim=16",
                "--model.init_args.location.out_dim=8",
                "--data.init_args.synthetic.train_samples=600",
                "--data.init_args.synthetic.test_samples=50",
                "--data.init_args.labelled_fraction=0.2",
                "--data.init_args.batch_size=64",
                *extra,
            ]
        )
        last = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        return torch.load(last, map_location="cpu", weights_only=False)["state_dict"]

    whole = fit(tmp_path / "whole", 3)
    fit(tmp_path / "resumed", 2)
    caplog.clear()
    resumed = fit(tmp_path / "resumed", 3, "--ckpt_path", "last")
    assert "resuming from" in caplog.text and "version_0" in caplog.text  # not a fresh fit
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
