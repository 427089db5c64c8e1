"""Every recipe through the real CLI entry point (in-process): each ``tiny.yaml`` fits
(``fast_dev_run`` by default, the full run under ``-m slow``), each paper-scale recipe
parses with ``--print_config``; bad configs fail before training, naming the problem."""

import re
from pathlib import Path

import pytest
import yaml

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.name != "metafile.yaml")
TINY = [p for p in RECIPES if p.name == "tiny.yaml"]
PAPER_SCALE = [p for p in RECIPES if p.name != "tiny.yaml"]


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_every_paper_has_tiny_and_paper_scale_recipes():
    papers = {p.parent.name for p in RECIPES}
    assert {"clip", "slip"} <= papers
    for paper in papers:
        assert any(p.parent.name == paper for p in TINY), paper
        assert any(p.parent.name == paper for p in PAPER_SCALE), paper


@pytest.mark.parametrize("recipe", TINY, ids=_id)
def test_tiny_recipe_fits_through_cli(recipe, tmp_path, capsys):
    main(
        [
            "fit",
            "--config",
            str(recipe),
            "--trainer.fast_dev_run",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert re.search(r"zero-shot top-1: \d+\.\d\d%", out), out[-2000:]
    assert re.search(r"linear probe \(trunk\) top-1: \d+\.\d\d%", out), out[-2000:]


@pytest.mark.parametrize("recipe", PAPER_SCALE, ids=_id)
def test_paper_scale_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(recipe.read_text())
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    assert (
        printed["model"]["init_args"]["optim"]["lr"] == source["model"]["init_args"]["optim"]["lr"]
    )
    assert printed["trainer"]["max_epochs"] == source["trainer"]["max_epochs"]
    # the paper's global batch: 64 per GPU x 8 GPUs x 8 nodes
    trainer, data = printed["trainer"], printed["data"]["init_args"]
    assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] == 4096


def _fail(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_unknown_key_fails_before_training_naming_it(capsys, tmp_path):
    tiny = str(ROOT / "recipes/slip/tiny.yaml")
    err = _fail(["fit", "--config", tiny, "--model.init_args.ssl_scael", "0.5"], capsys)
    assert "ssl_scael" in err
    bad = yaml.safe_load(Path(tiny).read_text())
    bad["model"]["init_args"]["optim"]["warmup_epocs"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert "warmup_epocs" in _fail(["fit", "--config", str(path)], capsys)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_wrong_type_fails_naming_the_key(capsys):
    tiny = str(ROOT / "recipes/clip/tiny.yaml")
    err = _fail(["fit", "--config", tiny, "--trainer.max_epochs", "many"], capsys)
    assert "max_epochs" in err


def test_missing_data_path_names_the_path(tmp_path, capsys):
    tiny = str(ROOT / "recipes/clip/tiny.yaml")
    missing = tmp_path / "nowhere" / "pairs.csv"
    args = [
        "fit",
        "--config",
        tiny,
        "--data.init_args.source",
        "csv",
        "--data.init_args.train",
        str(missing),
    ]
    with pytest.raises((SystemExit, FileNotFoundError)) as exc_info:
        main(args)
    captured = capsys.readouterr()
    text = str(exc_info.value) + captured.err + captured.out
    assert str(missing) in text


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TINY, ids=_id)
def test_tiny_recipe_full_fit(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe writes runs/<paper>-tiny relative to the cwd
    main(["fit", "--config", str(recipe)])
    out = capsys.readouterr().out
    zero_shot = float(re.search(r"zero-shot top-1: (\d+\.\d\d)%", out).group(1))
    probe = float(re.search(r"linear probe \(trunk\) top-1: (\d+\.\d\d)%", out).group(1))
    assert probe > 40.0  # ten balanced classes: chance is 10%
    assert 0.0 <= zero_shot <= 100.0
    assert list(tmp_path.rglob("last.ckpt")) and list(tmp_path.rglob("events.out.tfevents.*"))
