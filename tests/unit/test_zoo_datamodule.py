"""``ZooDataModule``, the base of every family's datamodule: per-split batch sizes reach
the loaders, a subclass's ``collate_fn`` attribute is used, generated data is written by
``prepare_data`` (through a real ``Trainer.fit``) and read by ``setup``, and the generic
evaluation-split protocol names the split and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from zoo.datamodule import ZooDataModule


class Numbers(Dataset):
    """Sample ``i`` is ``{"image": [i, i], "label": labels[i]}``."""

    def __init__(self, labels: list[int]):
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        return {"image": torch.full((2,), float(i)), "label": int(self.labels[i])}


class NumbersData(ZooDataModule):
    """``splits`` name -> label list (``None``: not configured)."""

    def __init__(self, splits: dict[str, list[int] | None], **kwargs: Any):
        super().__init__(**kwargs)
        self.splits = {k: (None if v is None else _Split(k, v)) for k, v in splits.items()}
        self.classnames = ["a", "b", "c"]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and self.splits.get("train") is not None:
            self.train_set = Numbers(self.splits["train"].labels)
        if self.val_set is None and self.splits.get("val") is not None:
            self.val_set = Numbers(self.splits["val"].labels)

    def build_eval_dataset(self, split: str) -> Dataset:
        return Numbers(self.splits[split].labels)


class _Split:
    def __init__(self, name: str, labels: list[int]):
        self.labels = labels
        self.where = f"data.{name} ({name}.csv)"


def _sizes(loader) -> list[int]:
    return [len(batch["label"]) for batch in loader]


def test_per_split_batch_sizes_reach_the_loaders():
    labels = [0, 1, 2] * 6  # 18 samples per split
    dm = NumbersData({"train": labels, "val": labels, "test": labels}, batch_size=4)
    dm.setup("fit")
    # eval_batch_size defaults to batch_size; training drops the last partial batch
    assert _sizes(dm.train_dataloader()) == [4, 4, 4, 4]
    assert _sizes(dm.eval_dataloader("test")) == [4, 4, 4, 4, 2]

    dm = NumbersData(
        {"train": labels, "val": labels, "test": labels}, batch_size=4, eval_batch_size=7
    )
    dm.setup("fit")
    assert _sizes(dm.train_dataloader()) == [4, 4, 4, 4]
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.eval_dataloader("test")):
        assert _sizes(loader) == [7, 7, 4]  # 18 = 7 + 7 + 4, nothing dropped
    # evaluation keeps the dataset order
    order = torch.cat([b["image"][:, 0] for b in dm.eval_dataloader("test")])
    assert order.tolist() == [float(i) for i in range(18)]
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        NumbersData({}, eval_batch_size=0)


def tagged_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A family's own batching: the indices as one long tensor, plus a marker."""
    return {
        "index": torch.tensor([int(s["image"][0]) for s in samples]),
        "label": torch.tensor([s["label"] for s in samples]),
        "collated_by": "tagged",
    }


class TaggedData(NumbersData):
    collate_fn = staticmethod(tagged_collate)


def test_a_subclass_collate_fn_attribute_is_used_by_every_loader():
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    dm = TaggedData({"train": labels, "val": labels, "test": labels}, batch_size=4)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [b["collated_by"] for b in train] == ["tagged", "tagged"]
    # the training order is a permutation of all 8 indices, batched 4 + 4
    assert sorted(torch.cat([b["index"] for b in train]).tolist()) == list(range(8))
    for loader in (dm.val_dataloader(), dm.eval_dataloader("test")):
        batches = list(loader)
        assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert all(b["collated_by"] == "tagged" for b in batches)
    # the base keeps the default (image–text aware) collation
    assert NumbersData.collate_fn is ZooDataModule.collate_fn is not tagged_collate


def test_check_eval_split_names_the_split_and_the_problem():
    dm = NumbersData(
        {
            "train": [0, 1, 2, 0],
            "test": [0, 1, 5],  # 5: out of range for 3 classnames
            "val": [-1, -1],  # no known label
            "probe_train": None,
        }
    )
    with pytest.raises(ValueError, match=r"LinearProbeEval .* 'extra' split, but data\.extra"):
        dm.check_eval_split("extra", who="LinearProbeEval")
    with pytest.raises(ValueError, match=r"data\.test \(test\.csv\): label 5 is out of range"):
        dm.check_eval_split("test", who="ZeroShotEval")
    with pytest.raises(ValueError, match=r"data\.val \(val\.csv\): has no labels.*KNNEval"):
        dm.check_eval_split("val", who="KNNEval")
    with pytest.raises(ValueError, match=r"RetrievalEval needs captions, but data\.train"):
        dm.check_eval_split("train", who="RetrievalEval", labels=False, captions=True)
    dm.check_eval_split("train", who="LinearProbeEval")  # labelled and in range: passes
    dm.check_eval_split("val", who="Anything", labels=False)  # labels not asked for
    assert dm.has_eval_split("test") and not dm.has_eval_split("probe_train")
    empty = NumbersData({"test": []})
    with pytest.raises(ValueError, match=r"data\.test \(test\.csv\) holds no samples"):
        empty.check_eval_split("test", who="ZeroShotEval")


def test_train_as_an_eval_split_means_probe_train_when_configured():
    dm = NumbersData({"train": [0, 0, 0, 0], "probe_train": [1, 2]}, batch_size=4)
    assert dm.eval_split_name("train") == "probe_train"
    assert [b["label"].tolist() for b in dm.eval_dataloader("train")] == [[1, 2]]
    assert NumbersData({"train": [0]}).eval_split_name("train") == "train"


class Squares:
    """Generated data: ``x, x**2`` pairs written as JSON (a family's generator)."""

    def __init__(self, folder: Path):
        self.path = folder / "squares.json"
        self.writes = 0

    def write(self) -> Path:
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps([[x / 8, (x / 8) ** 2] for x in range(16)]))
            self.writes += 1
        return self.path

    def locate(self) -> Path:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not written: run prepare_data")
        return self.path


class Pairs(Dataset):
    def __init__(self, rows: list[list[float]]):
        self.rows = torch.tensor(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.rows[int(index)], "label": 0}  # (x, x**2)


class SquaresData(ZooDataModule):
    def __init__(self, folder: str, batch_size: int = 4):
        super().__init__(batch_size=batch_size)
        self.squares = Squares(Path(folder))
        self.generated.append(self.squares)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = Pairs(json.loads(self.squares.locate().read_text()))


class Fit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.seen = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["image"][:, :1], batch["image"][:, 1]
        self.seen += len(x)
        return (self.net(x).squeeze(1) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_generated_data_is_written_in_prepare_data_not_init(tmp_path):
    folder = tmp_path / "generated"
    dm = SquaresData(str(folder))
    assert not folder.exists()  # __init__ validates only
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")
    model = Fit()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)  # the Trainer calls prepare_data, then setup
    assert dm.squares.writes == 1 and dm.squares.path.is_file()
    assert model.seen == 16 and len(dm.train_set) == 16
    dm.prepare_data()
    assert dm.squares.writes == 1  # idempotent
