"""CSP's data layout (zoo.data.geo): the reader and its errors, label subsets, the balanced
epoch sampler, the synthetic geo world (zoo.data.geo_world), the layout writer's geo
entries, and GeoPriorEval's scoring (zoo.eval.geo)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zoo.data.geo import (
    GeoFeatureDataset,
    GeoRecords,
    GeoSplitSpec,
    balanced_selection,
    labelled_subset,
    read_categories,
    read_geo_split,
)
from zoo.data.geo_world import SyntheticGeoWorld, sphere_to_lonlat
from zoo.data.layouts import parse_layout, write_entries
from zoo.data.samples import SampleKey
from zoo.eval.geo import GeoPriorEval, topk_hits


def _write_split(root: Path, n: int = 4, dim: int = 3, lon=None) -> GeoSplitSpec:
    """An iNat-style split: ids 10…, labels i % 2, locations (i·10, −i·5)."""
    ids = [10 + i for i in range(n)]
    (root / "train.json").write_text(
        json.dumps(
            {
                "images": [{"id": i} for i in ids],
                "annotations": [{"image_id": i, "category_id": k % 2} for k, i in enumerate(ids)],
            }
        )
    )
    lons = lon if lon is not None else [k * 10.0 for k in range(n)]
    locations = [{"id": i, "lon": lons[k], "lat": -5.0 * k} for k, i in enumerate(ids)]
    (root / "train_locations.json").write_text(json.dumps(locations))
    np.save(root / "feats.npy", np.arange(n * dim, dtype=np.float32).reshape(n, dim))
    return GeoSplitSpec("feats.npy", "train.json", "train_locations.json")


# --- reader ---------------------------------------------------------------------------------------
def test_reads_the_inat_json_layout(tmp_path):
    spec = _write_split(tmp_path)
    records = read_geo_split(spec, tmp_path)
    assert records.labels.tolist() == [0, 1, 0, 1]
    assert records.locations.tolist() == [[0, 0], [10, -5], [20, -10], [30, -15]]
    assert records.features[2].tolist() == [6, 7, 8]
    assert records.predictions is None


def test_missing_locations_are_dropped_in_training_and_kept_for_evaluation(tmp_path):
    spec = _write_split(tmp_path, lon=[0.0, None, 20.0, 30.0])
    train = read_geo_split(spec, tmp_path, missing_locations="drop")
    assert train.labels.tolist() == [0, 0, 1] and train.features[:, 0].tolist() == [0, 6, 9]
    test = read_geo_split(spec, tmp_path, missing_locations="keep")
    assert test.has_location.tolist() == [True, False, True, True]


def test_reads_a_csv_table_and_predictions(tmp_path):
    (tmp_path / "meta.csv").write_text("lon,lat,label\n1.5,2,1\n-3,4,\n")
    np.save(tmp_path / "f.npy", np.zeros((2, 5), np.float32))
    np.save(tmp_path / "p.npy", np.array([[0.2, 0.8], [0.6, 0.4]], np.float32))
    records = read_geo_split(GeoSplitSpec("f.npy", "meta.csv", predictions="p.npy"), tmp_path)
    assert records.locations.tolist() == [[1.5, 2.0], [-3.0, 4.0]]
    assert records.labels.tolist() == [1, -1]
    assert np.allclose(records.predictions, [[0.2, 0.8], [0.6, 0.4]])
    from scipy import sparse

    sparse.save_npz(tmp_path / "p.npz", sparse.csr_matrix(np.array([[0, 1.0], [0.5, 0]])))
    sparse_preds = read_geo_split(GeoSplitSpec("f.npy", "meta.csv", predictions="p.npz"), tmp_path)
    assert sparse_preds.predictions.tolist() == [[0.0, 1.0], [0.5, 0.0]]


@pytest.mark.parametrize(
    "break_it, match",
    [
        (lambda r: (r / "feats.npy").unlink(), r"data.train.features not found: .*feats.npy"),
        (
            lambda r: np.save(r / "feats.npy", np.zeros((3, 3), np.float32)),
            r"train.json lists 4 images but .*feats.npy holds 3 feature rows",
        ),
        (
            lambda r: (r / "train_locations.json").write_text(json.dumps([{"id": 10}])),
            r"has no entry for 3 image id\(s\).*\[11, 12, 13\]",
        ),
        (
            lambda r: (r / "train.json").write_text(json.dumps([1, 2])),
            r"data.train.metadata .*train.json: expected an object with an 'images' list",
        ),
        (
            lambda r: (r / "train_locations.json").write_text(
                json.dumps([{"id": 10 + i, "lon": 0.0, "lat": 95.0 * (i == 2)} for i in range(4)])
            ),
            r"row 2: \(lon, lat\) = \(0.0, 95.0\) is outside",
        ),
        (
            lambda r: np.save(r / "feats.npy", np.full((4, 3), np.nan, np.float32)),
            r"feats.npy: row 0 is not finite",
        ),
        (lambda r: (r / "train.json").write_text("{"), r"train.json is not valid JSON"),
    ],
    ids=["missing", "lengths", "locations", "format", "range", "nan", "json"],
)
def test_reader_errors_name_the_file_and_problem(tmp_path, break_it, match):
    spec = _write_split(tmp_path)
    break_it(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        read_geo_split(spec, tmp_path, where="data.train")


def test_reader_errors_for_csv_columns_predictions_and_missing_locations_file(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 5), np.float32))
    (tmp_path / "meta.csv").write_text("x,lat\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"meta.csv has no 'lon' column"):
        read_geo_split(GeoSplitSpec("f.npy", "meta.csv"), tmp_path, where="data.test")
    (tmp_path / "meta.csv").write_text("lon,lat\n1,2\n3,4\n")
    np.save(tmp_path / "p.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"data.test.predictions .*expected \(2, C\)"):
        read_geo_split(
            GeoSplitSpec("f.npy", "meta.csv", predictions="p.npy"), tmp_path, "data.test"
        )
    spec = _write_split(tmp_path)
    with pytest.raises(ValueError, match="needs data.train.locations"):
        read_geo_split(GeoSplitSpec(spec.features, spec.metadata), tmp_path)


def test_categories_in_both_official_forms(tmp_path):
    (tmp_path / "inat.json").write_text(
        json.dumps([{"id": 1, "name": "b"}, {"id": 0, "name": "a"}])
    )
    (tmp_path / "fmow.json").write_text(json.dumps({"airport": 1, "dam": 0}))
    assert read_categories(tmp_path / "inat.json") == ["a", "b"]
    assert read_categories(tmp_path / "fmow.json") == ["dam", "airport"]
    (tmp_path / "gap.json").write_text(json.dumps([{"id": 0, "name": "a"}, {"id": 2, "name": "c"}]))
    with pytest.raises(ValueError, match=r"gap.json: category ids must be 0 … 1"):
        read_categories(tmp_path / "gap.json")


# --- subsets and balancing ---------------------------------------------------------------------------
def test_stratified_subset_takes_round_n_fraction_of_each_class_at_least_one():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 2 + [-1] * 5)
    index = labelled_subset(labels, 0.25, "stratified", seed=0)
    # round(7.5) = 8 (half to even), round(2.5) = 2, round(0.5) = 0 → at least 1
    assert np.bincount(labels[index]).tolist() == [8, 2, 1]
    assert np.array_equal(index, labelled_subset(labels, 0.25, "stratified", seed=0))
    assert not np.array_equal(index, labelled_subset(labels, 0.25, "stratified", seed=1))
    random = labelled_subset(labels, 0.25, "random", seed=0)
    assert len(random) == int(42 * 0.25) and (labels[random] >= 0).all()
    assert len(labelled_subset(labels, 1.0)) == 42


def test_balanced_epochs_cap_each_class_and_change_with_the_epoch():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    first = balanced_selection(labels, 10, seed=0, epoch=0)
    assert np.bincount(labels[first]).tolist() == [10, 3, 10]
    assert not np.array_equal(first, balanced_selection(labels, 10, seed=0, epoch=1))
    records = GeoRecords(
        np.zeros((73, 2), np.float32), labels, np.arange(73, dtype=np.float32)[:, None]
    )
    dataset = GeoFeatureDataset(records, max_per_class=10)
    assert len(dataset) == 23
    rows = [int(dataset[SampleKey(i, 0, 1)]["features"][0]) for i in range(23)]
    assert rows == balanced_selection(labels, 10, seed=0, epoch=1).tolist()
    hidden = GeoFeatureDataset(records, show_labels=False)
    assert int(hidden[5]["label"]) == -1 and int(hidden.labels[5]) == 0


# --- the synthetic geo world ---------------------------------------------------------------------------
def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


def test_synthetic_world_pairs_look_alike_and_live_apart(tmp_path):
    world = SyntheticGeoWorld(
        num_pairs=3, feature_dim=16, train_samples=600, test_samples=300, root=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        world.locate()
    folder = world.write()
    rng = np.random.default_rng(world.seed)
    prototypes, centres = world.prototypes(rng), world.mixture_centres(rng)
    # a pair's prototypes are 2·offset apart; different pairs are spread apart
    pair_gap = np.linalg.norm(prototypes[0::2] - prototypes[1::2], axis=1)
    assert pair_gap == pytest.approx([2 * world.offset] * 3)
    assert np.linalg.norm(prototypes[0] - prototypes[2]) > 5
    # the second class of a pair lives at the antipodes of the first
    assert np.allclose(centres[1::2], -centres[0::2])
    gap = _angle(centres[0::2][:, :, None], centres[1::2][:, None, :])  # (pair, own, partner)
    assert gap.min() >= 180 - 2 * world.cap_degrees
    test = read_geo_split(world.split("test"), folder, missing_locations="keep")
    assert read_categories(folder / "categories.json")[:2] == ["pair0_a", "pair0_b"]
    # the "CNN" (the image-only Bayes posterior) finds the pair, not the class in it
    guess = test.predictions.argmax(1)
    assert (guess // 2 == test.labels // 2).mean() > 0.99
    assert 0.5 < (guess == test.labels).mean() < 0.8
    # every location is near one of its own class's centres, far from its partner's
    xyz = np.stack(
        [
            np.cos(np.radians(test.locations[:, 1])) * np.cos(np.radians(test.locations[:, 0])),
            np.cos(np.radians(test.locations[:, 1])) * np.sin(np.radians(test.locations[:, 0])),
            np.sin(np.radians(test.locations[:, 1])),
        ],
        axis=1,
    )
    own = _angle(xyz[:, None], centres[test.labels]).min(1)
    partner = _angle(xyz[:, None], centres[test.labels ^ 1]).min(1)
    assert np.median(own) < 15 and (partner > own).mean() > 0.99
    # cached by parameters: a second write reuses it; other parameters, another folder
    stamp = (folder / "features" / "train_feats.npy").stat().st_mtime_ns
    assert world.write() == folder
    assert (folder / "features" / "train_feats.npy").stat().st_mtime_ns == stamp
    other = SyntheticGeoWorld(num_pairs=3, feature_dim=16, seed=1)
    assert other.folder() != SyntheticGeoWorld(num_pairs=3, feature_dim=16).folder()


def test_sphere_to_lonlat_on_hand_points():
    xyz = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]])
    assert np.allclose(sphere_to_lonlat(xyz), [[0, 0], [90, 0], [0, 90], [180, 0]])


# --- the layout writer's geo entries -------------------------------------------------------------------
def test_layout_geo_entries_write_a_consistent_split(tmp_path):
    header = """# Layout under data.root (x):
