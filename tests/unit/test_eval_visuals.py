"""zoo.eval.visuals: confusion matrix / per-class table by hand, rendered pictures as
properties, the TensorBoard logging API, and ZeroShotEval's pictures after a tiny CLIP fit
read back from the event file."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from zoo.eval.callbacks import LinearProbeEval
from zoo.eval.visuals import (
    confusion_matrix,
    log_embedding,
    log_eval_visuals,
    log_image,
    log_text,
    per_class_accuracy_table,
    render_confusion_matrix,
    render_prediction_grid,
    row_normalize,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two", "three"]


def _events(root: Path) -> EventAccumulator:
    (path,) = root.rglob("events.out.tfevents*")
    acc = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def _text(acc: EventAccumulator, tag: str) -> str:
    (event,) = acc.Tensors(f"{tag}/text_summary")
    return tensor_util.make_ndarray(event.tensor_proto).item().decode()


def _trainer(tmp_path: Path, *loggers, rank0: bool = True) -> SimpleNamespace:
    return SimpleNamespace(loggers=list(loggers), is_global_zero=rank0, global_step=7)


def test_confusion_matrix_and_per_class_table_by_hand():
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y, pred, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert torch.allclose(row_normalize(cm)[2], torch.tensor([1 / 3, 0, 2 / 3, 0]))
    assert row_normalize(cm)[3].tolist() == [0, 0, 0, 0]  # no samples: no division by 0
    assert per_class_accuracy_table(y, pred, NAMES).splitlines() == [
        "| class | n | accuracy |",
        "| --- | ---: | ---: |",
        "| zero | 2 | 50.00% |",
        "| one | 2 | 100.00% |",
        "| two | 3 | 66.67% |",
        "| three | 0 | - |",
    ]
    # without names: indices, as many classes as labels / predictions show
    assert per_class_accuracy_table(y, pred).splitlines()[2:] == [
        "| 0 | 2 | 50.00% |",
        "| 1 | 2 | 100.00% |",
        "| 2 | 3 | 66.67% |",
    ]


def _cells(image: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean colour darkness (255 - mean RGB) near the top-left corner of every cell, the
    matrix found as the bounding box of the blue-ramp pixels."""
    rgb = image.astype(int)
    blue = (rgb[..., 2] - rgb[..., 0] > 40) & (rgb[..., 0] < 200)
    rows, cols = np.nonzero(blue)
    top, left = rows.min(), cols.min()
    cell = (rows.max() - top + 1) // num_classes
    out = np.zeros((num_classes, num_classes))
    for i in range(num_classes):
        for j in range(num_classes):
            y, x = top + i * cell + 2, left + j * cell + 2
            out[i, j] = 255 - rgb[y : y + 3, x : x + 3].mean()
    return out


def test_rendered_confusion_matrix_shows_the_diagonal():
    y = torch.arange(5).repeat(4)
    perfect = render_confusion_matrix(confusion_matrix(y, y, 5), NAMES + ["four"], cell_size=20)
    assert perfect.dtype == np.uint8 and perfect.ndim == 3 and perfect.shape[2] == 3
    assert perfect.shape[0] > 5 * 20 and perfect.shape[1] > 5 * 20  # matrix + axis labels
    dark = _cells(perfect, 5)
    off = dark[~np.eye(5, dtype=bool)]
    assert dark.diagonal().min() > 150 and off.max() < 20, dark
    # everything predicted as class 0: column 0 dark, the rest light
    constant = render_confusion_matrix(confusion_matrix(y, torch.zeros_like(y), 5), cell_size=20)
    dark = _cells(constant, 5)
    assert dark[:, 0].min() > 150 and dark[:, 1:].max() < 20, dark
    # many classes: no names, still a picture of the right size
    many = render_confusion_matrix(confusion_matrix(torch.arange(40), torch.arange(40), 40))
    assert many.shape[0] >= 40 * 16 and (many < 100).any()


def test_prediction_grid_frames_and_unnormalises():
    gray = torch.full((3, 8, 8), 0.5)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    images = ((gray - mean) / std).expand(2, 3, 8, 8)
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.6, 0.3, 0.1, 0.0]])
    grid = render_prediction_grid(images, torch.tensor([0, 2]), probs, NAMES, tile_size=40)
    assert grid.dtype == np.uint8 and grid.shape[1] > 2 * 40 and grid.shape[0] > 40
    # tile 0 right (green frame), tile 1 wrong (red frame); frames start 3 px in
    assert tuple(grid[4, 4]) == (46, 160, 67)
    assert tuple(grid[4, 3 + 46 + 3 + 1]) == (215, 48, 39)
    # the picture is un-normalised with the CLIP statistics (mean / std None): mid gray
    assert np.abs(grid[3 + 3 + 20, 3 + 3 + 20].astype(int) - 128).max() <= 1
    # explicit datamodule statistics
    plain = render_prediction_grid(
        gray[None] * 2 - 1, torch.tensor([0]), probs[:1], NAMES, (0.5,) * 3, (0.5,) * 3, 3, 40
    )
    assert np.abs(plain[3 + 3 + 20, 3 + 3 + 20].astype(int) - 128).max() <= 1


