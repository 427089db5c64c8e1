"""Per-split data configuration (zoo.data.splits): short and long forms, inherited and own
columns, and the datamodule built from them."""

from pathlib import Path

import pytest

from datamodules.slip import SLIPDataModule
from zoo.data.layouts import write_layout
from zoo.data.splits import SplitSpec, as_spec, peek_columns, resolve_split


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _resolve(tmp_path: Path, spec, **defaults):
    base = {"source": "csv", "image_root": None, "caption_keys": None, "label_key": None}
    return resolve_split("test", as_spec(spec), root=tmp_path, **{**base, **defaults})


def test_short_and_long_forms():
    assert as_spec("val.csv") == SplitSpec(path="val.csv")
    assert as_spec({"path": "v.csv", "source": "csv"}) == SplitSpec(path="v.csv", source="csv")
    with pytest.raises(ValueError, match=r"unknown split option\(s\) \['colums'\]"):
        as_spec({"path": "v.csv", "colums": ["x"]})


def test_inherited_captions_missing_from_an_eval_table_are_dropped(tmp_path):
    """SLIP's YFCC15M recipe: title/description are not asked of ImageNet's image,label."""
    _write(tmp_path / "imagenet/val.csv", "image,label\na.jpg,3\n")
    split = _resolve(tmp_path, "imagenet/val.csv", caption_keys=["title", "description"])
    assert split.caption_keys == ()
    assert split.label_key == "label"
    assert split.path == str(tmp_path / "imagenet/val.csv")


def test_inherited_captions_present_are_kept_and_own_columns_win(tmp_path):
    _write(tmp_path / "t.csv", "filepath,title,description,label\na.jpg,x,y,1\n")
    split = _resolve(tmp_path, "t.csv", caption_keys=["title", "description"])
    assert split.caption_keys == ("title", "description")
    own = _resolve(tmp_path, {"path": "t.csv", "caption_keys": "title", "image_key": "filepath"})
    assert own.caption_keys == ("title",) and own.image_key == "filepath"


def test_label_column_used_when_present_and_off_with_empty_string(tmp_path):
    _write(tmp_path / "unlabelled.csv", "image,caption\na.jpg,x\n")
    _write(tmp_path / "labelled.csv", "image,caption,label\na.jpg,x,2\n")
    assert _resolve(tmp_path, "unlabelled.csv").label_key is None
    assert _resolve(tmp_path, "labelled.csv").label_key == "label"
    assert _resolve(tmp_path, {"path": "labelled.csv", "label_key": ""}).label_key is None
    assert _resolve(tmp_path, {"path": "labelled.csv", "label_key": "y"}).label_key == "y"


def test_per_split_source_overrides_the_default(tmp_path):
    _write(tmp_path / "val.jsonl", '{"image": "a.jpg", "label": 1}\n')
    split = _resolve(tmp_path, {"path": "val.jsonl", "source": "jsonl"}, source="wds")
    assert split.source == "jsonl" and split.label_key == "label"
    # shards: the WebDataset conventions (columns cannot be peeked without reading)
    shards = _resolve(tmp_path, "s-{0..1}.tar", source="wds")
    assert shards.caption_keys == ("txt",) and shards.label_key == "cls"


def test_peek_columns(tmp_path):
    assert peek_columns("csv", str(_write(tmp_path / "a.tsv", "image\tlabel\n"))) == [
        "image",
        "label",
    ]
    assert peek_columns("jsonl", str(_write(tmp_path / "a.jsonl", '\n{"x": 1, "y": 2}\n'))) == [
        "x",
        "y",
    ]
    assert peek_columns("wds", "shard.tar") is None


def test_datamodule_reads_each_split_in_its_own_format(tmp_path):
    """WebDataset training pairs, a JSONL probe set and a CSV test set in one datamodule."""
    write_layout(
        {
            "source": "wds",
            "train": "train-{0..2}.tar",
            "probe_train": {"source": "jsonl", "path": "probe.jsonl"},
            "test": {"source": "csv", "path": "val.csv", "image_key": "filepath"},
        },
        tmp_path,
        samples=6,
    )
    dm = SLIPDataModule(
        source="wds",
        root=str(tmp_path),
        train="train-{0..2}.tar",
        probe_train={"source": "jsonl", "path": "probe.jsonl"},
        test=SplitSpec(source="csv", path="val.csv", image_key="filepath"),
        image_size=16,
        batch_size=2,
    )
    dm.setup("fit")
    assert len(dm.train_set) == 6
    train_batch = next(iter(dm.train_dataloader()))
    assert len(train_batch["views"]) == 2  # SLIP's two SSL views on the training split
    probe = next(iter(dm.eval_dataloader("train")))  # "train" for probes means probe_train
    assert probe["label"].tolist() == [0, 1] and "views" not in probe
    test = next(iter(dm.eval_dataloader("test")))
    assert test["label"].tolist() == [0, 1]
    dm.check_eval_split("train", who="LinearProbeEval")
    dm.check_eval_split("test", who="ZeroShotEval")


def test_probe_on_unlabelled_training_data_fails_naming_the_split(tmp_path):
    write_layout({"source": "csv", "train": "pairs.csv"}, tmp_path)  # no label column
    dm = SLIPDataModule(source="csv", root=str(tmp_path), train="pairs.csv", batch_size=2)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"data\.train .*pairs\.csv.* no label column.*Linear"):
        dm.check_eval_split("train", who="LinearProbeEval")


def test_layout_header_parsing():
    from zoo.data.layouts import LayoutEntry, parse_layout

    header = (
        "# CLIP ...\n"
        "# Layout under data.root (`<path>: <format> <columns>`; explanatory line):\n"
        "#   cc3m-{000..003}.tar: webdataset jpg,txt\n"
        "#   imagenet/val.csv: csv filepath,label\n"
        "# Checkpoints: last.ckpt every 500 steps: not an entry\n"
        "seed_everything: 0\n"
    )
    entries = parse_layout(header)
    assert entries == [
        LayoutEntry("cc3m-{000..003}.tar", "webdataset", ("jpg", "txt")),
        LayoutEntry("imagenet/val.csv", "csv", ("filepath", "label")),
    ]
    assert entries[0].image_column == "jpg" and entries[0].caption_columns == ["txt"]
    assert entries[1].image_column == "filepath" and entries[1].label_column == "label"
    assert entries[1].caption_columns == []
