"""The documentation site builds in strict mode from the docstrings and the metafiles, a broken
reference fails the build, and the contributor documents stand on their own.

mkdocs is imported at module level on purpose: the ``test`` extra installs it, so a missing
mkdocs is an error here, not a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mkdocs  # noqa: F401  (fails, not skips, when the docs extra is missing)
import mkdocstrings  # noqa: F401
import pytest
import yaml

from zoo.docs import (
    docstring_to_markdown,
    paper_classes,
    paper_pages,
    recipe_header,
    render_paper_page,
)
from zoo.recipe_index import get_paper, papers

ROOT = Path(__file__).resolve().parents[2]

# One object per core page the site must document (issue 10: data builders / readers /
# collate, the datamodules, optim, protocols, eval, hub + architectures, EMA / LoRA / freeze,
# preprocess): its anchor is in the built HTML only if mkdocstrings found and rendered it.
CORE_OBJECTS = {
    "api/data": [
        "zoo.data.builders.ImageTextBuilder",
        "zoo.data.samples.SkipReplaceDataset",
        "zoo.data.collate.Collator",
    ],
    "api/datamodules": [
        "zoo.datamodule.ZooDataModule",
        "zoo.data.image_text_datamodule.ImageTextDataModule",
        "zoo.data.labelled_datamodule.LabelledImageDataModule",
    ],
    "api/optim": ["zoo.optim.spec.OptimSpec", "zoo.optim.spec.merge_onto"],
    "api/protocols": ["zoo.protocols.DualEncoderProtocols", "zoo.protocols.ProtocolUnavailable"],
    "api/eval": ["zoo.eval.callbacks.ZeroShotEval", "zoo.eval.linear_probe.linear_probe"],
    "api/hub": [
        "zoo.hub.loader.load",
        "zoo.hub.architectures.register_architecture",
        "zoo.hub.architectures.Architecture",
    ],
    "api/components": ["zoo.ema.EMATeacher", "zoo.lora.apply_lora", "zoo.freeze.FrozenTower"],
    "api/preprocess": ["zoo.preprocess.PreprocessSpec"],
}


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    before = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*"))
    build = _mkdocs_build(ROOT / "mkdocs.yml", out)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    after = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*"))
    # paper pages exist only in the build: nothing generated lands in docs/
    assert after == before
    return out


def _html(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text()


def test_strict_build_documents_the_core_api(site: Path):
    for page, objects in CORE_OBJECTS.items():
        html = _html(site, page)
        for obj in objects:
            assert f'id="{obj}"' in html, f"{obj} is not rendered on {page}"


def test_every_paper_has_a_page_with_its_numbers_and_classes(site: Path):
    index = _html(site, "papers")
    for paper in papers():
        html = _html(site, f"papers/{paper.slug}")
        assert f'href="{paper.slug}/"' in index
        meta = paper.metafile
        assert meta["paper"]["title"].split(":")[0] in html
        cells = set(re.findall(r"<td>([^<]*)</td>", html))
        text = re.sub(r"<[^>]+>", "", html)
        for row in meta.get("reported") or []:
            if row.get("claim") is None:
                assert str(row["value"]) in cells, (paper.slug, row)
            else:  # a paper with no checkable number: its claim is on the page
                assert row["claim"].split(" ")[0] in text and row["source"] in text, (
                    paper.slug,
                    row,
                )
        for row in meta.get("reproduced") or []:
            assert f"{row['mean']:.2f} ± {row['std']:.2f}" in cells, (paper.slug, row)
        model_cls, data_cls = paper_classes(paper)
        assert f'id="{model_cls}"' in html and f'id="{data_cls}"' in html
        for recipe in paper.recipes:
            assert f"recipes/{paper.slug}/{recipe.name}" in html


def test_contributing_page_is_contributing_md(site: Path):
    text = re.sub(r"<[^>]+>", "", _html(site, "contributing")).replace("&amp;", "&")
    for heading in re.findall(r"^#+ (.+)$", (ROOT / "CONTRIBUTING.md").read_text(), re.M):
        assert heading.replace("`", "") in text, heading


def _mini_site(tmp_path: Path, page: str, plugins: str) -> subprocess.CompletedProcess:
    (tmp_path / "docs").mkdir(parents=True)
    (tmp_path / "docs" / "index.md").write_text(page)
    (tmp_path / "mkdocs.yml").write_text(
        f"site_name: t\ntheme: {{name: mkdocs}}\nplugins: {plugins}\n"
    )
    return _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")


def test_strict_build_fails_on_a_missing_object(tmp_path: Path):
    plugins = f'[{{mkdocstrings: {{handlers: {{python: {{paths: ["{ROOT}"]}}}}}}}}]'
    good = _mini_site(tmp_path / "good", "# t\n\n::: zoo.preprocess.PreprocessSpec\n", plugins)
    assert good.returncode == 0, good.stderr[-2000:]
    bad = _mini_site(tmp_path / "bad", "# t\n\n::: zoo.preprocess.NoSuchSpec\n", plugins)
    assert bad.returncode != 0 and "NoSuchSpec" in bad.stderr


def test_strict_build_fails_on_a_broken_link(tmp_path: Path):
    bad = _mini_site(tmp_path, "# t\n\nSee [the design](design.md).\n", "[]")
    assert bad.returncode != 0 and "design.md" in bad.stderr


def test_paper_page_is_rendered_from_metafile_recipes_and_docstring():
    slip = get_paper("slip")
    page = render_paper_page(slip)
    # the module docstring's equation, with Sphinx roles turned into code spans
    assert "L = L_CLIP(ẑ_I, ẑ_T) + c · L_SSL(q_1, q_2)" in page
    assert ":class:" not in page and "`zoo.heads.norm.GlobalBatchNorm1d`" in page
    # a reported row as a table row, with the recipe it names
    assert (
        "| YFCC15M ViT-B/16 25 ep | ImageNet-1k | zero-shot top-1 | 42.8 | `vit_b16_yfcc15m.yaml` |"
        in page
    )
    # each recipe's header comment, verbatim without its '# '
    first = (slip.folder / "tiny.yaml").read_text().splitlines()[0]
    assert first.removeprefix("# ") in recipe_header(slip.folder / "tiny.yaml").splitlines()[0]
    assert recipe_header(slip.folder / "tiny.yaml") in page
    assert paper_classes(slip) == ("lightning_modules.slip.SLIP", "datamodules.slip.SLIPDataModule")
    assert set(paper_pages()) == {"papers/index.md"} | {f"papers/{p.slug}.md" for p in papers()}


def test_sphinx_roles_become_code_spans():
    text = "Uses :class:`~zoo.heads.MLPSpec`, :func:`zoo.losses.nt_xent` and ``x``."
    assert (
        docstring_to_markdown(text) == "Uses `zoo.heads.MLPSpec`, `zoo.losses.nt_xent` and ``x``."
    )


def _contributor_files() -> list[Path]:
    files = [ROOT / "CONTRIBUTING.md", ROOT / "README.md", ROOT / "mkdocs.yml"]
    files += [p for d in ("docs", ".github") for p in (ROOT / d).rglob("*") if p.is_file()]
    return files


def test_contributor_documents_point_nowhere_outside_the_repository():
    for path in _contributor_files():
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path


def test_contributing_walks_through_new_check_reproduce():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    steps = [text.index(f"python -m zoo {verb} ") for verb in ("new", "check", "reproduce")]
    assert steps == sorted(steps)
    assert "## The contracts a paper builds on" in text
    # every zoo verb the contributor documents is one the command line knows
    from zoo.cli import LIGHTNING_VERBS, USAGE

    verbs = set(re.findall(r"python -m zoo ([a-z]+)", text))
    known = set(LIGHTNING_VERBS) | set(re.findall(r"^  ([a-z]+)\b", USAGE, re.M))
    assert verbs <= known, verbs - known


def test_issue_template_front_matter_and_milestones():
    issue = (ROOT / ".github" / "ISSUE_TEMPLATE" / "new_paper.md").read_text()
    front = yaml.safe_load(issue.split("---")[1])
    assert {"name", "about", "title"} <= set(front)
    pr = (ROOT / ".github" / "PULL_REQUEST_TEMPLATE.md").read_text()
    for text in (issue, pr):
        milestones = re.findall(r"^### (Milestone \d): ", text, re.M)
        assert milestones == ["Milestone 1", "Milestone 2", "Milestone 3"]
        assert "zoo reproduce" in text and "zoo check" in text
