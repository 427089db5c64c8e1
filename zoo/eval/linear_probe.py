"""Linear probe on frozen features (CLIP protocol).

Protocol (CLIP, Radford et al. 2021, Appendix A.3): an L2-regularised logistic regression
(scikit-learn, L-BFGS, at most 1,000 iterations) is fitted on frozen image features. The
regularisation strength C = 1/λ is chosen on a held-out validation split of the *train*
features (here: stratified, ``val_fraction`` of them), then the classifier is refitted on
all train features with the chosen C and scored once on the test features.

Choices (documented discrepancies with the paper):

- Grid: CLIP sweeps λ over [1e-6, 1e6] with 96 log-spaced steps; the default here is the
  coarser ``C ∈ {1e-4, 1e-3, …, 1e4}`` (9 values). Pass ``Cs`` for a finer sweep.
- Ties in validation accuracy go to the smallest C (the most regularised model).
- The sweep runs from small to large C with warm starts (each fit starts from the previous
  solution): the same optima, found several times faster. Fits that stop at ``max_iter``
  are counted and reported in one warning instead of one warning per fit.
- No feature standardisation by default, as in CLIP's published probe code (raw
  ``encode_image`` features); ``standardize=True`` z-scores with train-split statistics.
- SLIP itself reports a MoCo-v3 style SGD probe (``main_linear.py``); this sklearn
  probe is the cheaper CLIP variant (see papers/slip.md, open question 2).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

DEFAULT_CS: tuple[float, ...] = tuple(10.0**e for e in range(-4, 5))

ArrayLike = Tensor | np.ndarray


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _classifier(C: float, max_iter: int, seed: int, standardize: bool) -> ClassifierMixin:
    # l1_ratio=0 is the pure L2 penalty (``penalty="l2"`` is deprecated in scikit-learn 1.8+).
    clf = LogisticRegression(
        C=C, l1_ratio=0.0, solver="lbfgs", max_iter=max_iter, random_state=seed
    )
    return make_pipeline(StandardScaler(), clf) if standardize else clf


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/validation split; plain random split if a class is too small."""
    try:
        return train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    except ValueError:
        warnings.warn(
            "linear_probe: a class has too few samples for a stratified split; "
            "using a random validation split",
            stacklevel=3,
        )
        return train_test_split(x, y, test_size=val_fraction, random_state=seed)


def linear_probe(*args, **kwargs) -> dict[str, float]:
    """Fit the CLIP linear probe and return ``{"top1", "C", "val_top1"}`` (accuracies in %).

    See :func:`_linear_probe` for the arguments. BLAS runs single-threaded here: for these
    small problems multi-threaded OpenBLAS spends its time synchronising (measured 35× slower
    on 2 cores: 11 s vs 0.3 s for 1,000 L-BFGS iterations on 1,257 × 64 features).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _linear_probe(*args, **kwargs)


def _linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    standardize: bool = False,
    val_x: ArrayLike | None = None,
    val_y: ArrayLike | None = None,
) -> dict[str, float]:
    """``C`` is the value picked from ``Cs`` on the validation split (``val_top1`` its
    validation accuracy; NaN when ``Cs`` has a single value and no sweep is run); ``top1``
    is the test accuracy of the model refitted on all train features with that C.

    ``val_x`` / ``val_y``: a separate validation split (the few-shot protocol's, CoOp's
    ``lpclip``): each C is fitted on all train features and scored there, instead of on a
    ``val_fraction`` held out of the train features (1-shot train sets have nothing to
    spare).
    """
    xtr, ytr = _numpy(train_x).astype(np.float32), _numpy(train_y)
    xte, yte = _numpy(test_x).astype(np.float32), _numpy(test_y)
    grid = sorted(float(c) for c in Cs)
    if not grid:
        raise ValueError("linear_probe: empty grid of C values")
    best_c, best_val = grid[0], float("nan")
    if len(grid) > 1:
        if val_x is not None and val_y is not None:
            xa, ya = xtr, ytr
            xv, yv = _numpy(val_x).astype(np.float32), _numpy(val_y)
        else:
            xa, xv, ya, yv = _split(xtr, ytr, val_fraction, seed)
        clf = _classifier(grid[0], max_iter, seed, standardize)
        scores = []
        with _count_unconverged() as unconverged:
            for c in grid:
                clf.set_params(**{_c_param(clf): c, _warm_param(clf): True})
                scores.append(clf.fit(xa, ya).score(xv, yv))
        best = int(np.argmax(scores))  # first maximum = smallest C among ties
        best_c, best_val = grid[best], 100.0 * float(scores[best])
    else:
        unconverged = [0]
    with _count_unconverged() as final_unconverged:
        clf = _classifier(best_c, max_iter, seed, standardize).fit(xtr, ytr)
    if unconverged[0] or final_unconverged[0]:
        warnings.warn(
            f"linear_probe: {unconverged[0] + final_unconverged[0]} of {len(grid) + 1} fits "
            f"stopped at max_iter={max_iter} before converging",
            stacklevel=2,
        )
    return {"top1": 100.0 * float(clf.score(xte, yte)), "C": best_c, "val_top1": best_val}


def _c_param(clf: ClassifierMixin) -> str:
    return "logisticregression__C" if hasattr(clf, "steps") else "C"


def _warm_param(clf: ClassifierMixin) -> str:
    return "logisticregression__warm_start" if hasattr(clf, "steps") else "warm_start"


@contextmanager
def _count_unconverged() -> Iterator[list[int]]:
    """Silence scikit-learn's per-fit ConvergenceWarning and count them instead."""
    count = [0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield count
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            count[0] += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
