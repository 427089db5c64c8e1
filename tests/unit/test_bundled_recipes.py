"""Recipe names resolve to files (a real file always wins), and ``zoo recipes copy`` writes an
editable copy without ever overwriting one silently (issue 10, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import zoo.recipe_index as recipe_index
from tests.cli_helpers import fail
from zoo.cli import main
from zoo.recipe_args import resolve_config_args, resolve_reproduce_args
from zoo.recipe_index import RecipeNotFoundError, copy_recipes, recipes_dir, resolve_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy_recipes(tmp_path, monkeypatch) -> Path:
    """A recipes folder with one paper, ``toy``, selected through ``$VL_ZOO_RECIPES``."""
    folder = tmp_path / "bundled" / "toy"
    folder.mkdir(parents=True)
    (folder / "metafile.yaml").write_text("paper: {title: Toy}\n")
    (folder / "tiny.yaml").write_text("trainer: {max_epochs: 40}\n")
    (folder / "big.yaml").write_text("trainer: {max_epochs: 100}\n")
    (folder / "README.md").write_text("# Toy\n")
    monkeypatch.setenv("VL_ZOO_RECIPES", str(folder.parent))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a working directory outside the tree, with no recipes
    return folder


def test_recipes_dir_order_env_then_bundled_then_source_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("VL_ZOO_RECIPES", raising=False)
    monkeypatch.chdir(tmp_path)
    assert recipes_dir() == ROOT / "recipes"  # a checkout: no bundled copy inside zoo/
    bundled = tmp_path / "_recipes"
    bundled.mkdir()
    monkeypatch.setattr(recipe_index, "BUNDLED_RECIPES", bundled)
    assert recipes_dir() == bundled  # an installed wheel
    monkeypatch.setenv("VL_ZOO_RECIPES", str(tmp_path))
    assert recipes_dir() == tmp_path  # the environment variable first


def test_the_three_spellings_of_a_name_resolve_to_the_same_file(toy_recipes):
    for name in ("toy/tiny", "toy/tiny.yaml", "recipes/toy/tiny.yaml"):
        assert resolve_recipe(name) == toy_recipes / "tiny.yaml", name


def test_a_real_file_wins_over_a_bundled_recipe(toy_recipes):
    mine = Path("toy/tiny.yaml")
    mine.parent.mkdir()
    mine.write_text("trainer: {max_epochs: 3}\n")
    assert resolve_recipe("toy/tiny.yaml") == mine
    assert resolve_recipe("toy/tiny") == toy_recipes / "tiny.yaml"  # no file of that name


def test_unknown_names_and_the_metafile_fail_listing_the_known_recipes(toy_recipes):
    for name in ("toy/tiy", "toy/metafile", "nope/tiny.yaml", "toy", "/abs/toy/tiny.yaml"):
        with pytest.raises(RecipeNotFoundError) as err:
            resolve_recipe(name)
        assert str(err.value).endswith("known recipes: toy/big, toy/tiny"), name


def test_config_options_are_resolved_and_inline_yaml_passes_through(toy_recipes):
    tiny = str(toy_recipes / "tiny.yaml")
    args = ["--config", "toy/tiny", "--trainer.max_epochs", "1"]
    assert resolve_config_args(args) == ["--config", tiny, "--trainer.max_epochs", "1"]
    assert resolve_config_args(["--config=toy/tiny"]) == [f"--config={tiny}"]
    assert resolve_config_args(["-c", "recipes/toy/tiny.yaml"]) == ["-c", tiny]
    inline = ["--config", "{trainer: {max_epochs: 1}}", "--data.root", "toy/tiny"]
    assert resolve_config_args(inline) == inline
    with pytest.raises(RecipeNotFoundError, match="known recipes: toy/big, toy/tiny"):
        resolve_config_args(["--config", "toy/tiy.yaml"])


def test_reproduce_resolves_only_its_recipe_argument(toy_recipes):
    tiny = str(toy_recipes / "tiny.yaml")
    args = ["--out", "toy/tiny", "--seed-list", "0", "1", "toy/tiny", "--", "-c", "toy/big"]
    assert resolve_reproduce_args(args) == [
        *["--out", "toy/tiny", "--seed-list", "0", "1", tiny, "--"],
        *["-c", str(toy_recipes / "big.yaml")],
    ]


def test_fit_with_an_unknown_recipe_exits_with_the_known_ones(toy_recipes, capsys):
    err = fail(["fit", "--config", "toy/tiy"], capsys)
    assert "recipe not found: toy/tiy" in err and "toy/tiny" in err


def test_fit_reads_the_bundled_recipe_unless_a_file_of_that_name_exists(
    tmp_path, monkeypatch, capsys
):
    """Through the real CLI: from a directory without recipes, ``slip/tiny`` is the shipped
    recipe (the paper's 40 epochs); a user's ``slip/tiny.yaml`` there replaces it."""
    monkeypatch.delenv("VL_ZOO_RECIPES", raising=False)
    monkeypatch.chdir(tmp_path)

    def max_epochs(config: str) -> int:
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", config, "--print_config"])
        assert done.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"]

    assert max_epochs("slip/tiny") == 40
    mine = tmp_path / "slip" / "tiny.yaml"
    mine.parent.mkdir()
    text = (ROOT / "recipes/slip/tiny.yaml").read_text()
    mine.write_text(text.replace("max_epochs: 40", "max_epochs: 3"))
    assert max_epochs("slip/tiny.yaml") == 3


def test_copy_writes_identical_files_and_never_overwrites_without_force(tmp_path, capsys):
    dest = tmp_path / "my-recipes"
    assert main(["recipes", "copy", "slip", str(dest)]) == 0
    source = ROOT / "recipes" / "slip"
    expected = sorted(p.name for p in source.iterdir() if p.suffix in (".yaml", ".md"))
    assert sorted(p.name for p in (dest / "slip").iterdir()) == expected
    for name in expected:
        assert (dest / "slip" / name).read_bytes() == (source / name).read_bytes(), name
    edited = dest / "slip" / "tiny.yaml"
    edited.write_text("my edits\n")
    err = fail(["recipes", "copy", "slip", str(dest)], capsys)
    assert "refusing to overwrite" in err and "--force" in err
    assert edited.read_text() == "my edits\n"  # nothing written, not even the other files
    assert main(["recipes", "copy", "--force", "slip", str(dest)]) == 0
    assert edited.read_bytes() == (source / "tiny.yaml").read_bytes()


def test_copy_of_one_recipe_and_of_all_papers(tmp_path):
    written = copy_recipes(["clip/tiny"], tmp_path / "one")
    assert written == [tmp_path / "one" / "clip" / "tiny.yaml"]
    assert main(["recipes", "copy", "--all", str(tmp_path / "all")]) == 0
    papers = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/metafile.yaml"))
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == papers


def test_info_accepts_a_recipe_and_shows_its_paper(capsys):
    assert main(["info", "slip"]) == 0
    by_slug = capsys.readouterr().out
    for spelling in ("slip/tiny", "recipes/slip/tiny.yaml"):
        assert main(["info", spelling]) == 0
        assert capsys.readouterr().out == by_slug, spelling


def test_copy_takes_the_known_recipe_not_a_file_of_that_name_here(toy_recipes):
    mine = Path("toy/tiny.yaml")
    mine.parent.mkdir()
    mine.write_text("trainer: {max_epochs: 3}\n")
    (written,) = copy_recipes(["toy/tiny"], Path("out"))
    assert written.read_bytes() == (toy_recipes / "tiny.yaml").read_bytes()
    with pytest.raises(FileExistsError):
        copy_recipes(["toy"], Path("."))  # ./toy/tiny.yaml exists: nothing is written
    assert not Path("toy/big.yaml").exists() and mine.read_text().endswith("3}\n")


def test_recipes_list_and_show(toy_recipes, capsys):
    assert main(["recipes", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"# recipes folder: {toy_recipes.parent}",
        "toy/big",
        "toy/tiny",
    ]
    assert main(["recipes", "show", "toy/big"]) == 0
    assert capsys.readouterr().out == "trainer: {max_epochs: 100}\n"
