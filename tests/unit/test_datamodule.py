"""The image–text datamodule reads every real format back to the same data, builds SLIP's
four-tensor samples, writes the digits in ``prepare_data`` (never ``__init__``), evaluates
with ``preprocess.eval_transform()`` and fails clearly on missing paths."""

from pathlib import Path

import pytest
import torch

from datamodules.clip import CLIPDataModule
from datamodules.slip import SLIPDataModule
from zoo.data.transforms import build_transform
from zoo.datamodule import DigitsSpec

FORMATS = ["csv", "jsonl", "wds", "hf"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits"))


def _module(cache: str, fmt: str, cls=SLIPDataModule, **kwargs):
    dm = cls(
        source="digits",
        digits=DigitsSpec(format=fmt, cache_dir=cache),
        image_size=16,
        context_length=16,
        batch_size=32,
        **kwargs,
    )
    dm.prepare_data()  # what the Trainer does (local rank 0) before setup
    return dm


def _per_label_pixel_sums(dm) -> torch.Tensor:
    sums = torch.zeros(10, dtype=torch.float64)
    count = 0
    for batch in dm.eval_dataloader("test"):
        sums.index_add_(0, batch["label"], batch["image"].double().sum(dim=(1, 2, 3)))
        count += len(batch["label"])
    assert count == 540
    return sums


def test_every_format_reads_back_the_same_labelled_images(cache):
    reference = _per_label_pixel_sums(_module(cache, "csv"))
    assert (reference != 0).all()
    for fmt in FORMATS[1:]:
        torch.testing.assert_close(
            _per_label_pixel_sums(_module(cache, fmt)), reference, rtol=1e-9, atol=1e-6
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_slip_training_batch_has_clip_view_caption_and_two_ssl_views(cache, fmt):
    dm = _module(cache, fmt)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 3, 16, 16) and len(batch["views"]) == 2
    assert all(v.shape == batch["image"].shape for v in batch["views"])
    # the three views are different augmentations of the same images
    assert not torch.equal(batch["views"][0], batch["views"][1])
    tokens = batch["text"]
    assert tokens.shape == (32, 16) and (tokens[:, 0] == 49406).all()
    assert (
        tokens.argmax(dim=1) == (tokens == 49407).int().argmax(dim=1)
    ).all()  # EOT is the max id
    assert int(batch["skipped"]) == 0


def test_clip_datamodule_has_no_extra_views(cache):
    dm = _module(cache, "csv", cls=CLIPDataModule)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.get("views", []) == [] and dm.num_views == 0
    assert len(dm.train_dataloader()) == 1257 // 32  # drop_last


def test_webdataset_epoch_length_is_set(cache):
    dm = _module(cache, "wds", cls=CLIPDataModule)
    dm.setup("fit")
    assert dm.epoch_samples == 1257
    assert len(dm.train_dataloader()) == 1257 // 32
    seen = sum(len(b["label"]) for b in dm.train_dataloader())
    assert seen == (1257 // 32) * 32


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found: .*nope"):
        CLIPDataModule(source="csv", root=str(tmp_path / "nope"), train="pairs.csv")
    with pytest.raises(FileNotFoundError, match=r"train data not found: .*pairs\.csv"):
        CLIPDataModule(source="csv", root=str(tmp_path), train="pairs.csv")
    with pytest.raises(FileNotFoundError, match=r"shard-000001\.tar"):
        (tmp_path / "shard-000000.tar").write_bytes(b"")
        CLIPDataModule(
            source="wds", root=str(tmp_path), train="shard-{000000..000001}.tar", epoch_samples=10
        )


def test_builtin_imagenet_lists():
    dm = CLIPDataModule(
        source="csv", classnames="builtin:imagenet", templates="builtin:openai_imagenet"
    )
    assert len(dm.classnames) == 1000 and len(dm.templates) == 80
    assert all(t.count("{}") == 1 for t in dm.templates)


def test_corrupt_and_missing_images_are_counted_in_training_logs(tmp_path):
    import csv

    import lightning as L
    import numpy as np
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    from lightning_modules.clip import CLIP
    from tests.papers._tiny import tiny_encoder_spec

    rows = []
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(
            tmp_path / f"{i}.png"
        )
        rows.append({"image": f"{i}.png", "caption": f"picture {i}", "label": i % 10})
    (tmp_path / "3.png").write_bytes(b"not a png")  # corrupt
    rows.append({"image": "gone.png", "caption": "missing", "label": 0})  # missing
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)

    spec = tiny_encoder_spec()
    spec.text.vocab_size, spec.text.eos_token_id = 49408, 49407  # the real CLIP BPE
    dm = CLIPDataModule(
        source="csv",
        root=str(tmp_path),
        train="pairs.csv",
        image_size=16,
        context_length=8,
        batch_size=17,
        drop_last=False,
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(CLIP(encoder=spec), datamodule=dm)
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("data/skipped_images")
    values = [float(line.split(",")[column]) for line in metrics[1:] if line.split(",")[column]]
    assert values == [2.0, 2.0]  # one corrupt + one missing file, each epoch


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_digits_are_written_by_prepare_data_and_only_read_by_setup(tmp_path, monkeypatch):
    """``__init__`` writes nothing; ``prepare_data`` writes the digits (local rank 0);
    ``setup`` reads them from the same deterministic folder (the other ranks) and fails
    naming ``prepare_data`` when they are missing."""
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    digits = DigitsSpec(format="csv", cache_dir=str(tmp_path / "digits"))
    args = {"source": "digits", "digits": digits, "image_size": 16, "batch_size": 32}
    rank0 = CLIPDataModule(**args)
    rank1 = CLIPDataModule(**args)  # another rank's copy: it never calls prepare_data
    assert not tmp_path.exists() or _files(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        rank1.setup("fit")

    rank0.prepare_data()
    written = {p: p.stat().st_mtime_ns for p in _files(tmp_path / "digits")}
    assert (tmp_path / "digits" / "csv" / "train.csv").is_file() and len(written) > 1797
    rank1.setup("fit")
    assert rank1.paths["train"] == str(tmp_path / "digits" / "csv" / "train.csv")
    assert len(rank1.train_set) == 1257 and rank1.classnames[7] == "seven"
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path / "digits")} == written
    rank0.prepare_data()  # idempotent: the built copy is reused, not rewritten
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path / "digits")} == written


def test_eval_transform_is_the_preprocess_spec_and_keeps_todays_pixels():
    """CLIP/SLIP evaluation pixels are those of ``build_transform("eval", size)`` with the
    datamodule's mean/std (OpenAI's when unset), now produced by ``preprocess``."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (37, 23, 3), generator=rng, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for kwargs, old in (
        ({}, build_transform("eval", 16)),
        ({"mean": mean, "std": std}, build_transform("eval", 16, mean=mean, std=std)),
    ):
        dm = SLIPDataModule(source="csv", image_size=16, context_length=16, **kwargs)
        spec = dm.preprocess
        assert (spec.image_size, spec.tokenizer, spec.context_length) == (16, "clip-bpe", 16)
        assert spec.interpolation == "bicubic" and spec.resize is None
        want = old(image)
        assert torch.equal(spec.eval_transform()(image), want)
        assert torch.equal(dm.transform("eval")(image), want)
