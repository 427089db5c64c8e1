"""Peak tensor memory of a piece of code, device-independent.

:class:`TensorMemory` is a ``TorchDispatchMode`` that sees every tensor an operator
creates (forward and backward, which runs on the calling thread for CPU tensors), counts the
bytes of each new storage and frees them when the storage dies (``weakref.finalize``), so
``peak`` is the high-water mark of tensor bytes allocated inside the block. Tensors created
before the block (inputs, parameters) are not counted. Allocator caching, fragmentation and
non-tensor buffers (e.g. gloo's) are not included: it measures what the algorithm holds.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory() as mem: ...``; then ``mem.peak`` / ``mem.current`` in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[tuple[str, int], int] = {}

    def _free(self, key: tuple[str, int]) -> None:
        self.current -= self._live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = (str(storage.device), storage.data_ptr())
        if nbytes == 0 or key in self._live:
            return
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t)
        return out
