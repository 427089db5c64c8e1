"""Fault handling (zoo.data.resumable, zoo.callbacks, zoo.preflight): the training data stream is a function of (seed, epoch,
position) whatever the workers, a non-finite loss stops training before its step and keeps
the last good checkpoint, and unwritable / full output directories fail before training."""

from __future__ import annotations

import csv
import os
import pickle
import random
import shutil
from collections import namedtuple
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch.utils.data import Dataset

from zoo.callbacks import ExactResume, NonFiniteGuard, NonFiniteLossError, NonFiniteWeightsError
from zoo.data import build_transform
from zoo.data.formats import ImageTextTable
from zoo.data.resumable import ResumableDataLoader
from zoo.data.samples import SampleKey
from zoo.data.tokenizers import TextTokenizer
from zoo.datamodule import ZooDataModule
from zoo.lightning_cli import run_lightning_cli
from zoo.module import ZooModule
from zoo.preflight import PreflightError, checkpoint_bytes, find_last_checkpoint, preflight

N_IMAGES, BATCH, EPOCHS = 45, 8, 2  # 5 batches per epoch (drop_last)


# --- the data stream ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """45 random 8x8 images, each with a caption and an alternative title (SLIP-style
    random caption choice)."""
    root = tmp_path_factory.mktemp("images")
    gen = torch.Generator().manual_seed(0)
    with (root / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "title", "label"])
        for i in range(N_IMAGES):
            pixels = torch.randint(0, 256, (8, 8, 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / f"{i}.png")
            writer.writerow([f"{i}.png", f"a photo of item {i}", f"item number {i}", i % 3])
    return root / "data.csv"


def _datamodule(table: Path, num_workers: int) -> ZooDataModule:
    """Map-style training data with the CLIP view plus two SimCLR views (all random)."""
    dm = ZooDataModule(batch_size=BATCH, num_workers=num_workers)
    dm.train_set = ImageTextTable(
        table,
        image_transform=build_transform("clip", 8),
        view_transforms=[build_transform("ssl", 8), build_transform("ssl", 8)],
        tokenizer=TextTokenizer(context_length=8),
        caption_keys=["caption", "title"],
    )
    return dm


Batch = namedtuple("Batch", "epoch pixels captions")


def _take(loader, epoch: int, limit: int | None = None) -> list[Batch]:
    """Iterate one epoch the way Lightning does: ``iter()`` first (at fit start), then
    ``set_epoch``, then ``next()`` -- the loader must read the epoch lazily."""
    it = iter(loader)
    _set_sampler_epoch(loader, epoch)
    out = []
    for batch in it:
        pixels = torch.cat([batch["image"], *batch["views"]]).flatten(1)
        out.append(Batch(epoch, pixels, list(batch["caption"])))
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.fixture(scope="module")
def reference(table) -> list[Batch]:
    """Two uninterrupted epochs with ``num_workers=0``."""
    loader = _datamodule(table, 0).train_dataloader()
    return [b for epoch in range(EPOCHS) for b in _take(loader, epoch)]


def _assert_same(stream: list[Batch], reference: list[Batch]) -> None:
    assert len(stream) == len(reference)
    for got, want in zip(stream, reference):
        assert got.epoch == want.epoch and got.captions == want.captions
        torch.testing.assert_close(got.pixels, want.pixels, rtol=0, atol=0)


def test_epochs_differ_in_order_augmentation_and_caption_choice(reference):
    per_epoch = N_IMAGES // BATCH
    first, second = reference[:per_epoch], reference[per_epoch:]
    assert [b.captions for b in first] != [b.captions for b in second]  # order
    caption_of = {}  # image number -> caption chosen, per epoch
    for epoch, batches in enumerate((first, second)):
        for b in batches:
            for c in b.captions:
                caption_of.setdefault(int(c.split()[-1]), [None, None])[epoch] = c
    both = [c for c in caption_of.values() if None not in c]
    assert any(a != b for a, b in both)  # the random caption choice is redrawn per epoch
    assert any(a == b for a, b in both)  # ... and it is a choice, not a cycle
    # the three views of a batch are different random augmentations
    pixels = first[0].pixels.view(3, BATCH, -1)
    assert not torch.equal(pixels[1], pixels[2])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_interrupt_and_resume_replays_the_uninterrupted_stream(table, reference, num_workers):
    """Stop after batch 2 of epoch 1, checkpoint the datamodule, restore it in a fresh one
    (as ``zoo fit --ckpt_path last`` does) and finish: the same batches, bit for bit, with
    any number of (persistent) workers."""
    k = 2
    dm = _datamodule(table, num_workers)
    loader = dm.train_dataloader()
    stream = _take(loader, 0) + _take(loader, 1, limit=k)
    state = dm.state_dict()
    assert state["train_loader"]["epoch"] == 1 and state["train_loader"]["batches"] == k
    del loader, dm  # the killed process

    resumed = _datamodule(table, num_workers)
    resumed.load_state_dict(state)  # Lightning restores datamodule state before the loaders
    loader = resumed.train_dataloader()
    stream += _take(loader, 1)
    assert loader.position == N_IMAGES // BATCH
    assert len(stream) == EPOCHS * (N_IMAGES // BATCH)
    _assert_same(stream, reference)


def test_a_finished_epoch_in_the_state_does_not_skip_the_next_one(table, reference):
    dm = _datamodule(table, 0)
    _take(dm.train_dataloader(), 0)
    resumed = _datamodule(table, 0)
    resumed.load_state_dict(dm.state_dict())  # epoch 0 complete: resume goes on with epoch 1
    _assert_same(_take(resumed.train_dataloader(), 1), reference[N_IMAGES // BATCH :])


def test_sampling_leaves_the_global_rng_alone(table):
    loader = _datamodule(table, 0).train_dataloader()
    torch.manual_seed(123)
    random.seed(123)
    before = torch.get_rng_state(), random.getstate()
    _take(loader, 0, limit=2)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_sample_key_survives_pickling_to_workers():
    key = pickle.loads(pickle.dumps(SampleKey(7, seed=3, epoch=2)))
    assert isinstance(key, SampleKey) and (int(key), key.seed, key.epoch) == (7, 3, 2)
    assert [10, 11, 12, 13, 14, 15, 16, 17][key] == 17  # still a plain index


# --- non-finite loss ------------------------------------------------------------------------
class Points(Dataset):
    """32 samples of a linear target, in the zoo's sample-dict shape."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict:
        x = torch.linspace(-1, 1, 4) * (int(index) + 1) / 32
        return {"image": x, "text": torch.zeros(1, dtype=torch.long), "label": 0}


