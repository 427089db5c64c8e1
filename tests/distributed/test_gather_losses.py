"""Data-parallel correctness: 2 gloo processes with half the batch each equal 1 process on
the full batch, for the loss and the feature gradients (float64, to 1e-6)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.losses import clip_infonce, nt_xent

WORLD = 2
N, D = 8, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(
        N, D, generator=g, dtype=torch.float64
    )


def _loss(kind: str, a: torch.Tensor, b: torch.Tensor, policy: str) -> torch.Tensor:
    if kind == "clip":
        return clip_infonce(a, b, 12.0, label_smoothing=0.1, gather_policy=policy)
    return nt_xent(a, b, temperature=0.1, gather_policy=policy)


def _worker(rank: int, port: int, kind: str, policy: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a, b = _inputs()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        a, b = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        loss = _loss(kind, a, b, policy)
        loss.backward()
        out[rank] = (loss.detach(), a.grad / WORLD, b.grad / WORLD)  # DDP averages over ranks
    finally:
        dist.destroy_process_group()


def _run_two_ranks(kind: str, policy: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), kind, policy, out), nprocs=WORLD, join=True)
    losses = torch.stack([out[r][0] for r in range(WORLD)])
    return (
        losses.mean(),
        torch.cat([out[r][1] for r in range(WORLD)]),
        torch.cat([out[r][2] for r in range(WORLD)]),
    )


@pytest.mark.parametrize("kind", ["clip", "ntxent"])
def test_with_grad_gather_equals_full_batch(kind):
    a, b = _inputs()
    a.requires_grad_(), b.requires_grad_()
    full = _loss(kind, a, b, "none")
    full.backward()
    loss, grad_a, grad_b = _run_two_ranks(kind, "with_grad")
    torch.testing.assert_close(loss, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_a, a.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_b, b.grad, atol=1e-6, rtol=0)


def test_no_grad_gather_equals_full_batch_loss_and_local_gradient():
    """SLIP's CLIP gather: same loss; the gradient flows through this rank's rows and
    columns only (other ranks' features are constants), which is what we check."""
    a, b = _inputs()
    full = _loss("clip", a, b, "none")
    loss, grad_a, grad_b = _run_two_ranks("clip", "no_grad")
    torch.testing.assert_close(loss, full, atol=1e-6, rtol=0)

    expected_a, expected_b = [], []
    for r in range(WORLD):
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        all_a, all_b = a.clone(), b.clone()
        all_a[rows], all_b[rows] = la, lb
        za, zb = torch.nn.functional.normalize(la, dim=1), torch.nn.functional.normalize(lb, dim=1)
        za_all = torch.nn.functional.normalize(all_a, dim=1)
        zb_all = torch.nn.functional.normalize(all_b, dim=1)
        labels = torch.arange(rows.start, rows.stop)
        ce = torch.nn.functional.cross_entropy
        local = 0.5 * (
            ce(12.0 * za @ zb_all.T, labels, label_smoothing=0.1)
            + ce(12.0 * zb @ za_all.T, labels, label_smoothing=0.1)
        )
        local.backward()
        expected_a.append(la.grad / WORLD)
        expected_b.append(lb.grad / WORLD)
    torch.testing.assert_close(grad_a, torch.cat(expected_a), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_b, torch.cat(expected_b), atol=1e-6, rtol=0)