def test_logging_is_a_no_op_without_tensorboard_or_off_rank_zero(tmp_path):
    labels, scores = torch.tensor([0, 1]), torch.eye(2)
    csv = _trainer(tmp_path, CSVLogger(tmp_path / "csv"))
    assert log_eval_visuals(csv, "eval/x", labels, scores, images=torch.zeros(2, 3, 4, 4)) == []
    assert not log_image(csv, "a", np.zeros((4, 4, 3), np.uint8))
    assert not log_text(_trainer(tmp_path), "a", "text")
    tb = TensorBoardLogger(tmp_path, name="tb")
    assert log_eval_visuals(_trainer(tmp_path, tb, rank0=False), "eval/x", labels, scores) == []
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_log_eval_visuals_and_embeddings_to_tensorboard(tmp_path):
    trainer = _trainer(tmp_path, CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path, "tb"))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    logits = 5 * torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 0, 1]), 4).float()
    tags = log_eval_visuals(
        trainer, "eval/demo", labels, logits, NAMES, images=torch.randn(4, 3, 8, 8)
    )
    assert tags == [
        f"eval/demo_{t}" for t in ("confusion_matrix", "per_class_accuracy", "predictions")
    ]
    probe = LinearProbeEval(log_embeddings=True)
    x = torch.randn(6, 5)
    probe._log_embeddings(trainer, SimpleNamespace(classnames=NAMES), "eval/probe", x, labels)
    assert log_embedding(trainer, "eval/no_names", x, labels)
    trainer.loggers[1].experiment.flush()
    acc = _events(tmp_path / "tb")
    assert set(acc.Tags()["images"]) == {"eval/demo_confusion_matrix", "eval/demo_predictions"}
    assert all(acc.Images(t)[0].step == 7 for t in acc.Tags()["images"])
    assert "| three | 1 | 0.00% |" in _text(acc, "eval/demo_per_class_accuracy")
    metadata = sorted(p.read_text().split() for p in tmp_path.rglob("metadata.tsv"))
    assert metadata == [["0", "1", "2", "3", "0", "1"], NAMES + NAMES[:2]]


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


@pytest.mark.parametrize("log_images", [True, False], ids=["log_images", "no_images"])
def test_zeroshot_visuals_after_tiny_clip_fit(log_images, digits_cache, tmp_path, capsys):
    from zoo.cli import main

    # fast_dev_run would swap the TensorBoardLogger for a DummyLogger: two real steps
    config = yaml.safe_load((ROOT / "recipes/clip/tiny.yaml").read_text())
    config["trainer"]["callbacks"] = [
        {"class_path": "zoo.eval.ZeroShotEval", "init_args": {"log_images": log_images}}
    ]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            str(path),
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(run),
            "--trainer.logger.init_args.save_dir",
            str(run),
            "--data.init_args.batch_size",
            "64",
            "--data.init_args.digits.cache_dir",
            str(digits_cache),
            "--data.init_args.digits.test_fraction",
            "0.1",
        ]
    )
    out = capsys.readouterr().out
    assert re.search(r"zero-shot top-1: \d+\.\d\d% \(top-5 \d+\.\d\d%\) on 180 test images", out)
    acc = _events(run)
    assert acc.Scalars("eval/zeroshot_top1")[0].step == 2
    text_tags = [t for t in acc.Tags()["tensors"] if "per_class_accuracy" in t]
    if not log_images:
        assert acc.Tags()["images"] == [] and text_tags == []
        return
    images = {"eval/zeroshot_confusion_matrix", "eval/zeroshot_predictions"}
    assert set(acc.Tags()["images"]) == images
    (cm,) = acc.Images("eval/zeroshot_confusion_matrix")
    (grid,) = acc.Images("eval/zeroshot_predictions")
    assert cm.step == grid.step == 2 and cm.width > 10 * 16 and grid.width > 4 * 100
    table = _text(acc, "eval/zeroshot_per_class_accuracy").splitlines()
    assert table[0] == "| class | n | accuracy |" and len(table) == 2 + 10
    assert re.fullmatch(r"\| zero \| 1[78] \| \d+\.\d\d% \|", table[2]), table[2]
