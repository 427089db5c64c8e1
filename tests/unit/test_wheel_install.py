"""A wheel install works outside the source tree (issue 10, item 1).

Builds the wheel from a copy of the tree (so the checkout gets no ``build/`` or egg-info and
parallel builds do not race), installs it into a fresh ``--target`` folder and, from a
directory outside the tree with only that folder on ``PYTHONPATH``, runs ``zoo list``,
``zoo info slip``, ``zoo recipes copy`` and a ``fast_dev_run`` fit of the bundled
``slip/tiny`` recipe. Offline: ``--no-build-isolation`` uses the installed setuptools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# what the build reads: the project files and the folders setuptools packages or copies
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
BUILD_FOLDERS = ("zoo", "lightning_modules", "datamodules", "recipes")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``--target`` folder the wheel was installed into."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_recipes")
    for name in BUILD_FOLDERS:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), "."]
    subprocess.run(build, cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("vl_zoo-*.whl")
    site = tmp / "site"
    install = [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return site


def _zoo(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VL_ZOO_RECIPES"}
    env |= {"PYTHONPATH": str(site), "VL_ZOO_CACHE": str(cwd / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_ships_every_recipe_and_data_file_unchanged(installed):
    """Recipes as ``zoo/_recipes/<paper>/``; every non-Python file inside ``zoo/`` (encoder
    presets, ``zoo new`` templates) at its own path."""
    source = ROOT / "recipes"
    recipes = [*source.glob("*/*.yaml"), *source.glob("*/README.md")]
    assert recipes
    for path in recipes:
        rel = path.relative_to(source)
        assert (installed / "zoo" / "_recipes" / rel).read_bytes() == path.read_bytes(), rel
    data = [
        p
        for p in (ROOT / "zoo").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert any(p.parent.name == "presets" for p in data)
    for path in data:
        rel = path.relative_to(ROOT)
        assert (installed / rel).read_bytes() == path.read_bytes(), rel


def test_list_info_copy_and_a_tiny_fit_from_outside_the_tree(installed, tmp_path):
    where = _zoo(installed, tmp_path, "recipes", "list")
    assert where.returncode == 0, where.stderr
    # the installed copy is what runs, not the checkout
    probe = subprocess.run(
        [sys.executable, "-c", "import zoo, lightning_modules; print(zoo.__file__)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(installed)
    assert where.stdout.splitlines()[0] == f"# recipes folder: {installed / 'zoo' / '_recipes'}"

    listed = _zoo(installed, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    expected = [f"{p.parent.name}/{p.name}" for p in sorted((ROOT / "recipes").glob("*/*.yaml"))]
    expected = [name for name in expected if not name.endswith("/metafile.yaml")]
    assert [line.strip() for line in listed.stdout.splitlines() if line.startswith("  ")] == (
        expected
    )

    info = _zoo(installed, tmp_path, "info", "slip")
    assert info.returncode == 0, info.stderr
    meta = yaml.safe_load((ROOT / "recipes/slip/metafile.yaml").read_text())
    assert info.stdout.startswith(meta["paper"]["title"])
    for row in meta["reported"]:
        assert str(row["value"]) in info.stdout, row

    copied = _zoo(installed, tmp_path, "recipes", "copy", "slip", "my-recipes")
    assert copied.returncode == 0, copied.stderr
    mine = tmp_path / "my-recipes" / "slip" / "tiny.yaml"
    assert mine.read_bytes() == (ROOT / "recipes/slip/tiny.yaml").read_bytes()
    again = _zoo(installed, tmp_path, "recipes", "copy", "slip", "my-recipes")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    root = tmp_path / "runs"
    fit = _zoo(
        installed,
        tmp_path,
        *["fit", "--config", "slip/tiny", "--trainer.fast_dev_run=1"],
        f"--trainer.default_root_dir={root}",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "zero-shot top-1:" in fit.stdout + fit.stderr
    assert "linear probe (trunk) top-1:" in fit.stdout + fit.stderr
