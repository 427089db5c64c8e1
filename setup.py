"""Build hook: ship ``recipes/`` inside the wheel as ``zoo/_recipes/``.

Everything else about the build is declared in ``pyproject.toml``. setuptools cannot map a
folder outside the packages (``recipes/``) as package data while packages are found
automatically, so ``build_py`` copies it, as mmpretrain's ``setup.py`` copies its configs into
``mmpretrain/.mim/`` for ``mim``. An editable install copies nothing: ``zoo.recipe_index``
then reads ``recipes/`` from the source tree, exactly as a checkout does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# the files of recipes/<paper>/ that ship (see zoo.recipe_index.PAPER_FILE_PATTERNS)
PATTERNS = ("*.yaml", "README.md")


class BuildPyWithRecipes(build_py):
    """``build_py`` that also copies ``recipes/<paper>/{*.yaml,README.md}`` to
    ``<build_lib>/zoo/_recipes/<paper>/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "zoo" / "_recipes"
        shutil.rmtree(target, ignore_errors=True)  # no stale recipe from an earlier build
        for pattern in PATTERNS:
            for source in sorted((ROOT / "recipes").glob(f"*/{pattern}")):
                dest = target / source.relative_to(ROOT / "recipes")
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(source), str(dest))


setup(cmdclass={"build_py": BuildPyWithRecipes})
