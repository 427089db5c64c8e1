"""``zoo new SLUG --family fewshot|ssl`` in a temporary copy of the project: the five parts
are written; ``zoo check`` fails on every part naming its placeholder (but the generated
module and datamodule import and the tiny recipe parses); the tiny recipe runs as generated
(``fast_dev_run``) and its evaluation reports the family's metrics (the adapted classifier
for fewshot; linear probe and kNN through the ``features`` protocol for ssl); the placeholder
test fails. One subprocess scaffolds, checks and fits both families (torch and Lightning are
imported once), so the copy's code runs, not the checkout's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import copy_project

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {"toy_fewshot": "fewshot", "toy_ssl": "ssl"}
#: What each family's tiny recipe reports at the end of fit.
METRICS = {
    "fewshot": {"eval/fewshot_top1"},
    "ssl": {"eval/linear_probe_top1", "eval/knn_top1"},
}
PARTS = (
    "lightning_modules/{slug}.py",
    "datamodules/{slug}.py",
    "recipes/{slug}/tiny.yaml",
    "recipes/{slug}/metafile.yaml",
    "tests/papers/test_{slug}.py",
)

SCRIPT = """
import json, sys, time
from pathlib import Path

import pytest

from zoo.check import check_paper
from zoo.lightning_cli import run_lightning_cli
from zoo.scaffold import new_paper


class Outcomes:  # the placeholder test's outcome, from pytest run in this process
    def __init__(self):
        self.reports = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            self.reports.append([report.outcome, str(report.longrepr)])


root, out = Path.cwd(), {}
for arg in sys.argv[1:]:
    slug, family = arg.split(":")
    start = time.perf_counter()
    written = [p.relative_to(root).as_posix() for p in new_paper(root, slug, family)]
    failures = check_paper(root, slug).failures
    checked = time.perf_counter()
    cli = run_lightning_cli(
        ["fit", "--config", f"recipes/{slug}/tiny.yaml", "--trainer.fast_dev_run", "1"]
    )
    metrics = {}
    for callback in cli.trainer.callbacks:
        metrics.update(getattr(callback, "results", {}) or {})
    fitted = time.perf_counter()
    outcomes = Outcomes()
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", f"tests/papers/test_{slug}.py"], plugins=[outcomes]
    )
    out[slug] = {
        "written": written,
        "failures": failures,
        "metrics": sorted(metrics),
        "tests": {"exit": int(code), "reports": outcomes.reports},
        "seconds": {"check": checked - start, "fit": fitted - checked},
    }
print("RESULT " + json.dumps(out))
"""


def _run(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1"}
    env.pop("VL_ZOO_RECIPES", None)  # the copy's recipes, not the checkout's
    return subprocess.run(
        [sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory) -> tuple[Path, dict]:
    copy = tmp_path_factory.mktemp("project")
    copy_project(copy, ["checkpoints/slip-vit-tiny-digits"])
    done = _run(copy, "-c", SCRIPT, *(f"{s}:{f}" for s, f in FAMILIES.items()))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    print({slug: r["seconds"] for slug, r in results.items()})
    return copy, results


@pytest.mark.parametrize("slug", sorted(FAMILIES))
def test_scaffold_runs_but_fails_check_and_its_placeholder_test(scaffolded, slug):
    _, results = scaffolded
    result = results[slug]
    assert sorted(result["written"]) == sorted(p.format(slug=slug) for p in PARTS)
    failures = result["failures"]
    # every part still carries a placeholder, and zoo check names each of them ...
    placeholder = {f.split(":", 1)[0] for f in failures if "ZOO-TODO" in f or "placeholder" in f}
    assert placeholder >= {p.format(slug=slug) for p in PARTS}, failures
    # ... yet the generated parts import and the tiny recipe parses through the CLI
    assert not [f for f in failures if "import error" in f or "make it parse" in f], failures
    # the tiny recipe ran and its evaluation reported the family's metrics
    assert METRICS[FAMILIES[slug]] <= set(result["metrics"]), result["metrics"]
    tests = result["tests"]
    assert tests["exit"] == pytest.ExitCode.TESTS_FAILED
    assert [outcome for outcome, _ in tests["reports"]] == ["failed"]
    assert "ZOO-TODO: replace with a faithfulness test" in tests["reports"][0][1]
