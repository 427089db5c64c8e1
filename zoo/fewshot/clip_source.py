"""Where the frozen CLIP of a few-shot method comes from.

:class:`CLIPSource` names the weights: ``path`` plus ``format`` (``zoo``: a model package
written by ``zoo export``, by installed name, ``local-dir:PATH`` or folder; further formats
are registered in :data:`LOADERS`), or ``encoder`` alone (a
:class:`~zoo.backbones.DualEncoderSpec` built with random weights from ``seed``: tests and
benchmarks). :func:`load_clip` returns the encoder, the preprocessing it expects (``None``
when the source does not say) and the sha256 that identifies its weights: the feature cache
keys on it and an exported adapted model records it, so a changed backbone is never mixed
up with the one a result came from. ``sha256`` in the source, when set, must match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.backbones import DualEncoder, DualEncoderSpec, build_dual_encoder
from zoo.preprocess import PreprocessSpec


@dataclass
class CLIPSource:
    """The frozen CLIP a few-shot method adapts.

    - ``path``: the weights (see ``format``); ``None`` builds ``encoder`` with random weights;
    - ``format``: ``auto`` (from the path), ``zoo`` (model package: installed name,
      ``local-dir:PATH`` or folder), and the converter formats in :data:`LOADERS`;
    - ``encoder``: the architecture when ``path`` is unset (random init from ``seed``);
    - ``sha256``: expected weights digest; a mismatch is refused;
    - ``trust_pickle``: allow pickled state dicts (never for files you did not make).
    """

    path: str | None = None
    format: str = "auto"
    encoder: DualEncoderSpec | None = None
    seed: int = 0
    sha256: str | None = None
    trust_pickle: bool = False


@dataclass
class LoadedCLIP:
    encoder: DualEncoder
    preprocess: PreprocessSpec | None
    sha256: str


class WeightsMismatchError(RuntimeError):
    """The weights found differ from the ``sha256`` the recipe pinned."""


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, sorted by name):
    the identity of weights that do not come from a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_random(source: CLIPSource) -> LoadedCLIP:
    from zoo.specs import to_spec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        encoder = build_dual_encoder(to_spec(DualEncoderSpec, source.encoder))
    return LoadedCLIP(encoder, None, state_sha256(encoder))


def _load_zoo(source: CLIPSource) -> LoadedCLIP:
    from zoo.hub.loader import load
    from zoo.hub.registry import find_model_folder

    assert source.path is not None
    path = source.path
    if ":" not in path and Path(path).expanduser().exists():
        path = f"local-dir:{find_model_folder(path)}"
    model = load(path, trust_pickle=source.trust_pickle)
    encoder = model.encoder
    if not isinstance(encoder, DualEncoder):
        raise TypeError(
            f"{source.path} holds a {model.config['architecture']['type']!r} model; a few-shot "
            "method needs a dual encoder (CLIP-like image and text towers)"
        )
    return LoadedCLIP(encoder, model.preprocess, str(model.config["weights"]["sha256"]))


#: format name -> loader. Converter formats (Hugging Face CLIP folders, OpenAI / open_clip
#: state dicts) register here too.
LOADERS: dict[str, Callable[[CLIPSource], LoadedCLIP]] = {"zoo": _load_zoo}


def detect_source_format(path: str) -> str:
    """``zoo`` for model packages (installed names, ``local-dir:``, folders with a
    ``config.json`` of ``zoo export``), else the converters' guess."""
    if path.startswith(("local-dir:", "hf-hub:")):
        return "zoo"
    p = Path(path).expanduser()
    if p.is_dir():
        from zoo.hub.config import CONFIG_FILE

        if (p / CONFIG_FILE).is_file() or any(p.glob(f"zoo_model_*/{CONFIG_FILE}")):
            return "zoo"
        return "hf-clip"
    if p.is_file():
        return "openai"
    return "zoo"  # an installed package name


def load_clip(source: CLIPSource | dict[str, Any] | None) -> LoadedCLIP:
    """The frozen CLIP ``source`` names (see :class:`CLIPSource`), in eval mode."""
    from zoo.specs import to_spec

    source = to_spec(CLIPSource, source)
    if source.path is None:
        if source.encoder is None:
            raise ValueError(
                "model.clip needs a `path` to pretrained weights (or, for tests, an `encoder` "
                "spec to build with random weights)"
            )
        loaded = _load_random(source)
    else:
        fmt = detect_source_format(source.path) if source.format == "auto" else source.format
        if fmt not in LOADERS:
            raise ValueError(f"model.clip.format {fmt!r} is unknown; known: {sorted(LOADERS)}")
        loaded = LOADERS[fmt](source)
    if source.sha256 and source.sha256 != loaded.sha256:
        raise WeightsMismatchError(
            f"model.clip weights have sha256 {loaded.sha256}, but the recipe pins "
            f"{source.sha256}: a different backbone than the one the recipe was written for"
        )
    loaded.encoder.eval()
    return loaded


def projection_affine(encoder: DualEncoder) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of the image projection, ``f = x Wᵀ + b`` with x the pre-projection
    feature: ``W`` is ``(D_embed, D_trunk)``, ``b`` ``None`` for a bias-free projection
    (ViT CLIP: ``x @ proj``). SgVA-CLIP recovers x from f through ``pinv(Wᵀ)``."""
    return encoder.image_projection.detach().t(), None
