"""``zoo reproduce --shots``: the few-shot sweep runs every (shot count, seed) with the shot
count and seed passed to the datamodule and to ``seed_everything`` and the ``--per-shot``
settings of that shot count; its stdout table, CSV and metafile entries hold the
hand-computed mean ± std per shot count; ``zoo docs`` shows the shot count."""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from zoo import reproduce
from zoo.docs import render_readme
from zoo.ledger import validate_metafile
from zoo.recipe_index import Paper

ROOT = Path(__file__).resolve().parents[2]
SHOTS, SEEDS = [1, 4], [1, 2, 3]


def fake_metrics(shots: int, seed: int) -> dict[str, float]:
    """Known per-run results: at K shots, seeds 1, 2, 3 give top-1 K+1, K+2, K+3 (mean K+2,
    sample std 1) and probe top-1 10·K + 10·seed (mean 10·K + 20, std 10); ``_C`` is a
    setting, never a result."""
    return {
        "eval/fewshot_top1": shots + seed,
        "eval/linear_probe_top1": 10.0 * shots + 10.0 * seed,
        "eval/linear_probe_C": 0.5,
    }


@pytest.fixture
def paper(tmp_path, monkeypatch) -> SimpleNamespace:
    """A copy of the clip paper folder; ``run_seed`` records its calls (``paper.calls``)."""
    folder = tmp_path / "recipes" / "clip"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "recipes/clip/tiny.yaml", folder / "tiny.yaml")
    meta = yaml.safe_load((ROOT / "recipes/clip/metafile.yaml").read_text())
    meta["reproduced"] = []
    (folder / "metafile.yaml").write_text(yaml.safe_dump(meta))
    calls: list[tuple[int, list[str]]] = []

    def run_seed(recipe, seed, overrides):
        args = list(overrides)
        shots = int(args[args.index("--data.init_args.shots") + 1])
        assert int(args[args.index("--data.init_args.fewshot_seed") + 1]) == seed
        calls.append((seed, args))
        return fake_metrics(shots, seed), f"data: {{shots: {shots}}}\nseed_everything: {seed}\n"

    monkeypatch.setattr(reproduce, "run_seed", run_seed)
    monkeypatch.chdir(tmp_path)
    return SimpleNamespace(folder=folder, calls=calls)


def _run(paper: SimpleNamespace, *extra: str) -> str:
    argv = [
        str(paper.folder / "tiny.yaml"),
        "--shots",
        *map(str, SHOTS),
        "--seed-list",
        *map(str, SEEDS),
    ]
    out = io.StringIO()
    with redirect_stdout(out):
        assert reproduce.reproduce_command([*argv, *extra]) == 0
    return out.getvalue()


def test_sweep_runs_every_shot_and_seed_with_its_overrides(paper):
    _run(
        paper,
        "--per-shot",
        "1:trainer.max_epochs=50",
        "4:trainer.max_epochs=100",
        "--",
        "--trainer.limit_train_batches",
        "2",
    )
    calls = paper.calls
    assert [seed for seed, _ in calls] == SEEDS * len(SHOTS)
    for (seed, args), shots in zip(calls, [1, 1, 1, 4, 4, 4]):
        epochs = {1: "50", 4: "100"}[shots]
        assert args == [
            "--trainer.limit_train_batches",
            "2",
            "--data.init_args.shots",
            str(shots),
            "--data.init_args.fewshot_seed",
            str(seed),
            "--trainer.max_epochs",
            epochs,
        ]


