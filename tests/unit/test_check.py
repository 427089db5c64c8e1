"""``zoo check`` and ``zoo new``: the papers in the tree meet the contract; each missing or
placeholder part is reported as one line naming the file and what to add; a scaffold never
passes; slugs are validated and existing papers refused."""

import shutil
from pathlib import Path

import pytest

from zoo.check import PLACEHOLDER, check_paper, parse_recipes
from zoo.scaffold import class_name, families, new_paper, validate_slug

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("slug", ["clip", "slip"])
def test_papers_in_the_tree_meet_the_contract(slug):
    assert check_paper(ROOT, slug, parse_recipes=False).failures == []


def test_one_parser_parses_many_recipes_alike_in_workers(tmp_path):
    """``zoo check`` parses every recipe with one parser (in forked workers): a failed parse
    leaves nothing behind for the next recipe, and the workers answer as one process does."""
    good = ROOT / "recipes" / "clip" / "tiny.yaml"
    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text().replace("max_epochs: 40", "max_epoch: 40"))
    wrong = tmp_path / "wrong_type.yaml"
    wrong.write_text(good.read_text().replace("lr: 5.0e-4 ", "lr: fast "))
    recipes = [typo, good, wrong]
    alone = parse_recipes(recipes, jobs=1)
    assert alone[typo] == "error: Group 'trainer' does not accept option 'max_epoch'"
    assert alone[good] is None
    assert alone[wrong] is not None and "model" in alone[wrong]
    assert parse_recipes(recipes, jobs=2) == alone


def test_each_missing_part_is_one_line_naming_where(tmp_path):
    # a paper with only a metafile (no source on its number) and an unheaded paper recipe
    folder = tmp_path / "recipes" / "halfway"
    folder.mkdir(parents=True)
    (folder / "metafile.yaml").write_text(
        "paper: {title: Halfway}\n"
        "reported:\n- {dataset: d, metric: m, value: 1.0, recipe: big.yaml}\n"
    )
    (folder / "big.yaml").write_text("# Halfway, big setting\nseed_everything: 0\n")
    failures = check_paper(tmp_path, "halfway", parse_recipes=False).failures
    assert failures == [
        "recipes/halfway/metafile.yaml: reported.0.source: Field required (schema: zoo/ledger.py)",
        "lightning_modules/halfway.py: add the paper's ZooModule subclass "
        "(python -m zoo new scaffolds it)",
        "datamodules/halfway.py: add a ZooDataModule subclass that reads the paper's data format",
        "recipes/halfway/tiny.yaml: add a tiny recipe that trains on embedded data on 2 CPU "
        "cores in minutes",
        "recipes/halfway/big.yaml: add a '# Layout under data.root' header block, one "
        "'#   <path>: <format> <columns>' line per file the recipe reads",
        "recipes/halfway/README.md: generate it with `python -m zoo docs`",
        "tests/papers/test_halfway.py: add faithfulness tests of the method's defining properties",
    ]


def test_stale_readme_and_missing_reported_recipe(tmp_path):
    shutil.copytree(ROOT / "recipes" / "clip", tmp_path / "recipes" / "clip")
    readme = tmp_path / "recipes" / "clip" / "README.md"
    readme.write_text(readme.read_text() + "edited by hand\n")
    (tmp_path / "recipes" / "clip" / "vit_s16_yfcc15m.yaml").unlink()
    failures = check_paper(tmp_path, "clip", parse_recipes=False).failures
    assert "recipes/clip/README.md: stale: regenerate it with `python -m zoo docs`" in failures
    missing = [f for f in failures if "names vit_s16_yfcc15m.yaml" in f]
    assert len(missing) == 3  # zero-shot, linear-probe, fine-tuned: one line each
    assert missing[0].endswith("add recipes/clip/vit_s16_yfcc15m.yaml")


def test_scaffold_families():
    assert families() == ["contrastive", "fewshot", "ssl"]


def test_scaffold_writes_five_parts_and_never_passes(tmp_path):
    for folder in ("lightning_modules", "datamodules", "recipes", "tests/papers"):
        (tmp_path / folder).mkdir(parents=True)
    written = new_paper(tmp_path, "toy_method", "contrastive")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "datamodules/toy_method.py",
        "lightning_modules/toy_method.py",
        "recipes/toy_method/metafile.yaml",
        "recipes/toy_method/tiny.yaml",
        "tests/papers/test_toy_method.py",
    ]
    assert all(PLACEHOLDER in p.read_text() for p in written)
    module = (tmp_path / "lightning_modules/toy_method.py").read_text()
    assert "class ToyMethod(DualEncoderProtocols, ZooModule):" in module
    tiny = (tmp_path / "recipes/toy_method/tiny.yaml").read_text()
    assert "class_path: lightning_modules.toy_method.ToyMethod\n" in tiny
    assert "class_path: datamodules.toy_method.ToyMethodDataModule\n" in tiny
    failures = check_paper(tmp_path, "toy_method", parse_recipes=False).failures
    wheres = {
        line.split(":", 1)[0] for line in failures if PLACEHOLDER in line or "placeholder" in line
    }
    assert {
        "lightning_modules/toy_method.py",
        "datamodules/toy_method.py",
        "recipes/toy_method/tiny.yaml",
        "recipes/toy_method/metafile.yaml",
        "tests/papers/test_toy_method.py",
    } <= wheres
    with pytest.raises(ValueError, match="already exists"):
        new_paper(tmp_path, "toy_method", "contrastive")


@pytest.mark.parametrize("slug", ["Toy", "9lives", "a", "toy-method", "toy__x", "class", "zoo"])
def test_invalid_slugs_are_refused(slug, tmp_path):
    with pytest.raises(ValueError, match="invalid slug"):
        validate_slug(tmp_path, slug)


def test_existing_paper_is_refused_and_class_names():
    with pytest.raises(ValueError, match="paper 'clip' already exists"):
        validate_slug(ROOT, "clip")
    assert class_name("toy_method") == "ToyMethod"
    assert class_name("clip_rocket") == "ClipRocket"
