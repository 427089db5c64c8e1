"""Model folders as pip-installable packages (setuptools source tree, wheel via ``pip wheel``).

An export folder ``DIR`` is always a package source tree::

    DIR/pyproject.toml          distribution zoo-model-<name>, entry point zoo.models
    DIR/README.md               copy of the model card
    DIR/zoo_model_<name>/       the model folder, shipped as package data
        __init__.py             model_dir() → this folder

so ``pip install DIR`` (offline: ``--no-build-isolation``) and ``zoo.load("local-dir:DIR")``
both work. ``<name>`` has ``-`` and ``.`` replaced by ``_`` in the import name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zoo.hub.registry import ENTRY_POINT_GROUP, PACKAGE_PREFIX
from zoo.hub.security import check_name

PACKAGE_DATA = ["*.json", "*.safetensors", "*.sha256", "*.md", "*.yaml", "tokenizer/*"]
_BUILD_LEFTOVERS = ("build", "dist", "*.egg-info")

_INIT_TEMPLATE = '''"""Zoo model package for ``{name}`` (vl-zoo): the model folder is this package's data.

Load it with ``zoo.load("{name}")`` (entry point group ``{group}``).
"""

from pathlib import Path

NAME = "{name}"


def model_dir() -> str:
    """The installed model folder (config.json, model.safetensors, README.md, ...)."""
    return str(Path(__file__).resolve().parent)
'''

_PYPROJECT_TEMPLATE = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
description = "vl-zoo model {name}: weights, preprocessing and tokenizer (load with zoo.load)"
readme = "README.md"
requires-python = ">=3.10"

[project.entry-points."{group}"]
"{name}" = "{package}:model_dir"

[tool.setuptools]
packages = ["{package}"]
include-package-data = false

[tool.setuptools.package-data]
{package} = {data}
"""


def import_name(name: str) -> str:
    """``tiny-clip.v1`` → ``zoo_model_tiny_clip_v1``."""
    return PACKAGE_PREFIX + re.sub(r"[-.]", "_", check_name(name))


def distribution_name(name: str) -> str:
    return f"zoo-model-{check_name(name)}"


def write_package_files(root: Path, name: str, version: str, card: str) -> Path:
    """Write ``pyproject.toml``, ``README.md``, ``.gitignore`` and ``__init__.py`` around the
    model folder ``root / import_name(name)``; returns the model folder."""
    package = import_name(name)
    model_dir = root / package
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "__init__.py").write_text(
        _INIT_TEMPLATE.format(name=name, group=ENTRY_POINT_GROUP)
    )
    data = "[" + ", ".join(f'"{p}"' for p in PACKAGE_DATA) + "]"
    (root / "pyproject.toml").write_text(
        _PYPROJECT_TEMPLATE.format(
            dist=distribution_name(name),
            version=version,
            name=name,
            group=ENTRY_POINT_GROUP,
            package=package,
            data=data,
        )
    )
    (root / "README.md").write_text(card, encoding="utf-8")
    (root / ".gitignore").write_text("\n".join(f"/{p}" for p in _BUILD_LEFTOVERS) + "\n")
    return model_dir


def build_wheel(source: Path, wheel_dir: Path) -> Path:
    """Build the wheel of a package source tree with ``pip wheel --no-deps
    --no-build-isolation --no-index`` (the installed setuptools, no network), from a clean
    copy so ``source`` gets no build leftovers. Returns the wheel's path."""
    wheel_dir = Path(wheel_dir).resolve()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(source, src, ignore=shutil.ignore_patterns(*_BUILD_LEFTOVERS))
        out = Path(tmp) / "wheels"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        cmd += ["--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip wheel failed for {source}:\n{result.stdout}{result.stderr}")
        wheels = list(out.glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip wheel wrote {len(wheels)} wheels for {source}")
        target = wheel_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target
