"""Every recipe through the real CLI entry point (in-process): each ``tiny.yaml`` fits
(``fast_dev_run`` by default, the full run under ``-m slow``), each paper-scale recipe
parses with ``--print_config``; bad configs fail before training, naming the problem."""

import re
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import eval_lines
from tests.cli_helpers import fail as _fail
from zoo.cli import main
from zoo.recipe_index import is_tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.name != "metafile.yaml")
TINY = [p for p in RECIPES if is_tiny_recipe(p)]
PAPER_SCALE = [p for p in RECIPES if not is_tiny_recipe(p)]
#: The papers' global batch: CLIP / SLIP, 64 per GPU x 8 GPUs x 8 nodes.
GLOBAL_BATCH = {"clip": 4096, "slip": 4096}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_every_paper_has_tiny_and_paper_scale_recipes():
    papers = {p.parent.name for p in RECIPES}
    assert {"clip", "slip"} <= papers
    for paper in papers:
        assert any(p.parent.name == paper for p in TINY), paper
        assert any(p.parent.name == paper for p in PAPER_SCALE), paper


@pytest.fixture(scope="session")
def prerequisite_chain(tmp_path_factory):
    """``zoo reproduce``'s own chain, shared by the session: a prerequisite several tiny
    recipes name (ViSFT's base model and stage-1 heads) is fitted once, for 2 steps, under
    its own working folder (the recipes' relative checkpoint paths land there)."""
    from zoo.reproduce import PrerequisiteChain

    chain = PrerequisiteChain(seed=0, extra=["--trainer.max_steps", "2"])
    return chain, tmp_path_factory.mktemp("prerequisites")


def _fit_prerequisites(recipe: Path, prerequisite_chain, monkeypatch) -> list[str]:
    """The overrides that pass a recipe's ``# after:`` checkpoints on, fitting them first."""
    chain, where = prerequisite_chain
    monkeypatch.chdir(where)
    chained = chain.overrides(recipe)
    monkeypatch.chdir(ROOT)
    return chained


@pytest.mark.parametrize("recipe", TINY, ids=_id)
def test_tiny_recipe_fits_through_cli(recipe, tmp_path, capsys, monkeypatch, prerequisite_chain):
    chained = _fit_prerequisites(recipe, prerequisite_chain, monkeypatch)
    main(
        [
            "fit",
            "--config",
            str(recipe),
            *chained,
            "--trainer.fast_dev_run",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    lines = eval_lines(yaml.safe_load(recipe.read_text()))
    assert lines, f"{recipe} declares no evaluation callback"
    for name, line in lines.items():  # every evaluation the recipe declares printed its line
        assert re.search(line, out), f"{name} printed nothing:\n{out[-2000:]}"


@pytest.mark.parametrize("recipe", PAPER_SCALE, ids=_id)
def test_paper_scale_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(recipe.read_text())
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    # every optimiser spec the recipe writes (``optim``; SgVA-CLIP: one per optimiser)
    # survives parsing with its learning rate
    specs = {
        k: v
        for k, v in (source["model"].get("init_args") or {}).items()
        if isinstance(v, dict) and "lr" in v
    }
    for key, spec in specs.items():
        assert printed["model"]["init_args"][key]["lr"] == spec["lr"], key
    assert printed["trainer"]["max_epochs"] == source["trainer"]["max_epochs"]
    if recipe.parent.name in GLOBAL_BATCH:
        trainer, data = printed["trainer"], printed["data"]["init_args"]
        assert (
            data["batch_size"] * trainer["devices"] * trainer["num_nodes"]
            == GLOBAL_BATCH[recipe.parent.name]
        )


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
@pytest.mark.parametrize("recipe", [p for p in TINY if p.parent.name in ("clip", "slip")], ids=_id)
def test_tiny_recipe_full_fit(recipe, tmp_path, capsys, monkeypatch):
    # What the results ledger supports for a full tiny fit (recipes/<paper>/metafile.yaml:
    # the latest tiny.yaml records, 3 seeds; chance is 10 % on the ten digit classes). A
    # floor sits comfortably below mean − 2σ of the seeds, so a healthy run of any seed
    # clears it:
    # - SLIP zero-shot 40.4 ± 5.6 (mean − 2σ 29.2; the earlier record 42.1 ± 8.5: 25.2):
    #   floor 25; linear probe 85.7 ± 2.7 (80.4): floor 75.
    # - CLIP linear probe 74.8 ± 5.0 (64.9): floor 60. CLIP zero-shot 16.5 ± 3.6 has
    #   mean − 2σ = 9.3, below chance: the seed spread supports no margin over chance for an
    #   arbitrary seed. But the run is deterministic (CPU fp32: seed 0 gave 12.963 at f91f176
    #   and at c505c62, and top-1 12.96 / top-5 57.22 again when this test was written) and
    #   this test runs seed 0, so zero-shot must be within 2 points (11 of 540 test images)
    #   of the recorded seed-0 value, which also keeps it above chance.
    floors = {"slip": {"zeroshot": 25.0, "probe": 75.0}, "clip": {"zeroshot": None, "probe": 60.0}}
    seed0_tolerance = 2.0

    def ledger(metric: str) -> dict:  # the latest record of the paper's tiny.yaml (no control)
        meta = yaml.safe_load((recipe.parent / "metafile.yaml").read_text())
        return [
            r
            for r in meta["reproduced"]
            if r["recipe"] == "tiny.yaml" and r["metric"] == metric and "control" not in r["scale"]
        ][-1]

    floor = floors[recipe.parent.name]
    assert yaml.safe_load(recipe.read_text())["seed_everything"] == 0  # the seed-0 run
    monkeypatch.chdir(tmp_path)  # the recipe writes runs/<paper>-tiny relative to the cwd
    main(["fit", "--config", str(recipe)])
    out = capsys.readouterr().out
    zero_shot = float(re.search(r"zero-shot top-1: (\d+\.\d\d)%", out).group(1))
    probe = float(re.search(r"linear probe \(trunk\) top-1: (\d+\.\d\d)%", out).group(1))
    probe_record, zero_shot_record = ledger("eval/linear_probe_top1"), ledger("eval/zeroshot_top1")
    assert floor["probe"] < probe_record["mean"] - 2 * probe_record["std"]  # ledger supports it
    assert probe > floor["probe"], (probe, probe_record["values"])
    if floor["zeroshot"] is not None:
        assert floor["zeroshot"] > 10.0
        assert floor["zeroshot"] < zero_shot_record["mean"] - 2 * zero_shot_record["std"]
        assert zero_shot > floor["zeroshot"], (zero_shot, zero_shot_record["values"])
    else:
        seed0 = zero_shot_record["values"][zero_shot_record["seeds"].index(0)]
        assert seed0 - seed0_tolerance > 10.0
        assert abs(zero_shot - seed0) <= seed0_tolerance, (zero_shot, seed0)
    assert list(tmp_path.rglob("last.ckpt")) and list(tmp_path.rglob("events.out.tfevents.*"))
