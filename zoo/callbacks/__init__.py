"""Every Lightning callback of the zoo (the evaluation callbacks are in :mod:`zoo.eval`).

- :class:`CompileModules` and the other performance switches (:mod:`.performance`);
- :class:`ExactResume`: per-step reseeding for exact mid-epoch resume (:mod:`.resume`);
- :class:`NonFiniteGuard`: stop on a NaN / Inf loss, never save NaN weights (:mod:`.nonfinite`).
"""

from zoo.callbacks.nonfinite import (
    NonFiniteGuard,
    NonFiniteLossError,
    NonFiniteWeightsError,
    non_finite_names,
)
from zoo.callbacks.performance import CompileModules
from zoo.callbacks.resume import ExactResume

__all__ = [
    "CompileModules",
    "ExactResume",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "non_finite_names",
]
