"""Zoo model package for ``clip-vit-tiny-digits`` (vl-zoo): the model folder is this package's data.

Load it with ``zoo.load("clip-vit-tiny-digits")`` (entry point group ``zoo.models``).
"""

from pathlib import Path

NAME = "clip-vit-tiny-digits"


def model_dir() -> str:
    """The installed model folder (config.json, model.safetensors, README.md, ...)."""
    return str(Path(__file__).resolve().parent)
