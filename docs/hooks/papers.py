"""MkDocs hook: one page per paper, rendered at build time by :func:`zoo.docs.paper_pages`.

The pages exist only in the build (nothing generated is committed), and the ``Papers`` entry
of the nav expands to an overview plus one entry per paper found under ``recipes/``, so a new
paper appears on the site without editing ``mkdocs.yml``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# The site documents this tree: import its `zoo`, whatever else is installed (mkdocstrings
# reads the same tree through `paths: ["."]`).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zoo.docs import paper_pages  # noqa: E402
from zoo.recipe_index import papers  # noqa: E402

NAV_TITLE = "Papers"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    entries: list[Any] = [{"Overview": "papers/index.md"}]
    entries += [{paper.slug: f"papers/{paper.slug}.md"} for paper in papers()]
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and NAV_TITLE in item:
            config.nav[i] = {NAV_TITLE: entries}
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, text in paper_pages().items():
        files.append(File.generated(config, path, content=text))
    return files
