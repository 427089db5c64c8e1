"""``zoo reproduce``'s ``# after:`` chain: prerequisites fitted depth first, once per seed,
their checkpoints passed on; ``--reuse-prerequisites`` reuses a fit only when recipe text,
seed, inputs and code are the same. The fits are faked (a checkpoint file per fit)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from zoo import reproduce
from zoo.reproduce import PrerequisiteChain, prerequisites


def _recipe(folder: Path, name: str, *after: str) -> Path:
    path = folder / "recipes" / "demo" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {name}", *(f"# after: {a}" for a in after), "seed_everything: 0", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def fits(tmp_path, monkeypatch):
    """Every fake fit: (recipe stem, seed, arguments); each writes its recipe's last.ckpt (one
    path per recipe, as a recipe's ModelCheckpoint folder is) whose bytes say which fit made
    it, saves the same bytes where ``trainer.save_checkpoint`` is asked to, and reports one
    metric."""
    calls: list[tuple[str, int, list[str]]] = []

    def run_lightning_cli(args):
        recipe = Path(args[args.index("--config") + 1])
        seed = int(args[args.index("--seed_everything") + 1])
        calls.append((recipe.stem, seed, list(args)))
        content = f"{recipe.stem} seed {seed} fit {len(calls)}"
        ckpt = tmp_path / "runs" / recipe.stem / "last.ckpt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_text(content)
        callback = SimpleNamespace(results={"eval/score": float(len(calls))})
        trainer = SimpleNamespace(
            callbacks=[callback],
            checkpoint_callback=SimpleNamespace(last_model_path=str(ckpt)),
            save_checkpoint=lambda path, text=content: Path(path).write_text(text),
        )
        return SimpleNamespace(trainer=trainer)

    import zoo.lightning_cli

    monkeypatch.setattr(zoo.lightning_cli, "run_lightning_cli", run_lightning_cli)
    monkeypatch.setattr(reproduce, "_code_identity", lambda: "commit-a")
    monkeypatch.chdir(tmp_path)
    return calls


def _chain(tmp_path: Path) -> Path:
    """base ← head_a, head_b ← final (base named by all three)."""
    _recipe(tmp_path, "base")
    _recipe(tmp_path, "head_a", "model.base.path = recipes/demo/base.yaml")
    _recipe(tmp_path, "head_b", "model.base.path = recipes/demo/base.yaml")
    return _recipe(
        tmp_path,
        "final",
        "model.base.path = recipes/demo/base.yaml",
        "model.heads.a = recipes/demo/head_a.yaml",
        "model.heads.b = recipes/demo/head_b.yaml",
    )


def test_prerequisites_are_fitted_depth_first_once_each_and_passed_on(tmp_path, fits):
    final = _chain(tmp_path)
    chain = PrerequisiteChain(seed=3)
    overrides = chain.overrides(final)
    assert [(stem, seed) for stem, seed, _ in fits] == [("base", 3), ("head_a", 3), ("head_b", 3)]
    # each head got the base's checkpoint (the bytes say which fit made it); the final
    # recipe gets all three, grouped by parent
    passed = {name: json.loads(value) for name, _, value in (o.partition("=") for o in overrides)}
    assert list(passed) == ["--model.base", "--model.heads"]
    base_ckpt = passed["--model.base"]["path"]
    assert Path(base_ckpt).is_absolute() and Path(base_ckpt).read_text() == "base seed 3 fit 1"
    for _, _, args in fits[1:]:
        assert f"--model.base={json.dumps({'path': base_ckpt})}" in args
    heads = passed["--model.heads"]
    assert Path(heads["a"]).read_text() == "head_a seed 3 fit 2"
    assert Path(heads["b"]).read_text() == "head_b seed 3 fit 3"
    assert chain.metrics == {
        "base:eval/score": 1.0,
        "head_a:eval/score": 2.0,
        "head_b:eval/score": 3.0,
    }


def test_after_paths_resolve_from_the_checkout_when_run_elsewhere(tmp_path, monkeypatch):
    final = _chain(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert [p.resolve() for _, p in prerequisites(final)] == [
        (tmp_path / f"recipes/demo/{n}.yaml").resolve() for n in ("base", "head_a", "head_b")
    ]


def test_a_cycle_is_refused(tmp_path, fits):
    _recipe(tmp_path, "one", "model.x = recipes/demo/two.yaml")
    two = _recipe(tmp_path, "two", "model.y = recipes/demo/one.yaml")
    with pytest.raises(ValueError, match="cycle"):
        PrerequisiteChain(seed=0).overrides(two)


def test_reuse_takes_a_fit_only_for_the_same_recipe_seed_inputs_and_code(
    tmp_path, fits, monkeypatch
):
    final = _chain(tmp_path)
    first = PrerequisiteChain(seed=1, reuse=True).overrides(final)
    assert len(fits) == 3
    # the same seed and code: nothing is fitted again, the same checkpoints come back
    again = PrerequisiteChain(seed=1, reuse=True)
    assert again.overrides(final) == first
    assert len(fits) == 3
    assert again.metrics["head_b:eval/score"] == 3.0  # the cached fit's metrics
    # another seed fits everything
    PrerequisiteChain(seed=2, reuse=True).overrides(final)
    assert [stem for stem, seed, _ in fits[3:]] == ["base", "head_a", "head_b"]
    # an edited head recipe refits that head only (its input, the base, is cached)
    head_b = tmp_path / "recipes/demo/head_b.yaml"
    head_b.write_text(head_b.read_text() + "# edited\n")
    PrerequisiteChain(seed=1, reuse=True).overrides(final)
    assert [stem for stem, _, _ in fits[6:]] == ["head_b"]
    # other code refits everything
    monkeypatch.setattr(reproduce, "_code_identity", lambda: "commit-b")
    PrerequisiteChain(seed=1, reuse=True).overrides(final)
    assert [stem for stem, _, _ in fits[7:]] == ["base", "head_a", "head_b"]


def test_without_reuse_every_run_fits_again(tmp_path, fits):
    final = _chain(tmp_path)
    PrerequisiteChain(seed=1).overrides(final)
    PrerequisiteChain(seed=1).overrides(final)
    assert len(fits) == 6
    assert not (tmp_path / reproduce.PREREQUISITE_CACHE).exists()


def _record(seed: int, score: float, **changes) -> dict:
    config = (  # as LightningCLI dumps it: under the subcommand
        f"fit:\n  seed_everything: {seed}\n"
        f"  model:\n    base: {{path: runs/reproduce/prerequisites/base-seed{seed}-ab/last.ckpt}}\n"
    )
    record = {
        "recipe": "recipes/demo/final.yaml",
        "paper": "demo",
        "seeds": [seed],
        "metrics": {"eval/score": {"mean": score, "std": 0.0, "n": 1}},
        "per_seed": [{"eval/score": score}],
        "scale": "tiny",
        "command": f"python -m zoo reproduce recipes/demo/final.yaml --seed-list {seed}",
        "config": config,
        "commit": "abc",
        "dirty": False,
        "versions": {"torch": "2"},
    }
    return {**record, **changes}


def test_records_of_separate_seeds_merge_into_one_mean_and_std():
    merged = reproduce.merge_records([_record(1, 10.0), _record(2, 20.0), _record(3, 60.0)])
    assert merged["seeds"] == [1, 2, 3]
    assert merged["per_seed"] == [{"eval/score": 10.0}, {"eval/score": 20.0}, {"eval/score": 60.0}]
    stats = merged["metrics"]["eval/score"]
    assert stats["mean"] == pytest.approx(30.0)
    assert stats["std"] == pytest.approx(26.457513, rel=1e-6)  # sample std of 10, 20, 60
    assert merged["command"].count("--seed-list") == 3


@pytest.mark.parametrize(
    "other, message",
    [
        (_record(2, 1.0, commit="def"), "commit"),
        (_record(1, 1.0), "repeat seeds"),
        (
            _record(2, 1.0, config="fit:\n  seed_everything: 2\n  model: {lr: 1}\n"),
            "different settings",
        ),
        (_record(2, 1.0, sweep=[]), "sweeps"),
        (_record(2, 1.0, overrides=["--data.init_args.labelled_fraction", "0.2"]), "overrides"),
    ],
)
def test_records_that_are_not_one_run_are_not_merged(other, message):
    with pytest.raises(ValueError, match=message):
        reproduce.merge_records([_record(1, 1.0), other])


def test_each_fit_keeps_its_own_checkpoint_when_runs_share_a_recipe_folder(tmp_path, fits):
    """Seeds run as parallel processes from one working folder share the recipe's
    checkpoint folder; each chain must pass on its own fit's weights, not the last writer's."""
    final = _recipe(tmp_path, "final", "model.base.path = recipes/demo/base.yaml")
    _recipe(tmp_path, "base")
    seed0, seed1 = PrerequisiteChain(seed=0), PrerequisiteChain(seed=1)
    path0 = json.loads(seed0.overrides(final)[0].partition("=")[2])["path"]
    path1 = json.loads(seed1.overrides(final)[0].partition("=")[2])["path"]  # overwrites last.ckpt
    assert (tmp_path / "runs/base/last.ckpt").read_text() == "base seed 1 fit 2"
    assert Path(path0).read_text() == "base seed 0 fit 1"  # still seed 0's own weights
    assert Path(path1).read_text() == "base seed 1 fit 2" and path0 != path1