class PointsData(ZooDataModule):
    def __init__(self, batch_size: int = 4):
        super().__init__(batch_size=batch_size)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = Points()


class NaNAt(ZooModule):
    """A linear model whose loss turns NaN at global step ``nan_step`` (its ``nan_term``)."""

    def __init__(self, nan_step: int = 5):
        super().__init__({"lr": 0.05, "weight_decay": 0.0, "warmup_epochs": 0})
        self.nan_step = nan_step
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        mse = (self.net(x).squeeze(1) - x.sum(1)).pow(2).mean()
        # a term with a gradient, so that a NaN reaching backward would poison the weights
        bad = mse * (float("nan") if self.global_step == self.nan_step else 0.0)
        terms = {"loss": mse + bad, "mse": mse, "nan_term": bad}
        self.log_losses(terms)
        return terms["loss"]


def _fit(tmp_path: Path, guard: NonFiniteGuard, model: NaNAt) -> None:
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[guard, ModelCheckpoint(tmp_path, every_n_train_steps=1, save_last=True)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=PointsData())


def _last(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "last.ckpt", weights_only=False)


def test_nan_loss_stops_before_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = NaNAt(nan_step=5)
    with pytest.raises(NonFiniteLossError) as err:
        _fit(tmp_path, NonFiniteGuard(), model)
    msg = str(err.value)
    assert "global step 5 (epoch 0, batch 5)" in msg and "loss = nan" in msg
    assert "non-finite loss terms: nan_term = nan" in msg and "mse" not in msg
    assert str(tmp_path / "last.ckpt") in msg
    ckpt = _last(tmp_path)
    assert ckpt["global_step"] == 5  # written after step 4, before the NaN step
    weights = ckpt["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    # no optimizer step used the NaN: the model still has the checkpoint's weights
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path):
    """Loss checks off (``check_every_n_steps=0``): the NaN step ruins the weights, and the
    next checkpoint is refused; last.ckpt stays the one before."""
    with pytest.raises(NonFiniteWeightsError, match=r"global step 6: non-finite weights"):
        _fit(tmp_path, NonFiniteGuard(check_every_n_steps=0), NaNAt(nan_step=5))
    ckpt = _last(tmp_path)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(w).all() for w in ckpt["state_dict"].values())


