"""Zoo model package for ``slip-vit-tiny-digits`` (vl-zoo): the model folder is this package's data.

Load it with ``zoo.load("slip-vit-tiny-digits")`` (entry point group ``zoo.models``).
"""

from pathlib import Path

NAME = "slip-vit-tiny-digits"


def model_dir() -> str:
    """The installed model folder (config.json, model.safetensors, README.md, ...)."""
    return str(Path(__file__).resolve().parent)
