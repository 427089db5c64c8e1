"""``FewShotDataModule`` on generated CoOp layouts: batches carry the labels the split file
gives the images they hold, the sampled shots are the pinned indices, a corrupt image is
skipped and counted, bad input fails early naming the file, ImageNet's layout holds out its
validation shots from train, and the shifted digits run through the real reader."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.fewshot_datamodule import FewShotDataModule
from zoo.fewshot import splits
from zoo.preprocess import PreprocessSpec

# identity normalisation: a batch pixel is the PNG byte / 255, so images can be recognised
SPEC = PreprocessSpec(image_size=8, mean=(0, 0, 0), std=(1, 1, 1), tokenizer=None)
CLASSES = ["golden_retriever", "tabby_cat", "eel", "red_fox"]
COUNTS = {"train": 6, "val": 3, "test": 3}
CODES = {"train": 0, "val": 1, "test": 2}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _colour(split: str, index: int) -> tuple[int, int, int]:
    """A flat colour naming (split, entry index): flat images survive crops and flips."""
    return (10 + 5 * index, 40 + 60 * CODES[split], 200)


def _decode(image: torch.Tensor) -> tuple[str, int]:
    r, g = (image[:, 0, 0] * 255).round().long().tolist()[:2]
    split = {40: "train", 100: "val", 160: "test"}[g]
    return split, (r - 10) // 5


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """``root/toy/images/<class>/<split>_<i>.png`` and ``root/toy/split_zhou_Toy.json``."""
    root = tmp_path_factory.mktemp("coop")
    data: dict[str, list] = {}
    for split, per_class in COUNTS.items():
        entries = []
        for i in range(per_class * len(CLASSES)):
            label = i % len(CLASSES)
            rel = f"{CLASSES[label]}/{split}_{i}.png"
            path = root / "toy" / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), _colour(split, i)).save(path)
            entries.append([rel, label, CLASSES[label]])
        data[split] = entries
    (root / "toy" / "split_zhou_Toy.json").write_text(json.dumps(data))
    return root


def _module(root: Path, tmp_path: Path, **kwargs) -> FewShotDataModule:
    args = dict(
        root=str(root),
        split_file="toy/split_zhou_Toy.json",
        image_dir="toy/images",
        preprocess=SPEC,
        batch_size=4,
        split_cache=str(tmp_path / "splits"),
    )
    return FewShotDataModule(**(args | kwargs))


def test_batches_carry_the_split_files_labels(layout: Path, tmp_path: Path) -> None:
    dm = _module(layout, tmp_path, shots=2, fewshot_seed=3)
    dm.prepare_data()
    dm.setup("fit")
    split = json.loads((layout / "toy" / "split_zhou_Toy.json").read_text())
    assert dm.classnames == ["golden retriever", "tabby cat", "eel", "red fox"]
    assert dm.templates == ["a photo of a {}."]
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == {"image", "label", "skipped"} and batch["image"].shape[1:] == (3, 8, 8)
        for image, label in zip(batch["image"], batch["label"].tolist()):
            name, index = _decode(image)
            assert name == "train" and split["train"][index][1] == label
            seen.append(index)
    assert sorted(seen) == sorted(dm.fewshot_indices["train"])
    assert Counter(split["train"][i][1] for i in seen) == dict.fromkeys(range(4), 2)
    val = [_decode(im) for b in dm.val_dataloader() for im in b["image"]]
    assert sorted(i for _, i in val) == sorted(dm.fewshot_indices["val"])
    assert Counter(split["val"][i][1] for _, i in val) == dict.fromkeys(range(4), 2)
    test = [
        (_decode(im), y)
        for b in dm.eval_dataloader("test")
        for im, y in zip(b["image"], b["label"].tolist())
    ]
    assert test == [(("test", i), entry[1]) for i, entry in enumerate(split["test"])]
    # the shots are pinned in the index file, with the split file's sha256
    record = json.loads(dm.index_file().read_text())
    assert record["train"] == dm.fewshot_indices["train"] and record["shots"] == 2
    assert record["split_sha256"] == splits.sha256_bytes(
        (layout / "toy" / "split_zhou_Toy.json").read_bytes()
    )


def test_seeds_shots_and_dataset_id(layout: Path, tmp_path: Path) -> None:
    a = _module(layout, tmp_path, shots=2, fewshot_seed=1)
    b = _module(layout, tmp_path, shots=2, fewshot_seed=1)
    c = _module(layout, tmp_path, shots=2, fewshot_seed=2)
    assert a.fewshot_indices == b.fewshot_indices and a.dataset_id == b.dataset_id
    assert a.fewshot_indices["train"] != c.fewshot_indices["train"]
    assert a.dataset_id != c.dataset_id
    assert a.dataset_id != _module(layout, tmp_path, shots=4, fewshot_seed=1).dataset_id
    everything = _module(layout, tmp_path, shots=0)
    assert everything.fewshot_indices["train"] == list(range(24))
    assert everything.index_file() is None


def test_base_and_new_classes(layout: Path, tmp_path: Path) -> None:
    base = _module(layout, tmp_path, shots=2, subsample_classes="base")
    new = _module(layout, tmp_path, shots=2, subsample_classes="new")
    base.setup("fit")
    new.setup("fit")
    assert base.classnames == ["golden retriever", "tabby cat"]
    assert new.classnames == ["eel", "red fox"]
    split = json.loads((layout / "toy" / "split_zhou_Toy.json").read_text())
    for dm, offset in ((base, 0), (new, 2)):
        for batch in dm.eval_dataloader("test"):
            for image, label in zip(batch["image"], batch["label"].tolist()):
                _, index = _decode(image)
                assert split["test"][index][1] == label + offset
        assert dm.train_set.labels.tolist().count(0) == 2
    # the same shots are drawn whatever the subsample
    assert base.fewshot_indices == new.fewshot_indices


def test_corrupt_png_is_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    entries = []
    for i in range(6):
        rel = f"c{i % 2}/{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / rel)
        entries.append([rel, i % 2, f"c{i % 2}"])
    (root / "c1/3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "split.json").write_text(json.dumps({"train": entries, "val": [], "test": entries}))
    dm = FewShotDataModule(
        dataset="custom",
        root=str(root),
        split_file="split.json",
        shots=0,
        preprocess=SPEC,
        batch_size=2,
        split_cache=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    batches = list(dm.eval_dataloader("test"))
    assert sum(int(b.get("dropped", 0)) for b in batches) == 1
    assert sum(len(b["label"]) for b in batches if "label" in b) == 5
    assert dm.eval_set("test").skipped == 1
    train = list(dm.train_dataloader())
    assert sum(int(b["skipped"]) for b in train) == 1  # replaced by a neighbour, counted
    assert sum(len(b["label"]) for b in train) == 6
    assert dm.val_set is None and dm.splits["val"] is None  # an empty val list
    dm.prepare_data()  # reloading after setup keeps it that way
    assert dm.splits["val"] is None and len(dm.splits["test"].labels) == 6


def test_bad_input_fails_early_naming_the_file(layout: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root not found"):
        FewShotDataModule(root=str(tmp_path / "missing"), dataset="oxford_pets")
    with pytest.raises(ValueError, match="data.root is required"):
        FewShotDataModule(dataset="oxford_pets")
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="split_zhou_OxfordPets.json") as err:
        FewShotDataModule(root=str(tmp_path), dataset="oxford_pets")
    assert "build_split('oxford_pets'" in str(err.value)
    with pytest.raises(ValueError, match="needs data.split_file"):
        FewShotDataModule(root=str(layout))
    with pytest.raises(FileNotFoundError, match="data.split_file not found"):
        FewShotDataModule(root=str(layout), split_file="nope.json")
    with pytest.raises(ValueError, match="train_transform 'simclr'"):
        _module(layout, tmp_path, train_transform="simclr")
    with pytest.raises(ValueError, match="'{}' slot"):
        _module(layout, tmp_path, templates=["no slot"])
    # an image the split lists but the disk lacks: setup names the entry
    data = json.loads((layout / "toy" / "split_zhou_Toy.json").read_text())
    data["test"][2][0] = "eel/missing.png"
    (tmp_path / "split.json").write_text(json.dumps(data))
    dm = FewShotDataModule(
        root=str(layout),
        split_file=str(tmp_path / "split.json"),
        image_dir="toy/images",
        preprocess=SPEC,
        split_cache=str(tmp_path / "c2"),
    )
    with pytest.raises(FileNotFoundError, match=r"test\[2\] = \['eel/missing.png', 2, 'eel'\]"):
        dm.setup("fit")


def test_changed_split_file_is_refused(layout: Path, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_bytes((layout / "toy" / "split_zhou_Toy.json").read_bytes())
    args = dict(
        root=str(layout),
        split_file=str(path),
        image_dir="toy/images",
        preprocess=SPEC,
        shots=1,
        split_cache=str(tmp_path / "c"),
    )
    FewShotDataModule(**args).prepare_data()
    data = json.loads(path.read_text())
    data["train"] = data["train"][::-1]
    path.write_text(json.dumps(data))
    with pytest.raises(splits.SplitFileChanged, match="split file changed"):
        FewShotDataModule(**args).setup("fit")


def test_templates_and_registered_tip_ensemble(layout: Path, tmp_path: Path) -> None:
    assert len(_module(layout, tmp_path, templates="ensemble").templates) == 7
    assert _module(layout, tmp_path, templates="{} texture.").templates == ["{} texture."]
    (layout / "prompts.txt").write_text("a {}.\nthe {}.\n")
    assert _module(layout, tmp_path, templates="prompts.txt").templates == ["a {}.", "the {}."]


def test_paper_datamodules_defaults(layout: Path, tmp_path: Path) -> None:
    """Each paper's batch sizes and training view (CoOp / CoCoOp configs, Tip-Adapter's
    main.py, SgVA-CLIP's data/*.py)."""
    from torchvision import transforms as T

    from datamodules.clip_adapter import CLIPAdapterDataModule
    from datamodules.cocoop import CoCoOpDataModule
    from datamodules.coop import CoOpDataModule
    from datamodules.sgva_clip import SgVACLIPDataModule
    from datamodules.tip_adapter import TipAdapterDataModule

    args = dict(
        root=str(layout),
        split_file="toy/split_zhou_Toy.json",
        image_dir="toy/images",
        preprocess=SPEC,
        split_cache=str(tmp_path / "c"),
    )
    expected = {
        CoOpDataModule: (32, 100, (0.08, 1.0)),
        CoCoOpDataModule: (1, 100, (0.08, 1.0)),
        CLIPAdapterDataModule: (32, 100, (0.08, 1.0)),
        TipAdapterDataModule: (256, 64, (0.5, 1.0)),
    }
    for cls, (batch, eval_batch, scale) in expected.items():
        dm = cls(**args)
        assert (dm.batch_size, dm.eval_batch_size) == (batch, eval_batch), cls.__name__
        stack = dm.build_dataset("train", dm.train_transform_name).builder.image_transform
        kinds = [type(t) for t in stack.transforms]
        assert kinds[1:3] == [T.RandomResizedCrop, T.RandomHorizontalFlip], cls.__name__
        crop = stack.transforms[1]
        assert crop.scale == scale and crop.interpolation == T.InterpolationMode.BICUBIC
    sgva = SgVACLIPDataModule(**args).build_dataset("train", "sgva").builder.image_transform
    assert [type(t) for t in sgva.transforms][1:5] == [
        T.Resize,
        T.RandomCrop,
        T.ColorJitter,
        T.RandomHorizontalFlip,
    ]