def test_without_the_guard_the_nan_reaches_the_weights(tmp_path):
    """The control: the module above really does poison its weights at step 5."""
    model = NaNAt(nan_step=5)
    _fit(tmp_path, NonFiniteGuard(check_every_n_steps=0, check_checkpoints=False), model)
    assert not torch.isfinite(model.net.weight).all()


# --- zoo fit: defaults, pre-flight, --ckpt_path last ------------------------------------------
def _config(tmp_path: Path, root: Path, nan_step: int = 1000) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root), "name": "tb"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True},
                }
            ],
        },
        "model": {"class_path": f"{__name__}.NaNAt", "init_args": {"nan_step": nan_step}},
        "data": {"class_path": f"{__name__}.PointsData"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_zoo_fit_guards_non_finite_losses_by_default(tmp_path):
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        run_lightning_cli(["fit", "--config", str(_config(tmp_path, tmp_path / "runs", 3))])


def test_zoo_fit_adds_guard_and_seeding_before_checkpointing(tmp_path):
    cli = run_lightning_cli(["fit", "--config", str(_config(tmp_path, tmp_path / "runs"))])
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    assert kinds.count(NonFiniteGuard) == 1 and kinds.count(ExactResume) == 1
    assert kinds.index(ExactResume) < kinds.index(ModelCheckpoint)
    assert isinstance(cli.trainer.train_dataloader, ResumableDataLoader)


def test_zoo_fit_refuses_a_log_dir_under_a_file_before_training(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(PreflightError) as err:
        run_lightning_cli(["fit", "--config", str(_config(tmp_path, blocker / "runs"))])
    assert f"{blocker} is a file" in str(err.value) and str(blocker / "runs") in str(err.value)


def test_zoo_fit_refuses_a_nearly_full_disk_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    root = tmp_path / "runs"
    with pytest.raises(PreflightError) as err:
        run_lightning_cli(["fit", "--config", str(_config(tmp_path, root))])
    msg = str(err.value)
    assert f"for checkpoints in {root / 'tb' / 'version_0' / 'checkpoints'}" in msg
    assert "0.0 MiB free" in msg and "5 parameters" in msg and "x 3 files" in msg
    assert not (root / "tb" / "version_0" / "checkpoints").exists()  # no step was taken


def test_disk_estimate_counts_weights_optimizer_states_and_kept_files(tmp_path, monkeypatch):
    model = torch.nn.Linear(1000, 1000)  # 1,001,000 fp32 parameters
    assert checkpoint_bytes(model) == 1_001_000 * 4 * 3
    need = 1_001_000 * 4 * 3 * 3 * 1.25  # top-1 + last + one being written, 1.25 margin
    usage = namedtuple("usage", "total used free")
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[ModelCheckpoint(tmp_path / "ckpt", save_last=True)],
    )
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, int(need) + 1))
    preflight(trainer, model)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, int(need) - 1))
    with pytest.raises(PreflightError, match=r"for checkpoints in .*ckpt: "):
        preflight(trainer, model)


def test_ckpt_path_last_finds_the_newest_last_checkpoint_of_any_version(tmp_path):
    root = tmp_path / "runs"
    for version, mtime in (("version_0", 1000), ("version_1", 2000)):
        folder = root / "tb" / version / "checkpoints"
        folder.mkdir(parents=True)
        for name in ("last.ckpt", "epoch=0-step=3.ckpt"):
            (folder / name).write_text("")
            os.utime(folder / name, (mtime, mtime))
    trainer = L.Trainer(
        default_root_dir=root,
        logger=TensorBoardLogger(root, name="tb"),
        callbacks=[ModelCheckpoint(save_last=True)],
    )
    assert trainer.logger.version == 2  # the new run's own folder has no checkpoint
    assert find_last_checkpoint(trainer) == root / "tb" / "version_1" / "checkpoints" / "last.ckpt"
