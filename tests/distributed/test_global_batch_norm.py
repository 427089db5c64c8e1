"""GlobalBatchNorm1d with 2 gloo processes (half batch each) equals BatchNorm1d on the full
batch: outputs, input and parameter gradients, and running statistics."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from zoo.heads.norm import GlobalBatchNorm1d

from .test_gather_losses import _free_port

N, C, WORLD = 8, 3, 2


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=g, dtype=torch.float64) * 3 + 1, torch.randn(
        N, C, generator=g, dtype=torch.float64
    )


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, w = _data()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        bn = GlobalBatchNorm1d(C).double()
        xr = x[rows].clone().requires_grad_()
        y = bn(xr)
        (y * w[rows]).sum().backward()
        out[rank] = (
            y.detach(),
            xr.grad,
            bn.weight.grad,
            bn.bias.grad,
            bn.running_mean,
            bn.running_var,
        )
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_equals_full_batch_norm():
    x, w = _data()
    ref = nn.BatchNorm1d(C).double()
    xf = x.clone().requires_grad_()
    y = ref(xf)
    (y * w).sum().backward()

    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    torch.testing.assert_close(
        torch.cat([out[r][0] for r in range(WORLD)]), y.detach(), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        torch.cat([out[r][1] for r in range(WORLD)]), xf.grad, atol=1e-10, rtol=0
    )
    # parameter gradients: each rank holds its part; DDP sums/averages them across ranks
    torch.testing.assert_close(
        sum(out[r][2] for r in range(WORLD)), ref.weight.grad, atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        sum(out[r][3] for r in range(WORLD)), ref.bias.grad, atol=1e-10, rtol=0
    )
    for r in range(WORLD):
        torch.testing.assert_close(out[r][4], ref.running_mean, atol=1e-10, rtol=0)
        torch.testing.assert_close(out[r][5], ref.running_var, atol=1e-10, rtol=0)


def test_single_process_is_plain_batch_norm():
    x, _ = _data()
    a, b = GlobalBatchNorm1d(C).double(), nn.BatchNorm1d(C).double()
    torch.testing.assert_close(a(x), b(x))
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))
