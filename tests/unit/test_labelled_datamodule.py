"""``LabelledImageDataModule``: the same generated images read as a torchvision ImageFolder,
an ``image,label`` CSV / JSONL table and a Hugging Face ``imagefolder`` give equal labels,
class names and pixels; its training loader resumes exactly; bad images are replaced
(training) or dropped (evaluation) and counted; bad splits fail at fit start naming the
split and the problem."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from PIL import Image

from zoo.data.labelled_datamodule import LabelledImageDataModule
from zoo.preprocess import PreprocessSpec

CLASSES = ["cat", "dog", "eel"]
PER_CLASS = {"train": 6, "test": 3}
SPEC = PreprocessSpec(image_size=16, tokenizer=None)


def _image(label: int, i: int) -> Image.Image:
    """A 20x20 RGB image whose colour says its class and whose noise says its index."""
    rng = np.random.default_rng(100 * label + i)
    base = np.array([80 * label + 20, 200 - 60 * label, 40 + 30 * i], np.float32)
    pixels = np.clip(base + rng.normal(0, 15, (20, 20, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    """One set of images in four layouts: ``folder/`` (torchvision), ``hf/`` (the same
    tree read by ``datasets``), ``table.csv`` / ``table.jsonl`` (integer labels)."""
    root = tmp_path_factory.mktemp("labelled")
    for split, n in PER_CLASS.items():
        rows = []
        for label, name in enumerate(CLASSES):
            for i in range(n):
                image = _image(label, i + (100 if split == "test" else 0))
                for top in ("folder", "hf"):
                    (root / top / split / name).mkdir(parents=True, exist_ok=True)
                    image.save(root / top / split / name / f"{i}.png")
                rows.append({"image": f"folder/{split}/{name}/{i}.png", "label": label})
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "label"])
            writer.writeheader()
            writer.writerows(rows)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _module(root: Path, source: str, **kwargs) -> LabelledImageDataModule:
    paths = {
        "imagefolder": ("folder/train", "folder/test"),
        "hf": ("hf", "hf"),
        "csv": ("train.csv", "test.csv"),
        "jsonl": ("train.jsonl", "test.jsonl"),
    }[source]
    if source in ("csv", "jsonl"):
        kwargs.setdefault("classnames", "classes.txt")  # integer labels: names from a file
    args = {"batch_size": 4, "preprocess": SPEC, **kwargs}
    return LabelledImageDataModule(
        source=source, root=str(root), train=paths[0], test=paths[1], **args
    )


def _content(loader) -> list[tuple[int, bytes]]:
    """(label, pixels) of every sample, sorted: the formats may list files in other orders."""
    out = []
    for batch in loader:
        for label, image in zip(batch["label"].tolist(), batch["image"]):
            out.append((label, image.numpy().tobytes()))
    return sorted(out)


@pytest.mark.parametrize("source", ["csv", "jsonl", "hf"])
def test_every_format_reads_the_same_images_labels_and_classnames(layouts, source):
    reference = _module(layouts, "imagefolder")
    reference.setup("fit")
    other = _module(layouts, source)
    other.setup("fit")
    assert reference.classnames == other.classnames == CLASSES
    for split, n in PER_CLASS.items():
        want = _content(reference.eval_dataloader(split))
        assert len(want) == n * len(CLASSES)
        assert [label for label, _ in want] == sorted(list(range(3)) * n)
        assert _content(other.eval_dataloader(split)) == want
    assert sorted(other.train_set.labels.tolist()) == sorted(reference.train_set.labels.tolist())
    # evaluation pixels are the spec's eval transform of the file
    first = Image.open(layouts / "folder/test/cat/0.png")
    pixels = SPEC.eval_transform()(first).numpy().tobytes()
    assert (0, pixels) in _content(other.eval_dataloader("test"))


def _epochs(dm, epochs: range, limit: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Batches the way Lightning iterates: ``iter()``, then ``set_epoch``, then ``next()``."""
    loader = dm.train_dataloader()
    out = []
    for epoch in epochs:
        it = iter(loader)
        _set_sampler_epoch(loader, epoch)
        for batch in it:
            out.append((batch["image"], batch["views"][0], batch["label"]))
            if limit is not None and epoch == epochs[-1] and len(out) == limit:
                return out
    return out


def test_training_loader_resumes_exactly(layouts):
    """Kill after batch 2 of epoch 1, restore the datamodule state in a fresh one: the
    remaining batches equal an uninterrupted run's, augmentations included."""
    args = {"num_views": 1, "view_transform": "ssl"}
    reference = _epochs(_module(layouts, "imagefolder", **args), range(2))
    per_epoch = 18 // 4
    assert len(reference) == 2 * per_epoch
    first = _module(layouts, "imagefolder", **args)
    stream = _epochs(first, range(2), limit=per_epoch + 2)
    state = first.state_dict()
    assert state["train_loader"]["epoch"] == 1 and state["train_loader"]["batches"] == 2
    resumed = _module(layouts, "imagefolder", **args)
    resumed.load_state_dict(state)
    stream += _epochs(resumed, range(1, 2))
    assert len(stream) == len(reference)
    for got, want in zip(stream, reference):
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    # the epochs differ: the order and the random crops are redrawn per epoch
    assert not torch.equal(reference[0][0], reference[per_epoch][0])


def test_bad_images_replaced_in_training_dropped_in_evaluation(tmp_path, layouts):
    import shutil

    shutil.copytree(layouts / "folder", tmp_path / "folder")
    (tmp_path / "folder/train/dog/2.png").write_bytes(b"not a png")
    (tmp_path / "folder/test/eel/1.png").write_bytes(b"\x89PNG truncated")
    dm = _module(tmp_path, "imagefolder", drop_last=False)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == 18  # the bad image was replaced ...
    assert sum(int(b["skipped"]) for b in batches) == 1  # ... and counted
    batches = list(dm.eval_dataloader("test"))
    assert sum(len(b.get("label", [])) for b in batches) == 8  # dropped, not replaced
    assert sum(int(b.get("dropped", 0)) for b in batches) == 1


