"""Bad data fails at fit start, before the first training step, with one error that names
the file and the problem; evaluation splits can be configured per split (source, path,
columns) and drop bad images instead of replacing them.

Every case runs the real CLI on the tiny CLIP recipe with generated tables."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes/clip/tiny.yaml")
CLASSNAMES = '["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]'


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        names.append(f"imgs/{i}.png")
    return names


def _table(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """train.csv (12 captioned, labelled images: the probe fits on them) and test.csv
    (10 labelled images)."""
    names = _images(tmp_path / "imgs", 12)
    rows = [[n, f"a photo of {n}", i % 10] for i, n in enumerate(names)]
    _table(tmp_path / "train.csv", ["image", "caption", "label"], rows)
    _table(
        tmp_path / "test.csv", ["image", "label"], [[n, i % 10] for i, n in enumerate(names[:10])]
    )
    return tmp_path


def _fit(data: Path, *extra: str) -> None:
    main(
        [
            "fit",
            "--config",
            TINY,
            "--data.source=csv",
            f"--data.root={data}",
            "--data.train=train.csv",
            "--data.test=test.csv",
            "--data.batch_size=4",
            f"--data.classnames={CLASSNAMES}",
            '--data.templates=["a photo of the digit {}."]',
            "--trainer.max_steps=2",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={data / 'run'}",
            f"--trainer.logger.init_args.save_dir={data / 'run'}",
            *extra,
        ]
    )


def _fails_before_training(data: Path, match: str, *extra: str) -> str:
    with pytest.raises((ValueError, SystemExit)) as info:
        _fit(data, *extra)
    text = str(info.value)
    assert re.search(match, text), text
    assert not list((data / "run").rglob("*.ckpt")), "a step ran before the error"
    return text


def test_the_valid_setup_trains_and_evaluates(data, capsys):
    """The baseline the failure cases below differ from by one thing each."""
    _fit(data)
    out = capsys.readouterr().out
    assert re.search(r"zero-shot top-1: \d+\.\d\d% .*on 10 test images", out), out[-2000:]
    assert list((data / "run").rglob("last.ckpt"))


def test_empty_table_fails_naming_it(data):
    (data / "train.csv").write_text("")
    _fails_before_training(data, r"train\.csv.*(empty|no header|0 samples)")


def test_header_only_table_fails_instead_of_exiting_0(data):
    (data / "train.csv").write_text("image,caption,label\n")
    _fails_before_training(data, r"train\.csv.* holds 0 samples")


def test_table_smaller_than_a_batch_fails(data):
    text = _fails_before_training(data, r"train\.csv.* holds 12 samples", "--data.batch_size=16")
    assert "one full batch per rank" in text


def test_batch_size_zero_fails_at_instantiation(data, capsys):
    with pytest.raises((ValueError, SystemExit)) as info:
        _fit(data, "--data.batch_size=0")
    captured = capsys.readouterr()
    assert "batch_size must be >= 1" in str(info.value) + captured.err + captured.out


def test_test_table_without_labels_fails_naming_file_and_column(data):
    _table(data / "test.csv", ["image", "caption"], [[f"imgs/{i}.png", "x"] for i in range(10)])
    text = _fails_before_training(data, r"data\.test .*test\.csv.* no label column")
    assert "ZeroShotEval" in text or "label_key" in text


def test_linear_probe_without_test_split_fails_at_start(data):
    # the tiny recipe lists ZeroShotEval and LinearProbeEval; drop the test split
    _fails_before_training(
        data, r"(ZeroShotEval|LinearProbeEval).*data\.test is not set", "--data.test=null"
    )


def test_labels_outside_the_class_list_fail(data):
    _table(data / "test.csv", ["image", "label"], [[f"imgs/{i}.png", 10 + i] for i in range(10)])
    _fails_before_training(data, r"test\.csv.*label 19 is out of range for the 10 classnames")


def test_image_column_named_per_split(data, capsys):
    """A CLIP-benchmark style table whose image column is ``filepath``, read without
    rewriting it, through the per-split long form."""
    _table(data / "val.csv", ["filepath", "label"], [[f"imgs/{i}.png", i % 10] for i in range(10)])
    _fit(data, "--data.test={path: val.csv, image_key: filepath, label_key: label}")
    assert re.search(r"zero-shot top-1: .* on 10 test images", capsys.readouterr().out)


def test_per_split_source_reads_an_eval_csv_beside_wds_training_data(data, capsys):
    """Defect 1: one ``source`` for every split read the evaluation CSV as a tar shard."""
    from zoo.data.layouts import write_layout

    write_layout({"source": "wds", "train": "shards-{000..001}.tar"}, data, samples=8)
    _fit(
        data,
        "--data.source=wds",
        "--data.train=shards-{000..001}.tar",
        "--data.test={source: csv, path: test.csv}",
    )
    assert re.search(r"zero-shot top-1: .* on 10 test images", capsys.readouterr().out)


def test_evaluation_drops_bad_images_and_says_how_many(data, capsys):
    (data / "imgs" / "3.png").write_bytes(b"not a png")
    (data / "imgs" / "5.png").unlink()
    _fit(data, "--data.train=train.csv")
    out = capsys.readouterr().out
    # 8 of 10 test images are scored; the two bad ones are neither scored nor replaced
    assert re.search(r"zero-shot top-1: .* on 8 test images", out), out[-2000:]
    assert re.search(r"2 bad test images dropped", out), out[-2000:]
