"""Contrastive losses against hand computations (SLIP card, faithfulness tests 1 and 2)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.losses import clip_infonce, nt_xent, soft_target_ce


def _np_ce_rows(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> float:
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    n, c = logits.shape
    target = np.full((n, c), smoothing / c)
    target[np.arange(n), labels] += 1 - smoothing
    return float(-(target * logp).sum(1).mean())


def test_clip_loss_2x2_by_hand():
    z_i = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_t = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    logits_i = 10 * np.array([[1, 0.6], [0, 0.8]])
    labels = np.arange(2)
    expected = 0.5 * (_np_ce_rows(logits_i, labels) + _np_ce_rows(logits_i.T, labels))
    got = clip_infonce(z_i, z_t, 10.0, gather_policy="none").item()
    assert got == pytest.approx(expected, abs=1e-6)
    # the closed form for row 0 of logits_I: log(1 + e^{6 - 10})
    assert _np_ce_rows(logits_i[:1], labels[:1]) == pytest.approx(np.log1p(np.exp(-4.0)))


def test_clip_loss_normalises_and_smooths():
    g = torch.Generator().manual_seed(0)
    z_i, z_t = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 3, generator=g, dtype=torch.float64),
    )
    zi, zt = F.normalize(z_i, dim=1).numpy(), F.normalize(z_t, dim=1).numpy()
    logits = 7.0 * zi @ zt.T
    labels = np.arange(5)
    expected = 0.5 * (_np_ce_rows(logits, labels, 0.1) + _np_ce_rows(logits.T, labels, 0.1))
    got = clip_infonce(z_i, z_t, 7.0, label_smoothing=0.1, gather_policy="none").item()
    assert got == pytest.approx(expected, abs=1e-9)


def _naive_nt_xent(q_a: np.ndarray, q_b: np.ndarray, tau: float) -> float:
    """SimCLR by its definition: each of the 2N views is an anchor; its positive is the other
    view of the same image and its negatives are the 2N − 2 views of other images."""
    n = len(q_a)
    views = {("a", i): q_a[i] for i in range(n)} | {("b", i): q_b[i] for i in range(n)}
    per_view = {"a": [], "b": []}
    for (side, i), anchor in views.items():
        pos = views[("b" if side == "a" else "a", i)]
        negs = [v for (s, j), v in views.items() if j != i]
        assert len(negs) == 2 * n - 2
        logits = np.array([anchor @ pos] + [anchor @ v for v in negs]) / tau
        per_view[side].append(-(logits[0] - np.log(np.exp(logits).sum())))
    return 0.5 * (np.mean(per_view["a"]) + np.mean(per_view["b"]))


def test_nt_xent_equals_naive_loop_and_is_symmetric():
    g = torch.Generator().manual_seed(1)
    q_a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    q_b = torch.randn(3, 4, generator=g, dtype=torch.float64)
    na, nb = F.normalize(q_a, dim=1).numpy(), F.normalize(q_b, dim=1).numpy()
    expected = _naive_nt_xent(na, nb, 0.1)
    got = nt_xent(q_a, q_b, temperature=0.1, gather_policy="none").item()
    assert got == pytest.approx(expected, abs=1e-6)
    swapped = nt_xent(q_b, q_a, temperature=0.1, gather_policy="none").item()
    assert swapped == pytest.approx(got, abs=1e-12)


def test_nt_xent_gradient_is_finite_with_large_mask():
    q_a = torch.randn(4, 8, requires_grad=True)
    q_b = torch.randn(4, 8, requires_grad=True)
    nt_xent(q_a, q_b, gather_policy="none").backward()
    assert torch.isfinite(q_a.grad).all() and q_a.grad.abs().sum() > 0


def test_unknown_gather_policy_is_rejected():
    with pytest.raises(ValueError, match="gather policy"):
        clip_infonce(torch.randn(2, 2), torch.randn(2, 2), 1.0, gather_policy="all")


def test_soft_target_ce_matches_a_hand_computation_and_one_hot_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # Row 0: softmax = (1/4, 3/4) -> -(0.5 log 1/4 + 0.5 log 3/4); row 1: softmax = (2/3, 1/3).
    expected = 0.5 * (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) - math.log(2 / 3))
    assert soft_target_ce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    one_hot = torch.eye(2)[[1, 0]]
    assert torch.allclose(
        soft_target_ce(logits, one_hot), F.cross_entropy(logits, torch.tensor([1, 0]))
    )