def _table(path: Path, header: list[str], rows: list[list]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path.name


def test_bad_splits_fail_naming_the_split_and_the_problem(tmp_path, layouts):
    images = [f"{layouts}/folder/test/cat/{i}.png" for i in range(3)]
    train = _table(tmp_path / "train.csv", ["image", "label"], [[p, 0] for p in images] * 2)

    def dm(test: str | None, batch_size: int = 2) -> LabelledImageDataModule:
        return LabelledImageDataModule(
            source="csv",
            root=str(tmp_path),
            train=train,
            test=test,
            classnames=CLASSES,
            preprocess=SPEC,
            batch_size=batch_size,
        )

    with pytest.raises(ValueError, match=r"ZeroShotEval .* 'test' split, but data\.test is not"):
        dm(None).check_eval_split("test", who="ZeroShotEval")
    out_of_range = _table(tmp_path / "oor.csv", ["image", "label"], [[images[0], 5]])
    with pytest.raises(ValueError, match=r"data\.test \(.*oor\.csv\): label 5 is out of range"):
        dm(out_of_range).check_eval_split("test", who="ZeroShotEval")
    no_label = _table(tmp_path / "nolabel.csv", ["image", "caption"], [[images[0], "x"]])
    with pytest.raises(
        ValueError, match=r"data\.test \(.*nolabel\.csv\) has no label column 'label'.*KNNEval"
    ):
        dm(no_label).check_eval_split("test", who="KNNEval")
    unlabelled = _table(tmp_path / "blank.csv", ["image", "label"], [[images[0], ""]])
    with pytest.raises(ValueError, match=r"blank\.csv\): column 'label' has no labels"):
        dm(unlabelled).check_eval_split("test", who="LinearProbeEval")
    header_only = _table(tmp_path / "header.csv", ["image", "label"], [])
    with pytest.raises(ValueError, match=r"data\.test \(.*header\.csv\) holds no samples"):
        dm(header_only).setup("fit")  # every configured split is opened at fit start
    with pytest.raises(ValueError, match=r"data\.train .* holds 6 samples; .*one full batch"):
        dm(None, batch_size=8).setup("fit")


def test_class_folders_that_differ_between_splits_fail_at_fit_start(tmp_path, layouts):
    import shutil

    shutil.copytree(layouts / "folder", tmp_path / "folder")
    shutil.rmtree(tmp_path / "folder/test/dog")  # test labels would shift: eel -> 1
    dm = _module(tmp_path, "imagefolder")
    with pytest.raises(ValueError, match=r"data\.test \(.*\): classes \['cat', 'eel'\] differ"):
        dm.setup("fit")


def test_given_classnames_must_follow_the_class_folders(layouts):
    """Folders define the labels (sorted): the same names in another order, or another
    count, would name every label wrongly; display names of the same count are accepted."""
    with pytest.raises(ValueError, match="another order"):
        _module(layouts, "imagefolder", classnames=["dog", "cat", "eel"]).setup("fit")
    with pytest.raises(ValueError, match="has 2 names but .* 3 class folders"):
        _module(layouts, "imagefolder", classnames=["cat", "dog"]).setup("fit")
    dm = _module(layouts, "imagefolder", classnames=["a cat", "a dog", "an eel"])
    dm.setup("fit")
    assert dm.classnames == ["a cat", "a dog", "an eel"]


# --- source: digits (embedded, written by prepare_data) -------------------------------------
def test_digits_source_writes_in_prepare_data_and_reads_what_the_image_text_module_reads(
    tmp_path,
):
    """Constructing writes nothing and ``setup`` before ``prepare_data`` says so; after
    ``prepare_data`` the train / test tables are read back with the digit names, the same
    images and labels the image–text datamodule reads from the same writer, and training
    samples carry ``num_views`` extra views."""
    from zoo.data.embedded import CLASSNAMES, DigitsSpec
    from zoo.data.image_text_datamodule import ImageTextDataModule

    cache = tmp_path / "cache"
    spec = {"size": 16, "format": "csv", "cache_dir": str(cache)}
    dm = LabelledImageDataModule(
        source="digits", digits=spec, preprocess=SPEC, num_views=2, batch_size=32
    )
    assert not cache.exists()  # __init__ wrote nothing
    assert dm.classnames == list(CLASSNAMES)  # known without reading any file
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")
    dm.prepare_data()
    dm.setup("fit")
    # sklearn's 1,797 digits, stratified 70/30
    assert (len(dm.train_set), len(dm.eval_set("test"))) == (1257, 540)
    assert sorted(set(dm.train_set.labels.tolist())) == list(range(10))
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == batch["image"].shape
    text = ImageTextDataModule(
        source="digits", digits=DigitsSpec(**spec), image_size=16, batch_size=32
    )
    text.setup("fit")  # the copy the labelled module's prepare_data wrote
    want = next(iter(text.eval_dataloader("test")))
    got = next(iter(dm.eval_dataloader("test")))
    assert torch.equal(got["label"], want["label"])
    assert torch.equal(got["image"], want["image"])


def test_digits_source_refuses_split_paths_and_formats_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=r"remove data\.train"):
        LabelledImageDataModule(source="digits", train="train.csv")
    with pytest.raises(ValueError, match=r"data\.digits\.format 'wds'"):
        LabelledImageDataModule(source="digits", digits={"format": "wds"})
