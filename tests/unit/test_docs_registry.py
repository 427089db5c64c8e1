"""The registry discovers papers from recipe folders; generated READMEs are up to date;
``zoo --help`` / ``zoo list`` / ``zoo info`` answer without importing torch."""

import subprocess
import sys
from pathlib import Path

import yaml

from zoo.docs import TABLE_END, TABLE_START, readme_path, render_papers_table, render_readme
from zoo.recipe_index import get_paper, papers

ROOT = Path(__file__).resolve().parents[2]


def test_every_paper_readme_is_generated_from_its_metafile():
    found = papers()
    assert {"clip", "slip"} <= {p.slug for p in found}
    for paper in found:
        assert readme_path(paper).read_text() == render_readme(paper), (
            f"run `python -m zoo docs` ({paper.slug})"
        )


def test_root_readme_papers_table_is_up_to_date():
    text = (ROOT / "README.md").read_text()
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == render_papers_table().strip(), "run `python -m zoo docs`"


def test_metafiles_have_sourced_reported_numbers():
    for paper in papers():
        meta = yaml.safe_load((paper.folder / "metafile.yaml").read_text())
        assert meta["paper"]["arxiv"]
        assert meta.get("reported") or meta.get("reported_unavailable"), paper.slug
        for row in meta.get("reported") or []:
            # a number, or (for a paper with no checkable number) a stated claim
            assert row["source"] and (
                isinstance(row.get("value"), (int, float)) or row.get("claim")
            )
            recipe = row["recipe"].split(" ")[0]
            assert (paper.folder / recipe).is_file(), f"{paper.slug}: {recipe} missing"
    slip = get_paper("slip").metafile["reported"]
    b16 = {r["metric"]: r["value"] for r in slip if r["setting"] == "YFCC15M ViT-B/16 25 ep"}
    assert b16["zero-shot top-1"] == 42.8 and b16["linear-probe top-1"] == 72.1


def _run_zoo(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys, runpy; sys.argv = ['zoo', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('zoo', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\nsys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT
    )


def test_help_list_info_do_not_import_torch():
    for args in (["--help"], ["list"], ["info", "slip"]):
        out = _run_zoo(*args)
        assert out.returncode == 0, out.stderr
        assert "HEAVY=\n" in out.stdout, (args, out.stdout[-200:])
    assert "recipes/slip/tiny.yaml" in _run_zoo("list").stdout
    info = _run_zoo("info", "slip").stdout
    assert "42.8" in info and "72.1" in info


def test_unknown_paper_and_command_fail_clearly():
    out = _run_zoo("info", "nope")
    assert out.returncode != 0 and "unknown paper 'nope'" in out.stderr
    out = _run_zoo("frobnicate")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_papers_table_shows_the_newest_plain_record_per_metric():
    from zoo.docs import _reproduced_summary

    def entry(mean, commit, command="python -m zoo reproduce recipes/x/tiny.yaml --seeds 3"):
        return {
            "recipe": "tiny.yaml",
            "metric": "eval/zeroshot_top1",
            "mean": mean,
            "std": 1.0,
            "seeds": [0, 1, 2],
            "commit": commit,
            "command": command,
        }

    entries = [
        entry(10.0, "aaaaaaa1"),
        entry(99.0, "ccccccc3", command="python -m zoo reproduce r --seeds 3 -- --x 1"),  # control
        entry(20.0, "bbbbbbb2"),
    ]
    assert (
        _reproduced_summary(entries) == "zeroshot_top1 20.0 ± 1.0 (tiny.yaml, 3 seeds, `bbbbbbb`)"
    )
    miou = {**entry(3.6, "ddddddd4"), "metric": "eval/zeroshot_seg_miou"}
    loss = {**entry(0.5, "eeeeeee5"), "metric": "train/loss"}
    assert _reproduced_summary([miou, loss]) == (
        "zeroshot_seg_miou 3.6 ± 1.0 (tiny.yaml, 3 seeds, `ddddddd`)"
    )
