"""The few-shot protocol as data: CoOp's split files, the K-shot sampler and its index files,
CoCoOp's base / new classes, the dataset registry's class-name cleaning, and the generated
shifted digits."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.fewshot import datasets, splits
from zoo.fewshot.shifted_digits import SPLIT_FILE, ShiftedDigits, shift_digit

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _items(counts: dict[int, int], prefix: str) -> list[splits.Item]:
    """``counts[label]`` entries per label, interleaved (labels do not come in blocks)."""
    out = []
    for i in range(max(counts.values())):
        for label, n in counts.items():
            if i < n:
                out.append((f"{prefix}/{label}_{i}.png", label, f"class_{label}"))
    return out


@pytest.fixture
def split_file(tmp_path: Path) -> Path:
    train = _items({0: 20, 1: 9, 2: 3, 3: 12}, "train")
    val = _items({0: 6, 1: 5, 2: 2, 3: 6}, "val")
    test = _items({0: 5, 1: 5, 2: 5, 3: 5}, "test")
    return splits.save_split(train, val, test, tmp_path / "split_zhou_Toy.json")


# --- the sampler --------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", [1, 2, 8])
def test_sampler_k_per_class_and_min_k_4_val(split_file: Path, shots: int, caplog) -> None:
    split = splits.read_split(split_file)
    with caplog.at_level(logging.WARNING, logger="zoo.fewshot"):
        picked = splits.sample_indices(split, shots, seed=1)
    train = Counter(split.train[i][1] for i in picked.train)
    val = Counter(split.val[i][1] for i in picked.val)
    # class 2 has 3 train / 2 val entries: it keeps all of them when K exceeds that
    assert train == {0: shots, 1: shots, 2: min(shots, 3), 3: shots}
    assert val == {y: min(shots, 4, {2: 2}.get(y, 99)) for y in range(4)}
    assert len(set(picked.train)) == len(picked.train)  # without replacement
    assert ("fewer than 8" in caplog.text) == (shots == 8)
    sampled = {split.train[i][0] for i in picked.train} | {split.val[i][0] for i in picked.val}
    assert not sampled & {p for p, _, _ in split.test}


def test_sampler_matches_dassl_draw_and_ignores_global_rng(split_file: Path) -> None:
    """Dassl's generate_fewshot_dataset: per label in order of first appearance,
    random.sample(K), train first and then val from the same generator."""
    split = splits.read_split(split_file)
    rng = random.Random(3)
    expected_train = []
    for label in (0, 1, 2, 3):
        members = [i for i, (_, y, _) in enumerate(split.train) if y == label]
        expected_train += rng.sample(members, 2) if len(members) >= 2 else members
    random.seed(0)
    state = random.getstate()
    first = splits.sample_indices(split, 2, seed=3)
    assert random.getstate() == state  # the global RNG is neither used nor advanced
    random.seed(12345)
    again = splits.sample_indices(split, 2, seed=3)
    assert first.train == expected_train
    assert first == again
    assert splits.sample_indices(split, 2, seed=4).train != first.train


def test_held_out_val_is_disjoint_from_train(tmp_path: Path) -> None:
    """ImageNet-like splits (no val list): val shots come from the unused train entries."""
    train = _items({0: 10, 1: 10, 2: 10}, "train")
    path = splits.save_split(train, [], _items({0: 2, 1: 2, 2: 2}, "test"), tmp_path / "s.json")
    split = splits.read_split(path, val_from_train=True)
    picked = splits.sample_indices(split, 4, seed=2)
    assert picked.val_source == "train"
    assert not set(picked.train) & set(picked.val)
    assert Counter(train[i][1] for i in picked.val) == {0: 4, 1: 4, 2: 4}


def test_all_shots_takes_everything(split_file: Path) -> None:
    split = splits.read_split(split_file)
    picked = splits.sample_indices(split, 0, seed=1)
    assert picked.train == list(range(len(split.train)))
    assert picked.val == list(range(len(split.val)))


# --- index files ----------------------------------------------------------------------------------
def test_index_file_round_trip_and_changed_split_file(split_file: Path, tmp_path: Path) -> None:
    split = splits.read_split(split_file)
    folder = tmp_path / "cache"
    written = splits.load_or_sample(split, 4, 2, folder, write=True)
    path = folder / "shot_4-seed_2.json"
    record = json.loads(path.read_text())
    assert record["split_sha256"] == splits.sha256_bytes(split_file.read_bytes())
    assert (record["shots"], record["seed"], record["val_shots"]) == (4, 2, 4)
    assert splits.load_or_sample(split, 4, 2, folder) == written

    # the split file changes (one entry renamed): the pinned indices refuse it
    data = json.loads(split_file.read_text())
    data["train"][0][0] = "train/renamed.png"
    split_file.write_text(json.dumps(data))
    changed = splits.read_split(split_file)
    with pytest.raises(splits.SplitFileChanged, match="split file changed") as err:
        splits.load_or_sample(changed, 4, 2, folder)
    assert str(path) in str(err.value) and "delete" in str(err.value)


# --- split files ----------------------------------------------------------------------------------
def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_read_split_refuses_bad_files(tmp_path: Path) -> None:
    good = [["a.png", 0, "cat"], ["b.png", 1, "dog"]]
    cases = {
        "two class names": (
            {"train": good + [["c.png", 1, "wolf"]], "val": [], "test": []},
            r"label 1 is 'dog' at train\[1\] but 'wolf' at train\[2\]",
        ),
        "gap": (
            {"train": good + [["c.png", 3, "eel"]], "val": [], "test": []},
            r"labels must be 0..3 .* label\(s\) \[2\]",
        ),
        "malformed": (
            {"train": good, "val": [["x.png", 0]], "test": []},
            r"val\[0\]: expected \[relpath, label, classname\]",
        ),
        "bad label": (
            {"train": good, "val": [], "test": [["x.png", "one", "dog"]]},
            r"test\[0\]: the label must be an integer",
        ),
        "missing list": ({"train": good, "val": []}, r"no 'test' list"),
        "no train shots": (
            {"train": good, "val": [], "test": [["x.png", 2, "eel"]]},
            r"class\(es\) 2 'eel' have no train entry",
        ),
    }
    for name, (data, message) in cases.items():
        path = _write(tmp_path / f"{name}.json", data)
        with pytest.raises(ValueError, match=message) as err:
            splits.read_split(path)
        assert str(path) in str(err.value), name
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON split file"):
        splits.read_split(tmp_path / "broken.json")


def test_check_files_names_the_missing_entry(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = _write(
        tmp_path / "s.json",
        {"train": [["a.png", 0, "cat"], ["gone.png", 0, "cat"]], "val": [], "test": []},
    )
    split = splits.read_split(path)
    splits.check_files(split, {"train": [0]})
    with pytest.raises(FileNotFoundError, match=r"train\[1\] = \['gone.png', 0, 'cat'\]"):
        splits.check_files(split, {"train": [0, 1]})


# --- base-to-new ----------------------------------------------------------------------------------
def test_subsample_classes_halves_sorted_labels_and_relabels() -> None:
    items = [(f"{y}.png", y, f"c{y}") for y in (4, 0, 2, 1, 3, 4)]
    assert splits.subsample_classes(items, "base") == [
        ("0.png", 0, "c0"),
        ("2.png", 2, "c2"),
        ("1.png", 1, "c1"),
    ]  # 5 classes: ceil(5/2) = 3 base classes
    assert splits.subsample_classes(items, "new") == [
        ("4.png", 1, "c4"),
        ("3.png", 0, "c3"),
        ("4.png", 1, "c4"),
    ]
    assert splits.subsample_classes(items, "all") == items
    # non-contiguous labels, halves taken from a given class list (the training set's)
    sparse = [("a", 9, "x"), ("b", 2, "y"), ("c", 5, "z")]
    assert splits.subsample_classes(sparse, "base", labels=[2, 5, 7, 9]) == [
        ("b", 0, "y"),
        ("c", 1, "z"),
    ]
    assert splits.subsample_classes(sparse, "new", labels=[2, 5, 7, 9]) == [("a", 1, "x")]


def test_harmonic_mean_by_hand() -> None:
    assert splits.harmonic_mean(80.0, 60.0) == pytest.approx(9600.0 / 140.0)
    assert splits.harmonic_mean(82.69, 63.22) == pytest.approx(71.66, abs=0.005)  # CoOp row
    assert splits.harmonic_mean(50.0, 50.0) == 50.0
    assert splits.harmonic_mean(100.0, 0.0) == 0.0 and splits.harmonic_mean(0.0, 0.0) == 0.0


# --- the registry ---------------------------------------------------------------------------------
def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def test_caltech_split_drops_background_and_renames(tmp_path: Path) -> None:
    images = tmp_path / "caltech-101" / "101_ObjectCategories"
    folders = [
        "BACKGROUND_Google",
        "Faces",
        "Faces_easy",
        "Leopards",
        "Motorbikes",
        "airplanes",
        "ant",
        "water_lilly",
    ]
    for folder in folders:
        for i in range(10):
            _png(images / folder / f"image_{i:04d}.jpg")
    path = datasets.build_split("caltech101", tmp_path, seed=0)
    assert path == tmp_path / "caltech-101" / "split_zhou_Caltech101.json"
    split = splits.read_split(path, images)
    assert split.classnames == ["face", "leopard", "motorbike", "airplane", "ant", "water_lilly"]
    for name, n in (("train", 5), ("val", 2), ("test", 3)):
        assert Counter(y for _, y, _ in split.items(name)) == dict.fromkeys(range(6), n)
    # the renamed class keeps its folder in the path
    assert {p.split("/")[0] for p, y, _ in split.train if y == 0} == {"Faces"}
    assert datasets.build_split("caltech101", tmp_path, seed=1) == path  # kept, not rebuilt
    assert splits.read_split(path, images).sha256 == split.sha256


def test_pets_ucf_sun_and_eurosat_class_names(tmp_path: Path) -> None:
    pets = tmp_path / "oxford_pets" / "annotations"
    pets.mkdir(parents=True)
    lines = [
        f"{b}_{i} {y} 1 1"
        for i in range(1, 11)
        for y, b in ((1, "Abyssinian"), (2, "american_bulldog"))
    ]
    (pets / "trainval.txt").write_text("\n".join(lines) + "\n")
    (pets / "test.txt").write_text("Abyssinian_99 1 1 1\namerican_bulldog_99 2 2 1\n")
    split = splits.read_split(datasets.build_split("oxford_pets", tmp_path))
    assert split.classnames == ["abyssinian", "american_bulldog"]
    assert Counter(y for _, y, _ in split.val) == {0: 2, 1: 2}  # 20 % of each class
    assert ("Abyssinian_99.jpg", 0, "abyssinian") in split.test

    ucf = tmp_path / "ucf101" / "ucfTrainTestlist"
    ucf.mkdir(parents=True)
    (ucf / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    train = [
        f"{a}/v_{a}_g{i:02d}_c01.avi {y}"
        for i in range(5)
        for y, a in ((1, "ApplyEyeMakeup"), (2, "YoYo"))
    ]
    (ucf / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (ucf / "testlist01.txt").write_text("YoYo/v_YoYo_g20_c01.avi\n")
    split = splits.read_split(datasets.build_split("ucf101", tmp_path))
    assert split.classnames == ["Apply_Eye_Makeup", "Yo_Yo"]
    assert split.test == [("Yo_Yo/v_YoYo_g20_c01.jpg", 1, "Yo_Yo")]

    sun = tmp_path / "sun397"
    sun.mkdir()
    (sun / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n")
    train = [f"/a/abbey/sun_{i}.jpg" for i in range(5)]
    train += [f"/a/apartment_building/outdoor/sun_{i}.jpg" for i in range(5)]
    (sun / "Training_01.txt").write_text("\n".join(train) + "\n")
    (sun / "Testing_01.txt").write_text("/a/abbey/sun_9.jpg\n")
    split = splits.read_split(datasets.build_split("sun397", tmp_path))
    assert split.classnames == ["abbey", "outdoor apartment_building"]
    assert split.test == [("a/abbey/sun_9.jpg", 0, "abbey")]

    for folder in ("SeaLake", "AnnualCrop"):
        for i in range(10):
            _png(tmp_path / "eurosat" / "2750" / folder / f"{folder}_{i}.jpg")
    split = splits.read_split(datasets.build_split("eurosat", tmp_path))
    assert split.classnames == ["Annual Crop Land", "Sea or Lake"]


def _mat_struct(records: list[dict]) -> np.ndarray:
    """A MATLAB 1×N struct array as scipy's ``savemat`` writes it (the devkits' layout)."""
    fields = list(records[0])
    out = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, record in enumerate(records):
        for f in fields:
            out[0, i][f] = record[f]
    return out


def test_stanford_cars_mat_files_give_year_first_names(tmp_path: Path) -> None:
    from scipy.io import savemat

    cars = tmp_path / "stanford_cars"
    (cars / "devkit").mkdir(parents=True)
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Tesla Model S Sedan 2012"
    savemat(cars / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [
        {"class": np.array([[y]]), "fname": f"{y}{i:04d}.jpg"} for i in range(10) for y in (1, 2)
    ]
    savemat(cars / "devkit" / "cars_train_annos.mat", {"annotations": _mat_struct(train)})
    test = [{"class": np.array([[2]]), "fname": "00001.jpg"}]
    savemat(cars / "cars_test_annos_withlabels.mat", {"annotations": _mat_struct(test)})

    split = splits.read_split(datasets.build_split("stanford_cars", tmp_path))
    assert split.classnames == ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan"]
    assert split.test == [("cars_test/00001.jpg", 1, "2012 Tesla Model S Sedan")]
    assert Counter(y for _, y, _ in split.val) == {0: 2, 1: 2}  # 20 % of each class
    assert ("cars_train/10003.jpg", 0, "2000 AM General Hummer SUV") in split.train + split.val
    assert len(split.train) + len(split.val) == 20


def test_oxford_flowers_mat_labels_and_json_names(tmp_path: Path) -> None:
    from scipy.io import savemat

    flowers = tmp_path / "oxford_flowers"
    flowers.mkdir()
    labels = np.array([[2, 1] * 10])  # image_00001 is class 2, image_00002 class 1, ...
    savemat(flowers / "imagelabels.mat", {"labels": labels})
    (flowers / "cat_to_name.json").write_text(
        json.dumps({"1": "pink primrose", "2": "globe thistle"})
    )

    split = splits.read_split(datasets.build_split("oxford_flowers", tmp_path))
    assert split.classnames == ["pink primrose", "globe thistle"]
    every = split.train + split.val + split.test
    assert ("image_00001.jpg", 1, "globe thistle") in every
    assert ("image_00002.jpg", 0, "pink primrose") in every
    # 50 / 20 / 30 % of the 10 images of each class
    for part, n in ((split.train, 5), (split.val, 2), (split.test, 3)):
        assert Counter(y for _, y, _ in part) == {0: n, 1: n}


def test_registry_templates_and_registration() -> None:
    coop_templates = {  # CoOp's CUSTOM_TEMPLATES (trainers/zsclip.py)
        "imagenet": "a photo of a {}.",
        "caltech101": "a photo of a {}.",
        "oxford_pets": "a photo of a {}, a type of pet.",
        "stanford_cars": "a photo of a {}.",
        "oxford_flowers": "a photo of a {}, a type of flower.",
        "food101": "a photo of {}, a type of food.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
        "sun397": "a photo of a {}.",
        "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of {}.",
        "ucf101": "a photo of a person doing {}.",
    }
    assert {n: datasets.get_dataset(n).template for n in datasets.STANDARD_DATASETS} == (
        coop_templates
    )
    assert datasets.TIP_IMAGENET_TEMPLATES[0] == "itap of a {}."
    assert len(datasets.TIP_IMAGENET_TEMPLATES) == 7
    assert datasets.prompt_classname("Apply_Eye_Makeup") == "Apply Eye Makeup"
    info = datasets.FewShotDatasetInfo("toy_reg", "Toy", "toy", "imgs", "split.json", "a {}.")
    try:
        datasets.register_dataset(info)
        assert datasets.get_dataset("toy_reg") is info
        with pytest.raises(ValueError, match="already registered"):
            datasets.register_dataset(info)
    finally:
        datasets.DATASETS.pop("toy_reg", None)
    with pytest.raises(KeyError, match="unknown few-shot dataset 'nope'"):
        datasets.get_dataset("nope")


# --- shifted digits -------------------------------------------------------------------------------
def test_shifted_digits_pixels_splits_and_idempotent_write(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    plain = ShiftedDigits(
        root=str(tmp_path / "plain"), size=8, rotation=0.0, noise=0.0, invert=True
    )
    folder = plain.write()
    split = splits.read_split(folder / SPLIT_FILE, folder / "images")
    # pure inversion at the source size: 255 - round(v · 255 / 16), by hand
    for rel, label, name in split.test[:20]:
        index = int(Path(rel).stem)
        written = np.asarray(Image.open(folder / "images" / rel))
        by_hand = 255 - np.rint(digits.images[index] * 255.0 / 16.0).astype(np.int64)
        assert np.array_equal(written, by_hand) and digits.target[index] == label
        assert name == DIGIT_WORDS[label]
    # splits: disjoint, all 1,797 images, 50 / 20 / 30 per class
    ids = {s: [int(Path(p).stem) for p, _, _ in split.items(s)] for s in splits.SPLIT_NAMES}
    assert sum(map(len, ids.values())) == len(set().union(*map(set, ids.values()))) == 1797
    for label in range(10):
        n = int((digits.target == label).sum())
        counts = [sum(digits.target[i] == label for i in ids[s]) for s in splits.SPLIT_NAMES]
        assert counts == [round(n * 0.5), round(n * 0.2), n - round(n * 0.5) - round(n * 0.2)]

    # written once: a second write (and locate) touches nothing
    stamp = (folder / SPLIT_FILE).stat().st_mtime_ns
    assert plain.write() == folder and plain.locate() == folder
    assert (folder / SPLIT_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="written with"):
        ShiftedDigits(
            root=str(tmp_path / "plain"), size=8, rotation=0.0, noise=0.0, invert=False
        ).locate()
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        ShiftedDigits(root=str(tmp_path / "nothing")).locate()


def test_shifted_digit_rotation_and_noise_by_hand() -> None:
    from sklearn.datasets import load_digits

    from zoo.data.embedded import digit_png

    pixels = load_digits().images[7]
    rotated = digit_png(pixels, 16).rotate(30.0, resample=Image.Resampling.BICUBIC, fillcolor=0)
    assert np.array_equal(np.asarray(shift_digit(pixels, 16, 30.0, 0.0, None)), rotated)
    clean = shift_digit(pixels, 16, 30.0, 0.0, None, invert=True)
    assert np.array_equal(np.asarray(clean), 255 - np.asarray(rotated))
    draw = np.random.default_rng([0, 7]).normal(0.0, 0.05 * 255.0, (16, 16))
    for invert, base in ((False, 0.0), (True, 255.0)):
        rng = np.random.default_rng([0, 7])
        noisy = np.asarray(shift_digit(pixels, 16, 30.0, 0.05, rng, invert=invert))
        sign = -1.0 if invert else 1.0
        by_hand = np.clip(np.rint(base + sign * np.asarray(rotated, np.float64) + draw), 0, 255)
        assert np.array_equal(noisy, by_hand.astype(np.uint8))