#   train2018.json: geo annotations
#   train2018_locations.json: geo locations
#   feats/train.npy: geo features 7
#   preds/val.npz: geo predictions 5
#   categories2018.json: geo categories 5
"""
    entries = parse_layout(header)
    assert [e.columns for e in entries][2:] == [
        ("features", "7"),
        ("predictions", "5"),
        ("categories", "5"),
    ]
    write_entries(entries, tmp_path, samples=6, num_classes=5)
    spec = GeoSplitSpec(
        "feats/train.npy", "train2018.json", "train2018_locations.json", "preds/val.npz"
    )
    records = read_geo_split(spec, tmp_path)
    assert records.labels.tolist() == [0, 1, 2, 3, 4, 0]
    assert records.features.shape == (6, 7) and records.predictions.shape == (6, 5)
    assert read_categories(tmp_path / "categories2018.json") == [f"class {c}" for c in range(5)]
    with pytest.raises(ValueError, match="needs a size"):
        parse_layout("# Layout under data.root:\n#   f.npy: geo features\n")
    with pytest.raises(ValueError, match="geo role must be one of"):
        parse_layout("# Layout under data.root:\n#   f.npy: geo pixels 3\n")


# --- GeoPriorEval's scoring -------------------------------------------------------------------------------
class _Prior(torch.nn.Module):
    """A geo prior that prefers class 1 east of 0° longitude, class 0 west of it."""

    device = torch.device("cpu")

    def geo_prior_logits(self, lonlat: torch.Tensor) -> torch.Tensor:
        east = (lonlat[:, :1] > 0).float()
        return torch.cat((3 - 6 * east, 6 * east - 3), dim=1)


def test_geo_prior_eval_scores_image_location_and_fusion():
    """Four images: the CNN says class 0 for all (0.6 / 0.4); two live east (class 1), one
    west (class 0), one has no location (class 1)."""
    records = GeoRecords(
        locations=np.array([[50, 0], [60, 0], [-40, 0], [np.nan, np.nan]], np.float32),
        labels=np.array([1, 1, 0, 1]),
        features=np.zeros((4, 2), np.float32),
        predictions=np.tile(np.array([[0.6, 0.4]], np.float32), (4, 1)),
    )
    data = SimpleNamespace(geo_records=lambda split: records)
    for missing, fused in (("image_only", 75.0), ("wrong", 75.0)):
        callback = GeoPriorEval(top_k=(1,), missing_location=missing)
        metrics, line = callback.evaluate(None, _Prior(), data)
        assert metrics["geo_image_top1"] == 25.0  # only the western image
        assert metrics["geo_location_top1"] == 75.0  # the location-less one cannot count
        assert metrics["geo_prior_top1"] == fused
        assert line.startswith("geo prior top-1: 75.00% (image only 25.00%")
    # a location-less row the CNN gets right counts only with image_only
    records.labels[3] = 0
    ok, _ = GeoPriorEval(top_k=(1,)).evaluate(None, _Prior(), data)
    wrong, _ = GeoPriorEval(top_k=(1,), missing_location="wrong").evaluate(None, _Prior(), data)
    assert ok["geo_prior_top1"] == 100.0 and wrong["geo_prior_top1"] == 75.0


def test_topk_hits_on_hand_scores():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_hits(scores, torch.tensor([2, 2]), 1).tolist() == [False, False]
    assert topk_hits(scores, torch.tensor([2, 2]), 2).tolist() == [True, False]
    assert topk_hits(scores, torch.tensor([2, 2]), 5).tolist() == [True, True]


def test_without_predictions_the_image_classifier_is_fitted_on_the_labelled_train_split():
    """No predictions file: a logistic regression on the labelled training features gives
    P(y | I); a class it never saw gets probability 0."""
    from zoo.eval.geo import image_only_probabilities

    train = GeoRecords(
        np.zeros((4, 2), np.float32),
        np.array([0, 0, 2, 2]),
        np.array([[-3.0], [-2.0], [2.0], [3.0]], np.float32),
    )
    test = GeoRecords(
        np.array([[10, 0], [-10, 0]], np.float32),
        np.array([2, 0]),
        np.array([[2.5], [-2.5]], np.float32),
    )
    probs = image_only_probabilities(train.features, train.labels, test.features, 3)
    assert probs[:, 1].tolist() == [0.0, 0.0]
    assert np.allclose(probs.sum(1), 1) and probs.argmax(1).tolist() == [2, 0]
    # through the callback, with the two classes of _Prior
    train.labels[2:], test.labels[0] = 1, 1
    data = SimpleNamespace(geo_records=lambda split: train if split == "train" else test)
    metrics, _ = GeoPriorEval(top_k=(1,)).evaluate(None, _Prior(), data)
    assert metrics["geo_image_top1"] == 100.0