def test_sweep_table_csv_and_metafile_hold_mean_and_std_per_shot(paper):
    printed = _run(paper, "--append", "--scale", "test scale")
    # stdout: one row per shot count, mean ± std per metric (the setting _C is not a result)
    rows = {line.split()[0]: line for line in printed.splitlines() if line[:1].isdigit()}
    assert rows["1"].split()[1:] == ["3.00", "±", "1.00", "30.00", "±", "10.00"]
    assert rows["4"].split()[1:] == ["6.00", "±", "1.00", "60.00", "±", "10.00"]
    assert "linear_probe_C" not in printed.split("mean ± std over seeds [1, 2, 3]")[1]

    # CSV: a row per (shots, seed), then mean and std rows per shot count
    table = list(csv.DictReader(io.StringIO(Path("runs/reproduce/clip-tiny.csv").read_text())))
    assert [(r["shots"], r["seed"]) for r in table] == [
        ("1", "1"), ("1", "2"), ("1", "3"), ("1", "mean"), ("1", "std"),
        ("4", "1"), ("4", "2"), ("4", "3"), ("4", "mean"), ("4", "std"),
    ]  # fmt: skip
    by = {(r["shots"], r["seed"]): r for r in table}
    assert float(by[("4", "2")]["eval/fewshot_top1"]) == 6.0
    assert float(by[("4", "2")]["eval/linear_probe_top1"]) == 60.0
    assert float(by[("1", "mean")]["eval/fewshot_top1"]) == 3.0
    assert float(by[("1", "std")]["eval/fewshot_top1"]) == 1.0
    assert float(by[("4", "mean")]["eval/linear_probe_top1"]) == 60.0
    assert float(by[("4", "std")]["eval/linear_probe_top1"]) == 10.0

    # metafile: one validated entry per (shots, metric), the shot count recorded
    meta = validate_metafile(paper.folder / "metafile.yaml")
    got = {(r.shots, r.metric): (r.mean, r.std, r.values, r.seeds) for r in meta.reproduced}
    assert got == {
        (1, "eval/fewshot_top1"): (3.0, 1.0, [2.0, 3.0, 4.0], SEEDS),
        (4, "eval/fewshot_top1"): (6.0, 1.0, [5.0, 6.0, 7.0], SEEDS),
        (1, "eval/linear_probe_top1"): (30.0, 10.0, [20.0, 30.0, 40.0], SEEDS),
        (4, "eval/linear_probe_top1"): (60.0, 10.0, [50.0, 60.0, 70.0], SEEDS),
    }
    # each shot count's entries hash that shot count's resolved config
    record = json.loads(Path("runs/reproduce/clip-tiny.json").read_text())
    hashes = {r.shots: r.config_sha256 for r in meta.reproduced}
    assert hashes == {run["shots"]: run["config_sha256"] for run in record["sweep"]}
    assert hashes[1] != hashes[4]
    assert all(r.scale == "test scale" and "--shots 1 4" in r.command for r in meta.reproduced)

    # zoo docs: the README's reproduced table has a shots column
    readme = render_readme(Paper("clip", paper.folder))
    assert "| recipe | shots | metric | mean ± std | seeds |" in readme
    assert "| `tiny.yaml` | 4 | eval/fewshot_top1 | 6.00 ± 1.00 | 1, 2, 3 |" in readme


def test_bad_per_shot_settings_are_refused(paper, capsys):
    argv = [str(paper.folder / "tiny.yaml"), "--shots", "1", "2"]
    for bad, why in (
        (["--per-shot", "8:trainer.max_epochs=200"], "8 is not one of --shots [1, 2]"),
        (["--per-shot", "1:trainer.max_epochs"], "expected K[,K...]:KEY=VALUE"),
    ):
        with pytest.raises(SystemExit):
            reproduce.reproduce_command([*argv, *bad])
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.reproduce_command([str(paper.folder / "tiny.yaml"), "--per-shot", "1:a=b"])
    assert "--per-shot needs --shots" in capsys.readouterr().err
    assert paper.calls == []  # nothing ran


# About a minute on 2 cores (two tiny fits through the real CLI): .ci/run runs it with the
# other slow tests.
@pytest.mark.slow
def test_sweep_through_the_cli_sets_shots_and_seed_of_a_fewshot_recipe(tmp_path, monkeypatch):
    """``--data.init_args.shots`` / ``fewshot_seed`` reach a real few-shot datamodule: each
    shot count's resolved config holds its K and the seed, and its CSV rows exist."""
    out = tmp_path / "coop.json"
    argv = ["recipes/coop/tiny.yaml", "--shots", "1", "2", "--seed-list", "3", "--out", str(out)]
    monkeypatch.chdir(ROOT)  # the recipe's checkpoint path is relative to the project root
    assert reproduce.reproduce_command([*argv, "--", "--trainer.fast_dev_run", "1"]) == 0
    record = json.loads(out.read_text())
    for run, shots in zip(record["sweep"], [1, 2]):
        config = yaml.safe_load(run["config"])["fit"]
        data = config["data"]["init_args"]
        assert (data["shots"], data["fewshot_seed"], config["seed_everything"]) == (shots, 3, 3)
    rows = list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))
    assert [(r["shots"], r["seed"]) for r in rows] == [
        ("1", "3"), ("1", "mean"), ("1", "std"), ("2", "3"), ("2", "mean"), ("2", "std"),
    ]  # fmt: skip
    assert all(r["eval/fewshot_top1"] != "" for r in rows)
