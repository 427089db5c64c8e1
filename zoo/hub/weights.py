"""Model-folder weights: stable key prefixes, dtype casting, verified save and load.

Keys: the dual encoder's state dict under ``backbone.`` (exactly ``DualEncoder.state_dict()``
keys), every other trained module under ``head.<name>.`` (``head.ssl_head.layer1.weight``).
Loading reads the file once, checks its sha256 against ``config.json`` and the ``.sha256``
sidecar, and only then parses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.hub.config import digest_file_name
from zoo.hub.security import (
    UnsafeConfigError,
    check_weights_format,
    safe_child,
    sha256_file,
    verify_digest,
)

BACKBONE, HEAD = "backbone.", "head."
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``torch.float16`` → ``torch.float16`` (float32, float16, bfloat16)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def prefixed_state(encoder: nn.Module, heads: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """``backbone.*`` + ``head.<name>.*`` state of the encoder and heads."""
    state = {BACKBONE + k: v for k, v in encoder.state_dict().items()}
    for name, head in heads.items():
        state.update({f"{HEAD}{name}.{k}": v for k, v in head.state_dict().items()})
    return state


def split_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """Inverse of :func:`prefixed_state`: (backbone state, {head name: head state})."""
    backbone: dict[str, Tensor] = {}
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(BACKBONE):
            backbone[key[len(BACKBONE) :]] = value
        elif key.startswith(HEAD) and "." in key[len(HEAD) :]:
            name, rest = key[len(HEAD) :].split(".", 1)
            heads.setdefault(name, {})[rest] = value
        else:
            raise UnsafeConfigError(f"weight {key!r} has neither a backbone. nor a head. prefix")
    return backbone, heads


def cast_state(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Floating tensors cast to ``dtype`` (integer buffers kept), detached, contiguous, on
    CPU, each with its own storage (safetensors refuses shared tensors)."""
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous().clone()
    return out


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux
    ``/proc/self/status``; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def save_weights(path: Path, state: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """Write ``state`` as safetensors with ``metadata`` and its ``.sha256`` sidecar
    (``sha256sum`` format); returns the hex digest. The weights get the same mode as every
    other file of the folder: safetensors 0.8 writes through a 0600 temp file renamed into
    place, whatever the umask (huggingface/safetensors issue #782)."""
    from safetensors.torch import save_file

    save_file(dict(state), str(path), metadata={k: str(v) for k, v in metadata.items()})
    sort_metadata(path)
    os.chmod(path, new_file_mode())
    digest = sha256_file(path)
    path.with_name(digest_file_name(path.name)).write_text(f"{digest}  {path.name}\n")
    return digest


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted, in place.

    safetensors (0.8) keeps the metadata in a Rust ``HashMap`` and writes it in that map's
    random iteration order, so the same tensors and metadata would give other bytes, hence
    another sha256, on every export. The sorted header has the same keys and values, so the
    same length: only the header is rewritten, the tensor data is not touched."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:
            raise RuntimeError(f"{path}: the sorted safetensors header does not fit ({n} bytes)")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # safetensors pads its header with spaces


def load_weights(
    folder: Path, config: Mapping[str, Any], trust_pickle: bool = False
) -> dict[str, Tensor]:
    """The verified weights of a model folder (see the module docstring)."""
    spec = config["weights"]
    path = safe_child(folder, spec.get("file"), "weights.file")
    check_weights_format(path, trust_pickle)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    sidecar = path.with_name(digest_file_name(path.name))
    if path.suffix.lower() != ".safetensors":  # a trusted pickle: verify, then torch.load
        verify_digest(path, spec.get("sha256"), sidecar)
        from zoo.backbones.convert import load_state_file

        return load_state_file(path, trust_pickle=True)
    data = path.read_bytes()  # verify and parse the same bytes
    verify_digest(path, spec.get("sha256"), sidecar, actual=hashlib.sha256(data).hexdigest())
    from safetensors.torch import load as load_safetensors

    return load_safetensors(data)