def test_imagenet_layout_holds_out_val_from_train(tmp_path: Path) -> None:
    imagenet = tmp_path / "imagenet"
    wnids = {"n02": "goldfish", "n01": "tench", "n03": "great white shark"}
    (imagenet).mkdir()
    (imagenet / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in wnids.items()))
    for split, n in (("train", 8), ("val", 2)):
        for w in wnids:
            for i in range(n):
                path = imagenet / "images" / split / w / f"{w}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (i, 0, 0)).save(path, format="PNG")
    dm = FewShotDataModule(
        root=str(tmp_path),
        dataset="imagenet",
        shots=2,
        preprocess=SPEC,
        split_cache=str(tmp_path / "cache"),
    )
    dm.prepare_data()
    assert (tmp_path / "cache" / "split_ImageNet.json").is_file()  # the listing, kept once
    dm.setup("fit")
    assert dm.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnids
    train, val = dm.fewshot_indices["train"], dm.fewshot_indices["val"]
    assert len(train) == 6 and len(val) == 6 and not set(train) & set(val)
    assert len(dm.eval_set("test")) == 6  # the val folder is the test set
    assert dm.templates == ["a photo of a {}."]


def test_shifted_digits_through_the_datamodule(tmp_path: Path) -> None:
    dm = FewShotDataModule(
        dataset="shifted_digits", root=str(tmp_path), shots=1, split_cache=str(tmp_path / "c")
    )
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classnames == DIGIT_WORDS
    assert dm.templates == ["a photo of the number {}."]
    assert dm.preprocess.image_size == 16 and dm.preprocess.context_length == 16
    assert len(dm.train_set) == 10 and len(dm.val_set) == 10
    batch = next(iter(dm.eval_dataloader("test")))
    assert batch["image"].shape[1:] == (3, 16, 16)
    # the pixels are the written PNGs (the default shift keeps the black background: only
    # the noise, std 0.05 · 255, lifts a corner pixel above 0)
    written = np.asarray(Image.open(tmp_path / "shifted_digits" / "images" / "zero" / "0000.png"))
    assert written[0, 0] < 60
