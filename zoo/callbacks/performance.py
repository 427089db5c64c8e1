"""Performance switches as Lightning callbacks, set from a recipe's ``trainer.callbacks``."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

__all__ = ["CompileModules"]


class CompileModules(L.Callback):
    """``torch.compile`` submodules of the paper module before training (the compile switch).

    ``modules`` are attribute paths of the LightningModule (default: the dual encoder);
    each is compiled in place with its ``compile`` method (``nn.Module.compile``; the dual
    encoder also compiles ``image_trunk`` / ``encode_text``, which papers call directly), so
    state-dict keys and checkpoints are unchanged. ``backend="eager"`` / ``"aot_eager"``
    trace without generating kernels (debugging graph breaks). Compilation costs tens of seconds up front and pays off on long runs
    (benchmarks: ``python -m benchmarks.run --compile``). In a recipe::

        trainer:
          callbacks:
            - class_path: zoo.callbacks.CompileModules
              init_args: {modules: [encoder], mode: max-autotune-no-cudagraphs}
    """

    def __init__(
        self,
        modules: list[str] | None = None,
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
        backend: str = "inductor",
    ):
        self.modules = modules or ["encoder"]
        self.kwargs: dict[str, Any] = {
            "mode": mode,
            "dynamic": dynamic,
            "fullgraph": fullgraph,
            "backend": backend,
        }
        self.compiled: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for path in self.modules:
            module = pl_module
            for part in path.split("."):
                module = getattr(module, part, None)
                if module is None:
                    raise AttributeError(
                        f"CompileModules: {type(pl_module).__name__} has no {path!r}"
                    )
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"CompileModules: {path!r} is a {type(module).__name__}, not a module"
                )
            if path not in self.compiled:
                module.compile(**self.kwargs)
                self.compiled.append(path)
